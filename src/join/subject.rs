//! The subject keypair: the key the bot's certificates are issued for. A fresh one per join.
//!
//! Its type follows the suite's `HostIdentity` purpose (`lib/cryptosuites/suites.go`): RSA-2048
//! for `legacy` (and unspecified), ECDSA P-256 for every other suite.

use keybound_signer::PublicKey;
use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use rand_core::OsRng;
use rsa::pkcs1::{EncodeRsaPrivateKey as _, EncodeRsaPublicKey as _};
use rsa::traits::PublicKeyParts as _;
use ssh_key::Mpint;
use ssh_key::public::{KeyData, RsaPublicKey};
use zeroize::Zeroizing;

use crate::suite::Suite;

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
        match suite {
            Suite::Unspecified | Suite::Legacy => Self::rsa(),
            Suite::BalancedV1 | Suite::FipsV1 | Suite::HsmV1 => Ok(Self::p256()),
        }
    }

    fn p256() -> Self {
        let secret = p256::SecretKey::random(&mut OsRng);
        let public = PublicKey::from_p256(&secret.public_key());
        Self {
            private_pem: secret
                .to_pkcs8_pem(LineEnding::LF)
                .expect("encoding an in-memory P-256 key cannot fail"),
            spki_der: public.spki_der().to_vec(),
            ssh_wire: public.ssh_wire(),
            ssh_authorized: public.to_openssh(),
            public_pem: public.to_pem(),
            kind: "ecdsa-p256",
        }
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
            kind: "rsa-2048",
        })
    }
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

        let r = SubjectKey::generate(Suite::Legacy).unwrap();
        assert_eq!(r.kind, "rsa-2048");
        assert!(r.ssh_authorized.starts_with("ssh-rsa AAAAB3NzaC1yc2E"));
        assert!(r.public_pem.starts_with("-----BEGIN RSA PUBLIC KEY-----"));
        assert!(r.private_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let parsed = ssh_key::PublicKey::from_bytes(&r.ssh_wire).unwrap();
        assert_eq!(parsed.to_openssh().unwrap().trim(), r.ssh_authorized);
    }
}
