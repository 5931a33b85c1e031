//! Teleport's signature algorithm suites and the key types they call for.
//!
//! Source: `lib/cryptosuites/suites.go` (key per purpose) and `api/types/signaturealgorithmsuite.go`
//! (text forms). The enum numbers are `types.SignatureAlgorithmSuite` in
//! `api/proto/teleport/legacy/types/types.proto`.

use std::fmt;

use keybound_signer::Algorithm;

/// A cluster's signature algorithm suite (`cluster_auth_preference.spec.signature_algorithm_suite`).
#[derive(Clone, Copy, Debug, Default, Eq, Hash, PartialEq)]
pub enum Suite {
    /// Not set; Teleport treats it as `legacy`.
    #[default]
    Unspecified,
    /// `legacy`.
    Legacy,
    /// `balanced-v1`.
    BalancedV1,
    /// `fips-v1`.
    FipsV1,
    /// `hsm-v1`.
    HsmV1,
}

impl Suite {
    /// Parses every form Teleport has used: `""`, the short names (`balanced-v1`), the proto enum
    /// names (`SIGNATURE_ALGORITHM_SUITE_BALANCED_V1`), the oldest JSON form
    /// (`signature-algorithm-suite-balanced-v1`) and the enum numbers 0–4.
    pub fn parse(text: &str) -> Result<Self, String> {
        let normal = text.trim().to_ascii_lowercase().replace('_', "-");
        let short = normal
            .strip_prefix("signature-algorithm-suite-")
            .unwrap_or(&normal);
        match short {
            "" | "unspecified" | "0" => Ok(Self::Unspecified),
            "legacy" | "1" => Ok(Self::Legacy),
            "balanced-v1" | "2" => Ok(Self::BalancedV1),
            "fips-v1" | "3" => Ok(Self::FipsV1),
            "hsm-v1" | "4" => Ok(Self::HsmV1),
            _ => Err(format!(
                "unknown signature algorithm suite {}",
                crate::text::quoted(text)
            )),
        }
    }

    /// The enum number (`types.SignatureAlgorithmSuite`).
    pub fn number(self) -> i32 {
        match self {
            Self::Unspecified => 0,
            Self::Legacy => 1,
            Self::BalancedV1 => 2,
            Self::FipsV1 => 3,
            Self::HsmV1 => 4,
        }
    }

    /// The suite for an enum number; unknown numbers are an error.
    pub fn from_number(n: i32) -> Result<Self, String> {
        Self::parse(&n.to_string())
    }

    /// The bound keypair's algorithm under this suite (purpose `BoundKeypairJoining`): ECDSA
    /// P-256 for `fips-v1`, Ed25519 for every other suite.
    pub fn bound_key_algorithm(self) -> Algorithm {
        match self {
            Self::FipsV1 => Algorithm::EcdsaP256Sha256,
            _ => Algorithm::Ed25519,
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unspecified => "unspecified",
            Self::Legacy => "legacy",
            Self::BalancedV1 => "balanced-v1",
            Self::FipsV1 => "fips-v1",
            Self::HsmV1 => "hsm-v1",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses() {
        for (text, suite) in [
            ("", Suite::Unspecified),
            ("SIGNATURE_ALGORITHM_SUITE_UNSPECIFIED", Suite::Unspecified),
            ("legacy", Suite::Legacy),
            ("balanced-v1", Suite::BalancedV1),
            ("SIGNATURE_ALGORITHM_SUITE_FIPS_V1", Suite::FipsV1),
            ("signature-algorithm-suite-hsm-v1", Suite::HsmV1),
            ("3", Suite::FipsV1),
        ] {
            assert_eq!(Suite::parse(text), Ok(suite), "{text}");
            assert_eq!(Suite::from_number(suite.number()), Ok(suite));
        }
        assert!(Suite::parse("balanced-v2").is_err());
    }

    #[test]
    fn bound_keys_follow_lib_cryptosuites() {
        assert_eq!(
            Suite::FipsV1.bound_key_algorithm(),
            Algorithm::EcdsaP256Sha256
        );
        for s in [
            Suite::Unspecified,
            Suite::Legacy,
            Suite::BalancedV1,
            Suite::HsmV1,
        ] {
            assert_eq!(s.bound_key_algorithm(), Algorithm::Ed25519);
        }
    }
}
