//! The few TPM 2.0 structures the evidence holds, read without a TPM (TPM 2.0 Part 2):
//! `TPMT_PUBLIC` (in a `TPM2B_PUBLIC`) for ECC and RSA keys, an object's name, and
//! `TPMS_ATTEST` of `TPM2_Certify`. Every read is bounds-checked: the evidence comes from the
//! host being judged.

use sha2::{Digest as _, Sha256};

/// `TPM_ALG_RSA`, `TPM_ALG_ECC`, `TPM_ALG_SHA256`, `TPM_ALG_NULL`, `TPM_ALG_ECDSA`.
pub const ALG_RSA: u16 = 0x0001;
pub const ALG_ECC: u16 = 0x0023;
pub const ALG_SHA256: u16 = 0x000b;
pub const ALG_NULL: u16 = 0x0010;
pub const ALG_ECDSA: u16 = 0x0018;
pub const ALG_ECDAA: u16 = 0x001a;
/// `TPM_ECC_NIST_P256`.
pub const CURVE_P256: u16 = 0x0003;
/// `TPM_GENERATED_VALUE`, and `TPM_ST_ATTEST_CERTIFY`.
pub const GENERATED: u32 = 0xff54_4347;
pub const ST_ATTEST_CERTIFY: u16 = 0x8017;

/// `TPMA_OBJECT` bits, with the names tpm2-tools prints.
pub const ATTRIBUTES: [(u32, &str); 11] = [
    (1 << 1, "fixedtpm"),
    (1 << 2, "stclear"),
    (1 << 4, "fixedparent"),
    (1 << 5, "sensitivedataorigin"),
    (1 << 6, "userwithauth"),
    (1 << 7, "adminwithpolicy"),
    (1 << 10, "noda"),
    (1 << 11, "encryptedduplication"),
    (1 << 16, "restricted"),
    (1 << 17, "decrypt"),
    (1 << 18, "sign"),
];
pub const FIXED_TPM: u32 = 1 << 1;
pub const FIXED_PARENT: u32 = 1 << 4;
pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
pub const USER_WITH_AUTH: u32 = 1 << 6;
pub const RESTRICTED: u32 = 1 << 16;
pub const DECRYPT: u32 = 1 << 17;
pub const SIGN: u32 = 1 << 18;

/// The attribute names set in `bits`, joined as tpm2-tools prints them: `fixedtpm|...`.
pub fn attribute_names(bits: u32) -> String {
    ATTRIBUTES
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join("|")
}

/// A reader over big-endian TPM bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, at: 0, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("the {} is cut short", self.what))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn tpm2b(&mut self) -> Result<&'a [u8], String> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn end(&self) -> Result<(), String> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(format!(
                "the {} has {} bytes after its end",
                self.what,
                self.bytes.len() - self.at
            ))
        }
    }
}

/// A key's public area.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct PublicArea {
    /// The `TPMT_PUBLIC` bytes (what the name hashes).
    pub tpmt: Vec<u8>,
    pub name_alg: u16,
    pub attributes: u32,
    pub key: KeyParams,
}

/// The algorithm-specific part of a public area.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum KeyParams {
    Ecc {
        /// The signing scheme (`TPM_ALG_NULL` when none) and its hash.
        scheme: (u16, u16),
        curve: u16,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Rsa {
        /// The symmetric algorithm of a storage key (`TPM_ALG_NULL` when none).
        symmetric: u16,
        bits: u16,
        modulus: Vec<u8>,
    },
}

impl PublicArea {
    /// Reads a `TPM2B_PUBLIC`.
    pub fn from_tpm2b(bytes: &[u8], what: &'static str) -> Result<Self, String> {
        let mut outer = Reader::new(bytes, what);
        let tpmt = outer.tpm2b()?;
        outer.end()?;
        let mut r = Reader::new(tpmt, what);
        let alg = r.u16()?;
        let name_alg = r.u16()?;
        let attributes = r.u32()?;
        let _auth_policy = r.tpm2b()?;
        let symmetric = r.u16()?;
        if symmetric != ALG_NULL {
            r.take(4)?; // keyBits, mode
        }
        let key = match alg {
            ALG_ECC => {
                let scheme = r.u16()?;
                let hash = if scheme == ALG_NULL {
                    ALG_NULL
                } else {
                    r.u16()?
                };
                if scheme == ALG_ECDAA {
                    r.u16()?; // count
                }
                let curve = r.u16()?;
                if r.u16()? != ALG_NULL {
                    r.u16()?; // the KDF's hash
                }
                let x = r.tpm2b()?.to_vec();
                let y = r.tpm2b()?.to_vec();
                KeyParams::Ecc {
                    scheme: (scheme, hash),
                    curve,
                    x,
                    y,
                }
            }
            ALG_RSA => {
                if r.u16()? != ALG_NULL {
                    r.u16()?; // the scheme's hash
                }
                let bits = r.u16()?;
                let _exponent = r.u32()?;
                let modulus = r.tpm2b()?.to_vec();
                KeyParams::Rsa {
                    symmetric,
                    bits,
                    modulus,
                }
            }
            other => {
                return Err(format!(
                    "the {what} is of algorithm 0x{other:04x}, not ECC or RSA"
                ));
            }
        };
        r.end()?;
        Ok(Self {
            tpmt: tpmt.to_vec(),
            name_alg,
            attributes,
            key,
        })
    }

    /// The object's name: its name algorithm, then the digest of `TPMT_PUBLIC` (SHA-256 only).
    pub fn name(&self) -> Result<Vec<u8>, String> {
        if self.name_alg != ALG_SHA256 {
            return Err(format!(
                "name algorithm 0x{:04x} is not SHA-256, the one keybound reads",
                self.name_alg
            ));
        }
        let mut name = ALG_SHA256.to_be_bytes().to_vec();
        name.extend(Sha256::digest(&self.tpmt));
        Ok(name)
    }

    /// The P-256 point as SEC1 (`04‖x‖y`), for an ECC P-256 key.
    pub fn p256_point(&self) -> Option<Vec<u8>> {
        match &self.key {
            KeyParams::Ecc { curve, x, y, .. }
                if *curve == CURVE_P256 && x.len() <= 32 && y.len() <= 32 =>
            {
                let mut point = vec![0x04];
                for v in [x, y] {
                    point.extend(std::iter::repeat_n(0, 32 - v.len()));
                    point.extend_from_slice(v);
                }
                Some(point)
            }
            _ => None,
        }
    }

    /// Whether every bit of `bits` is set.
    pub fn has(&self, bits: u32) -> bool {
        self.attributes & bits == bits
    }
}

/// A `TPMS_ATTEST` of `TPM2_Certify`.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct CertifyInfo {
    pub magic: u32,
    pub kind: u16,
    pub qualified_signer: Vec<u8>,
    pub extra_data: Vec<u8>,
    /// The certified object's name, and its qualified name.
    pub name: Vec<u8>,
    pub qualified_name: Vec<u8>,
}

impl CertifyInfo {
    /// Reads `TPMS_ATTEST`; anything but a certify attestation is refused.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader::new(bytes, "attestation");
        let magic = r.u32()?;
        let kind = r.u16()?;
        let qualified_signer = r.tpm2b()?.to_vec();
        let extra_data = r.tpm2b()?.to_vec();
        r.take(17)?; // clockInfo: clock, resetCount, restartCount, safe
        r.take(8)?; // firmwareVersion
        if kind != ST_ATTEST_CERTIFY {
            return Err(format!(
                "the attestation is of type 0x{kind:04x}, not TPM_ST_ATTEST_CERTIFY (0x8017)"
            ));
        }
        let name = r.tpm2b()?.to_vec();
        let qualified_name = r.tpm2b()?.to_vec();
        r.end()?;
        Ok(Self {
            magic,
            kind,
            qualified_signer,
            extra_data,
            name,
            qualified_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_or_padded_structure_is_an_error_not_a_panic() {
        let attest = {
            let mut a = GENERATED.to_be_bytes().to_vec();
            a.extend(ST_ATTEST_CERTIFY.to_be_bytes());
            a.extend([0, 2, 0xaa, 0xbb]); // qualifiedSigner
            a.extend([0, 1, 0x42]); // extraData
            a.extend([0; 25]);
            a.extend([0, 1, 0x01, 0, 1, 0x02]);
            a
        };
        let info = CertifyInfo::parse(&attest).unwrap();
        assert_eq!(info.extra_data, [0x42]);
        assert_eq!(
            (info.name.as_slice(), info.qualified_name.as_slice()),
            (&[1][..], &[2][..])
        );
        for cut in 0..attest.len() {
            assert!(CertifyInfo::parse(&attest[..cut]).is_err(), "{cut}");
        }
        let mut longer = attest;
        longer.push(0);
        assert!(
            CertifyInfo::parse(&longer)
                .unwrap_err()
                .contains("after its end")
        );
        assert!(PublicArea::from_tpm2b(&[0xff, 0xff, 0], "key").is_err());
    }

    #[test]
    fn attribute_names_follow_tpm2_tools() {
        let ak =
            FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | RESTRICTED | SIGN;
        assert_eq!(
            attribute_names(ak),
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign"
        );
    }
}
