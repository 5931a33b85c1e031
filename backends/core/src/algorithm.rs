//! The signature algorithms a bound keypair can use.

use std::fmt;
use std::str::FromStr;

/// A bound-keypair signature algorithm.
///
/// Teleport's `cryptosuites` give bound keys Ed25519 in every suite but `fips-v1`, which uses
/// ECDSA P-256 (`lib/cryptosuites/suites.go`, purpose `BoundKeypairJoining`). The JWS `alg`
/// follows `lib/jwt.AlgorithmForPublicKey`.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Algorithm {
    /// ECDSA on NIST P-256 with SHA-256: JWS `ES256`, SSH `ecdsa-sha2-nistp256`.
    EcdsaP256Sha256,
    /// Ed25519 (pure, no pre-hash): JWS `EdDSA`, SSH `ssh-ed25519`.
    Ed25519,
}

impl Algorithm {
    /// Every algorithm, in the order `--algorithm` lists them.
    pub const ALL: [Self; 2] = [Self::Ed25519, Self::EcdsaP256Sha256];

    /// The JWS `alg` header value (RFC 7518, RFC 8037).
    pub fn jws_alg(self) -> &'static str {
        match self {
            Self::EcdsaP256Sha256 => "ES256",
            Self::Ed25519 => "EdDSA",
        }
    }

    /// The SSH public key algorithm name (RFC 5656, RFC 8709).
    pub fn ssh_name(self) -> &'static str {
        match self {
            Self::EcdsaP256Sha256 => "ecdsa-sha2-nistp256",
            Self::Ed25519 => "ssh-ed25519",
        }
    }

    /// The name keybound uses on its command line and in its output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256Sha256 => "ecdsa-p256",
            Self::Ed25519 => "ed25519",
        }
    }

    /// Length in bytes of a JWS-encoded signature (both are 64: Ed25519, and `r‖s` for P-256).
    pub fn signature_len(self) -> usize {
        64
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for an algorithm name keybound does not know.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct UnknownAlgorithm(pub String);

impl fmt::Display for UnknownAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown algorithm {:?}: use ed25519 or ecdsa-p256",
            self.0
        )
    }
}

impl std::error::Error for UnknownAlgorithm {}

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" | "eddsa" => Ok(Self::Ed25519),
            "ecdsa-p256" | "p256" | "p-256" | "es256" | "ecdsa" => Ok(Self::EcdsaP256Sha256),
            _ => Err(UnknownAlgorithm(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for alg in Algorithm::ALL {
            assert_eq!(alg.as_str().parse::<Algorithm>(), Ok(alg));
        }
        assert_eq!("ES256".parse::<Algorithm>(), Ok(Algorithm::EcdsaP256Sha256));
        assert!(
            "rsa"
                .parse::<Algorithm>()
                .unwrap_err()
                .to_string()
                .contains("ed25519")
        );
    }
}
