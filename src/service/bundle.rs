//! The local trust domain's bundle as the Workload API hands it out: the SPIFFE CA's X.509
//! certificates (DER, concatenated) and its JWT keys as a JWK set; and the check of a JWT SVID
//! against those keys (`ValidateJWTSVID`).

use std::time::SystemTime;

use anyhow::{Context as _, anyhow};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keybound_proto::types::CertAuthorityV2;
use rsa::pkcs1::EncodeRsaPublicKey as _;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::traits::PublicKeyParts as _;
use sha2::Digest as _;

/// The SPIFFE CA of one trust domain, as served.
#[derive(Debug, Eq, PartialEq)]
pub struct Bundle {
    /// `spiffe://<trust domain>`: the key of the bundle maps.
    pub trust_domain_id: String,
    /// The CA certificates, DER, concatenated (`X509SVID.bundle`).
    pub x509_der: Vec<u8>,
    /// The JWK set (`JWTBundlesResponse.bundles`), JSON.
    pub jwks: Vec<u8>,
    /// The JWT keys: `kid` and the PKCS#1 DER public key.
    jwt_keys: Vec<(String, Vec<u8>)>,
}

impl Bundle {
    /// From the SPIFFE CA the cluster returned (`GetCertAuthority(spiffe)`) for `trust_domain`.
    pub fn from_ca(ca: &CertAuthorityV2, trust_domain: &str) -> anyhow::Result<Self> {
        let sets: Vec<_> = ca
            .spec
            .iter()
            .flat_map(|s| s.active_keys.iter().chain(&s.additional_trusted_keys))
            .collect();
        let mut x509_der = Vec::new();
        for pair in sets.iter().flat_map(|k| &k.tls) {
            for pem in keybound_teleport::pem::split_pem_certs(&pair.cert)
                .map_err(|e| anyhow!("the SPIFFE CA's certificate is not PEM: {e:#}"))?
            {
                let (_, der) = pem_rfc7468::decode_vec(pem.as_bytes())
                    .map_err(|e| anyhow!("the SPIFFE CA's certificate is not PEM: {e}"))?;
                x509_der.extend_from_slice(&der);
            }
        }
        if x509_der.is_empty() {
            return Err(anyhow!(
                "the cluster's SPIFFE CA holds no X.509 certificate"
            ));
        }
        let mut jwt_keys = Vec::new();
        let mut jwks = Vec::new();
        for pair in sets.iter().flat_map(|k| &k.jwt) {
            let pem = std::str::from_utf8(&pair.public_key)
                .context("the SPIFFE CA's JWT key is not PEM")?;
            let key = rsa::RsaPublicKey::from_public_key_pem(pem)
                .context("the SPIFFE CA's JWT key is not an RSA public key")?;
            let pkcs1 = key.to_pkcs1_der()?.into_vec();
            // Teleport's `jwt.KeyID` for an RSA key (lib/jwt): SHA-256 of the PKCS#1 DER.
            let kid = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&pkcs1));
            jwks.push(serde_json::json!({
                "kty": "RSA",
                "use": "jwt-svid",
                "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
            }));
            jwt_keys.push((kid, pkcs1));
        }
        Ok(Self {
            trust_domain_id: format!("spiffe://{trust_domain}"),
            x509_der,
            jwks: serde_json::to_vec(&serde_json::json!({ "keys": jwks }))?,
            jwt_keys,
        })
    }

    /// Checks a JWT SVID as `ValidateJWTSVID` must: RS256 by one of the trust domain's keys
    /// (by `kid`), `audience` among its audiences, not expired, its subject a SPIFFE ID of the
    /// trust domain. Returns that SPIFFE ID and the claims.
    pub fn validate_jwt(
        &self,
        token: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<(String, serde_json::Map<String, serde_json::Value>), String> {
        let parts: Vec<&str> = token.split('.').collect();
        let [header, payload, signature] = parts[..] else {
            return Err("the JWT is not in compact form (three dot-separated parts)".to_owned());
        };
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| format!("the JWT's {what} is not base64url"))
        };
        let header: serde_json::Value = serde_json::from_slice(&decode(header, "header")?)
            .map_err(|_| "the JWT's header is not JSON".to_owned())?;
        if header["alg"] != "RS256" {
            return Err("the JWT is not signed with RS256".to_owned());
        }
        let kid = header["kid"].as_str().unwrap_or_default();
        let (_, key) = self
            .jwt_keys
            .iter()
            .find(|(k, _)| k == kid)
            .ok_or_else(|| "the JWT's key (kid) is not in the trust domain's bundle".to_owned())?;
        let signed = &token[..token.len() - signature.len() - 1];
        ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, key)
            .verify(signed.as_bytes(), &decode(signature, "signature")?)
            .map_err(|_| "the JWT's signature does not verify".to_owned())?;
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&decode(payload, "payload")?)
                .map_err(|_| "the JWT's claims are not a JSON object".to_owned())?;
        let audiences: Vec<&str> = match &claims.get("aud") {
            Some(serde_json::Value::String(a)) => vec![a.as_str()],
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            _ => Vec::new(),
        };
        if !audiences.contains(&audience) {
            return Err("the JWT is not for this audience".to_owned());
        }
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match claims.get("exp").and_then(serde_json::Value::as_u64) {
            Some(exp) if exp > now => {}
            Some(_) => return Err("the JWT has expired".to_owned()),
            None => return Err("the JWT has no expiry (exp)".to_owned()),
        }
        let subject = claims
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        if !subject.starts_with(&format!("{}/", self.trust_domain_id)) {
            return Err("the JWT's subject is not a SPIFFE ID of the trust domain".to_owned());
        }
        Ok((subject.to_owned(), claims))
    }
}

/// JSON claims as a protobuf `Struct` (`ValidateJWTSVIDResponse.claims`).
pub fn to_struct(claims: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    fn value(v: serde_json::Value) -> prost_types::Value {
        use prost_types::value::Kind;
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            serde_json::Value::String(s) => Kind::StringValue(s),
            serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                values: a.into_iter().map(value).collect(),
            }),
            serde_json::Value::Object(o) => Kind::StructValue(to_struct(o)),
        };
        prost_types::Value { kind: Some(kind) }
    }
    prost_types::Struct {
        fields: claims.into_iter().map(|(k, v)| (k, value(v))).collect(),
    }
}
