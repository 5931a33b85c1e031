//! The subject keypair: the key the bot's certificates are issued for. A fresh one per join.
//!
//! Its type follows the suite's `HostIdentity` purpose (`lib/cryptosuites/suites.go`): RSA-2048
//! for `legacy` (and unspecified), ECDSA P-256 for every other suite.

use keybound_signer::PublicKey;
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use rand_core::OsRng;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use rsa::pkcs1::{EncodeRsaPrivateKey as _, EncodeRsaPublicKey as _};
use rsa::traits::PublicKeyParts as _;
use ssh_key::Mpint;
use ssh_key::public::{KeyData, RsaPublicKey};
use zeroize::Zeroizing;

use keybound_teleport::suite::Suite;

const RSA: &str = "rsa-2048";
const P256: &str = "ecdsa-p256";

/// A freshly generated subject keypair, in every encoding the join and the outputs need.
pub struct SubjectKey {
    /// Private key as Teleport writes it (`keys.MarshalPrivateKey`): PKCS#8 `PRIVATE KEY` for
    /// ECDSA, PKCS#1 `RSA PRIVATE KEY` for RSA.
    pub private_pem: Zeroizing<String>,
    /// PKIX SubjectPublicKeyInfo DER (`BotParams.public_keys.public_tls_key`).
    pub spki_der: Vec<u8>,
    /// SSH wire blob (`BotParams.public_keys.public_ssh_key`).
    pub ssh_wire: Vec<u8>,
    /// `authorized_keys` line without a newline.
    pub ssh_authorized: String,
    /// PEM public key as Teleport's `keys.MarshalPublicKey` writes it: `RSA PUBLIC KEY` (PKCS#1)
    /// for RSA, `PUBLIC KEY` (PKIX) otherwise. The legacy RPC's `PublicTLSKey`.
    pub public_pem: String,
    /// `rsa-2048` or `ecdsa-p256`, for logs.
    pub kind: &'static str,
}

impl SubjectKey {
    /// Generates the subject key `suite` calls for. RSA generation takes tens of milliseconds;
    /// call this off the async executor.
    pub fn generate(suite: Suite) -> anyhow::Result<Self> {
        match Self::kind_for(suite) {
            RSA => Self::rsa(),
            _ => Self::p256(),
        }
    }

    /// The [`kind`](Self::kind) of key `suite` calls for.
    pub fn kind_for(suite: Suite) -> &'static str {
        match suite {
            Suite::Unspecified | Suite::Legacy => RSA,
            Suite::BalancedV1 | Suite::FipsV1 | Suite::HsmV1 => P256,
        }
    }

    /// A suite that calls for the same key type as a subject key, given as its
    /// `authorized_keys` line: RSA or else P-256, the only types keybound makes.
    pub fn suite_like(ssh_public_key: &str) -> Suite {
        if ssh_public_key.starts_with("ssh-rsa ") {
            Suite::Legacy
        } else {
            Suite::BalancedV1
        }
    }

    /// A P-256 key from ring (already linked for TLS), whose assembly scalar multiplication is
    /// many times faster than RustCrypto's portable one: with RustCrypto, deriving P-256 public
    /// keys took a third of the instructions of a whole `start --oneshot` (docs/PERFORMANCE.md).
    fn p256() -> anyhow::Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
        let public = PublicKey::from_p256(&p256_public_of_pkcs8(pkcs8.as_ref())?);
        Ok(Self {
            // PKCS#8 v1 holding an ECPrivateKey with the public key and without the curve
            // parameters: what Go's x509.MarshalPKCS8PrivateKey writes too.
            private_pem: Zeroizing::new(pem_rfc7468::encode_string(
                "PRIVATE KEY",
                LineEnding::LF,
                pkcs8.as_ref(),
            )?),
            spki_der: public.spki_der().to_vec(),
            ssh_wire: public.ssh_wire(),
            ssh_authorized: public.to_openssh(),
            public_pem: public.to_pem(),
            kind: P256,
        })
    }

    fn rsa() -> anyhow::Result<Self> {
        let private = rsa::RsaPrivateKey::new(&mut OsRng, 2048)?;
        let public = private.to_public_key();
        let data = KeyData::Rsa(RsaPublicKey {
            e: Mpint::from_positive_bytes(&public.e().to_bytes_be())?,
            n: Mpint::from_positive_bytes(&public.n().to_bytes_be())?,
        });
        let ssh = ssh_key::PublicKey::from(data);
        Ok(Self {
            private_pem: private.to_pkcs1_pem(LineEnding::LF)?,
            spki_der: public.to_public_key_der()?.into_vec(),
            ssh_wire: ssh.to_bytes()?,
            ssh_authorized: ssh.to_openssh()?.trim().to_owned(),
            public_pem: public.to_pkcs1_pem(LineEnding::LF)?,
            kind: RSA,
        })
    }
}

/// The public key of a PKCS#8 P-256 private key that includes it, checked against the private
/// key by ring; an error when `der` is not such a key.
pub(crate) fn p256_public_of_pkcs8(der: &[u8]) -> anyhow::Result<p256::PublicKey> {
    let pair = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        der,
        &ring::rand::SystemRandom::new(),
    )
    .map_err(|e| anyhow::anyhow!("not a PKCS#8 P-256 key with its public key: {e}"))?;
    Ok(p256::PublicKey::from_sec1_bytes(
        pair.public_key().as_ref(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types_follow_the_suite() {
        let p = SubjectKey::generate(Suite::BalancedV1).unwrap();
        assert_eq!(p.kind, "ecdsa-p256");
        assert!(p.ssh_authorized.starts_with("ecdsa-sha2-nistp256 "));
        assert!(p.public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(p.private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(
            PublicKey::from_spki_der(&p.spki_der).unwrap().ssh_wire(),
            p.ssh_wire
        );
        // ring's PKCS#8 reads back in RustCrypto as the same key.
        use p256::pkcs8::DecodePrivateKey as _;
        let secret = p256::SecretKey::from_pkcs8_pem(&p.private_pem).unwrap();
        assert_eq!(
            PublicKey::from_p256(&secret.public_key()).spki_der(),
            &p.spki_der[..]
        );

        let r = SubjectKey::generate(Suite::Legacy).unwrap();
        assert_eq!(r.kind, "rsa-2048");
        assert!(r.ssh_authorized.starts_with("ssh-rsa AAAAB3NzaC1yc2E"));
        assert!(r.public_pem.starts_with("-----BEGIN RSA PUBLIC KEY-----"));
        assert!(r.private_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let parsed = ssh_key::PublicKey::from_bytes(&r.ssh_wire).unwrap();
        assert_eq!(parsed.to_openssh().unwrap().trim(), r.ssh_authorized);
    }
}
