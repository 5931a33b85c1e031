//! The SPIFFE CA (`types.SPIFFECA`): an X.509 authority whose trust domain is the cluster's
//! name, which signs X.509 SVIDs, and an RSA-2048 JWT key, which signs JWT SVIDs (purpose
//! `SPIFFECAJWT` is RSA-2048 in every suite, `lib/cryptosuites/suites.go` at 02cdf32d).
//! The JWT key is made the first time it is needed: most dev clusters never issue a JWT.

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::OsRng;
use rcgen::{
    DistinguishedName, ExtendedKeyUsagePurpose, KeyUsagePurpose, PublicKeyData, SanType,
    SignatureAlgorithm,
};
use rsa::pkcs1::EncodeRsaPublicKey as _;
use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};

use super::authority::{ClusterCa, JwtKey};
use super::server::leaf_params;
use super::template::unix_seconds;

/// What an X.509 SVID is issued for.
pub struct X509SvidRequest<'a> {
    /// The SPIFFE ID (`spiffe://<trust domain><path>`).
    pub spiffe_id: &'a str,
    /// The subject's public key, PKIX DER.
    pub public_key_der: &'a [u8],
    /// Valid from (a minute before issuance).
    pub not_before: SystemTime,
    /// Valid until.
    pub not_after: SystemTime,
}

/// A subject public key from its PKIX DER, for rcgen.
struct Spki {
    key: Vec<u8>,
    algorithm: &'static SignatureAlgorithm,
}

impl PublicKeyData for Spki {
    fn der_bytes(&self) -> &[u8] {
        &self.key
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

impl Spki {
    fn parse(der: &[u8]) -> anyhow::Result<Self> {
        use spki::ObjectIdentifier as Oid;
        const EC: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
        const RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
        const ED25519: Oid = Oid::new_unwrap("1.3.101.112");
        let info = spki::SubjectPublicKeyInfoRef::try_from(der)
            .map_err(|e| anyhow!("x509: failed to parse public key: {e}"))?;
        let algorithm = match info.algorithm.oid {
            EC => &rcgen::PKCS_ECDSA_P256_SHA256,
            RSA => &rcgen::PKCS_RSA_SHA256,
            ED25519 => &rcgen::PKCS_ED25519,
            other => return Err(anyhow!("x509: unsupported public key algorithm {other}")),
        };
        let key = info
            .subject_public_key
            .as_bytes()
            .context("x509: the public key is not a whole number of bytes")?
            .to_vec();
        Ok(Self { key, algorithm })
    }
}

impl ClusterCa {
    /// PEM of the SPIFFE CA's certificate: the trust domain's X.509 bundle.
    pub fn spiffe_ca_pem(&self) -> String {
        self.spiffe.tls.pem()
    }

    /// The SPIFFE trust domain: the cluster's name.
    pub fn trust_domain(&self) -> &str {
        &self.cluster_name
    }

    pub(super) fn jwt_key(&self) -> anyhow::Result<&JwtKey> {
        if let Some(key) = self.spiffe_jwt.get() {
            return Ok(key);
        }
        let private = rsa::RsaPrivateKey::new(&mut OsRng, 2048)?;
        let public = private.to_public_key();
        let pkcs8 = private.to_pkcs8_der()?;
        let pair = ring::signature::RsaKeyPair::from_pkcs8(pkcs8.as_bytes())
            .map_err(|e| anyhow!("the SPIFFE JWT key: {e}"))?;
        let pkcs1 = public.to_pkcs1_der()?;
        let kid = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            pkcs1.as_bytes(),
        ));
        let key = JwtKey {
            pair,
            public_pem: public.to_public_key_pem(LineEnding::LF)?,
            kid,
        };
        // Another caller may have won the race; either key is as good, and the one kept is
        // the one every caller sees from then on.
        let _ = self.spiffe_jwt.set(key);
        Ok(self.spiffe_jwt.get().expect("set just above"))
    }

    /// The SPIFFE CA's JWT public key, PKIX PEM (the JWT bundle's key).
    pub fn spiffe_jwt_public_pem(&self) -> anyhow::Result<String> {
        Ok(self.jwt_key()?.public_pem.clone())
    }

    /// The `kid` of the SPIFFE CA's JWT key.
    pub fn spiffe_jwt_kid(&self) -> anyhow::Result<String> {
        Ok(self.jwt_key()?.kid.clone())
    }

    /// An X.509 SVID (`x509Template` in `issuer_service.go`): empty subject, the SPIFFE ID as
    /// the one URI SAN, digitalSignature, keyEncipherment and keyAgreement, serverAuth and
    /// clientAuth, not a CA. Returns its DER and its serial as Teleport writes it (hex bytes
    /// joined by colons).
    pub fn issue_x509_svid(&self, req: &X509SvidRequest<'_>) -> anyhow::Result<(Vec<u8>, String)> {
        let key = Spki::parse(req.public_key_der)?;
        let mut params = leaf_params(
            DistinguishedName::new(),
            unix_seconds(req.not_before)?,
            unix_seconds(req.not_after)?,
        )?;
        params.subject_alt_names = vec![SanType::URI(req.spiffe_id.try_into()?)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let serial = params
            .serial_number
            .as_ref()
            .map(|s| {
                let bytes = s.as_ref();
                let start = bytes
                    .iter()
                    .position(|b| *b != 0)
                    .unwrap_or(bytes.len().saturating_sub(1));
                bytes[start..]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            })
            .unwrap_or_default();
        let cert = params
            .signed_by(&key, &*self.spiffe.tls)
            .context("signing the X.509 SVID")?;
        Ok((cert.der().to_vec(), serial))
    }

    /// A JWT SVID (`SignJWTSVID`, `lib/jwt`): RS256 with the SPIFFE CA's JWT key, header `kid`;
    /// claims `aud` (a bare string when there is one), `exp`, `iat`, `iss`, `jti`, `sub`.
    pub fn sign_jwt_svid(
        &self,
        spiffe_id: &str,
        audiences: &[String],
        jti: &str,
        issuer: &str,
        issued: SystemTime,
        expires: SystemTime,
    ) -> anyhow::Result<String> {
        let key = self.jwt_key()?;
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs()
        };
        let header = serde_json::json!({ "alg": "RS256", "kid": key.kid, "typ": "JWT" });
        let aud = match audiences {
            [one] => serde_json::json!(one),
            many => serde_json::json!(many),
        };
        let claims = serde_json::json!({
            "aud": aud,
            "exp": secs(expires),
            "iat": secs(issued),
            "iss": issuer,
            "jti": jti,
            "sub": spiffe_id,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; key.pair.public().modulus_len()];
        key.pair
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| anyhow!("signing the JWT SVID failed"))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}
