//! `type: workload-identity-jwt`: a JWT SVID for the configured audiences, as tbot writes it
//! (`lib/tbot/services/workloadidentity/jwt_output.go`, `jwt_output_config.go`): the file
//! `jwt_svid`, the token alone, without a newline.

use std::path::Path;
use std::time::SystemTime;

use anyhow::anyhow;
use keybound_proto::teleport::workloadidentity::v1 as wi;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::cluster::{Needs, Shared};
use super::kind::{Described, Issue, Output};
use super::lifetime::Lifetime;
use super::workload_identity::{
    Params, RawSelector, Selector, SvidKind, checked_spiffe_id, exactly_one, expiry, issue,
};
use crate::fsutil::Files;
use crate::values::{Destination, GoDuration, RawDestination};
use crate::{ExitKind, Failure};

/// The JWT SVID.
pub const JWT_SVID: &str = "jwt_svid";

/// A `type: workload-identity-jwt` output.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct WorkloadIdentityJwtOutput {
    /// Its own `credential_ttl` and `renewal_interval`, when set (else the bot's).
    pub lifetime: Option<Lifetime>,
    /// Where to write.
    pub destination: Destination,
    /// An optional name for logs.
    pub name: Option<String>,
    /// Which workload identity to issue from.
    pub selector: Selector,
    /// The JWT's audiences (never empty).
    pub audiences: Vec<String>,
}

/// Its YAML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkloadIdentityJwtOutput {
    /// Read by the dispatch on kinds; here when it does not come first.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "the kind was read from it already")]
    kind: Option<serde::de::IgnoredAny>,
    destination: Option<RawDestination>,
    name: Option<String>,
    selector: Option<RawSelector>,
    #[serde(default)]
    audiences: Vec<String>,
    credential_ttl: Option<GoDuration>,
    renewal_interval: Option<GoDuration>,
}

impl Output for WorkloadIdentityJwtOutput {
    type Raw = RawWorkloadIdentityJwtOutput;
    type Issued = Issued;

    fn from_raw(raw: Self::Raw, at: &str) -> Result<Self, String> {
        let destination = raw
            .destination
            .ok_or_else(|| format!("{at}.destination: missing"))?
            .check(&format!("{at}.destination"))?;
        let selector = Selector::from_raw(raw.selector, at)?;
        if raw.audiences.is_empty() {
            return Err(format!(
                "{at}.audiences: must have at least one value (who the JWT is for, e.g. \
                 [https://service.example.com])"
            ));
        }
        if let Some(i) = raw.audiences.iter().position(|a| a.trim().is_empty()) {
            return Err(format!("{at}.audiences[{i}]: empty; name the audience"));
        }
        Ok(Self {
            lifetime: Lifetime::of_svid(raw.credential_ttl, raw.renewal_interval, at)?,
            destination,
            name: raw.name,
            selector,
            audiences: raw.audiences,
        })
    }

    fn lifetime(&self) -> Option<&Lifetime> {
        self.lifetime.as_ref()
    }

    fn destination(&self) -> &Destination {
        &self.destination
    }

    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn needs(&self) -> Needs {
        Needs {
            default_roles: true,
        }
    }

    async fn issue(&self, cx: &Issue<'_>) -> Result<Issued, Failure> {
        let issued = issue(cx, &self.selector, Params::Jwt(self.audiences.clone())).await?;
        let credential = exactly_one(issued.credentials, SvidKind::Jwt)?;
        let spiffe_id = checked_spiffe_id(&credential, &issued.cluster)?;
        let expires = expiry(&credential)?;
        let Some(wi::credential::Credential::JwtSvid(svid)) = credential.credential else {
            return Err(Failure::new(
                ExitKind::Rejected,
                anyhow!("the cluster answered a JWT SVID request with another credential"),
            ));
        };
        check_compact_jwt(&svid.jwt).map_err(|e| Failure::new(ExitKind::Rejected, e))?;
        Ok(Issued {
            jwt: Zeroizing::new(svid.jwt),
            spiffe_id,
            expires,
            roles: issued.roles,
        })
    }

    fn render(
        &self,
        issued: &Issued,
        _: &Issue<'_>,
        _: &Shared,
        _: &Path,
    ) -> anyhow::Result<Files> {
        Ok(vec![(JWT_SVID, issued.jwt.clone())])
    }

    fn describe(&self, issued: &Issued) -> Described {
        tracing::info!(spiffe_id = %issued.spiffe_id, "JWT SVID issued");
        Described {
            roles: issued.roles.clone(),
            expires: issued.expires,
        }
    }
}

/// What a `workload-identity-jwt` output is issued. The JWT is a bearer credential: it is held
/// in a zeroizing buffer and never logged.
pub struct Issued {
    jwt: Zeroizing<String>,
    spiffe_id: String,
    expires: SystemTime,
    roles: Vec<String>,
}

/// A JWS in compact form: three base64url parts, nothing else (no newline can reach the file).
fn check_compact_jwt(jwt: &str) -> anyhow::Result<()> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let base64url = |p: &&str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if parts.len() != 3 || !parts.iter().all(base64url) {
        return Err(anyhow!("the cluster's JWT SVID is not a compact JWS"));
    }
    Ok(())
}
