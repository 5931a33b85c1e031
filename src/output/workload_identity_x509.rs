//! `type: workload-identity-x509`: an X.509 SVID, its key and the trust domain's bundle, as
//! tbot writes them (`lib/tbot/services/workloadidentity/x509_output.go`,
//! `x509_output_config.go`): `svid.pem`, `svid_key.pem`, `svid_bundle.pem`.

use std::path::Path;
use std::time::SystemTime;

use anyhow::anyhow;
use keybound_proto::teleport::workloadidentity::v1 as wi;
use serde::Deserialize;
use x509_cert::der::{Decode as _, Encode as _};
use zeroize::Zeroizing;

use super::cluster::{Needs, Shared};
use super::kind::{Described, Issue, Output};
use super::lifetime::Lifetime;
use super::workload_identity::{
    Params, RawSelector, Selector, SvidKind, checked_spiffe_id, exactly_one, expiry, issue,
};
use crate::auth;
use crate::fsutil::Files;
use crate::subject_key::SubjectKey;
use crate::values::{Destination, GoDuration, RawDestination};
use crate::{ExitKind, Failure};
use keybound_teleport::suite::Suite;

/// The SVID and its chain.
pub const SVID: &str = "svid.pem";
/// The SVID's private key.
pub const SVID_KEY: &str = "svid_key.pem";
/// The trust domain's X.509 authorities.
pub const SVID_BUNDLE: &str = "svid_bundle.pem";

/// A `type: workload-identity-x509` output.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct WorkloadIdentityX509Output {
    /// Its own `credential_ttl` and `renewal_interval`, when set (else the bot's).
    pub lifetime: Option<Lifetime>,
    /// Where to write.
    pub destination: Destination,
    /// An optional name for logs.
    pub name: Option<String>,
    /// Which workload identity to issue from.
    pub selector: Selector,
    /// `include_federated_trust_bundles`: add the X.509 authorities of every federated trust
    /// domain to `svid_bundle.pem`.
    pub include_federated_trust_bundles: bool,
}

/// Its YAML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkloadIdentityX509Output {
    /// Read by the dispatch on kinds; here when it does not come first.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "the kind was read from it already")]
    kind: Option<serde::de::IgnoredAny>,
    destination: Option<RawDestination>,
    name: Option<String>,
    selector: Option<RawSelector>,
    #[serde(default)]
    include_federated_trust_bundles: bool,
    credential_ttl: Option<GoDuration>,
    renewal_interval: Option<GoDuration>,
}

impl Output for WorkloadIdentityX509Output {
    type Raw = RawWorkloadIdentityX509Output;
    type Issued = Issued;

    fn from_raw(raw: Self::Raw, at: &str) -> Result<Self, String> {
        let destination = raw
            .destination
            .ok_or_else(|| format!("{at}.destination: missing"))?
            .check(&format!("{at}.destination"))?;
        Ok(Self {
            lifetime: Lifetime::of_svid(raw.credential_ttl, raw.renewal_interval, at)?,
            destination,
            name: raw.name,
            selector: Selector::from_raw(raw.selector, at)?,
            include_federated_trust_bundles: raw.include_federated_trust_bundles,
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
        let suite = cx.suite;
        let key = tokio::task::spawn_blocking(move || SvidKey::generate(suite))
            .await
            .map_err(|e| Failure::new(ExitKind::Software, anyhow!("key generation failed: {e}")))?
            .map_err(|e| Failure::new(ExitKind::Software, e.context("key generation failed")))?;
        let issued = issue(cx, &self.selector, Params::X509(key.spki_der.clone())).await?;
        let credential = exactly_one(issued.credentials, SvidKind::X509)?;
        let spiffe_id = checked_spiffe_id(&credential, &issued.cluster)?;
        let expires = expiry(&credential)?;
        let svid_pem = svid_pem(&credential, &key.spki_der)
            .map_err(|e| Failure::new(ExitKind::Rejected, e))?;
        // The bundle (`FetchInitialBundleSet`): the local SPIFFE CA's certificates.
        let ca = cx
            .auth
            .cert_authority("spiffe", issued.cluster.as_str())
            .await
            .map_err(|s| {
                auth::status_failure("reading the SPIFFE CA for the X.509 SVID bundle", &s, "")
            })?;
        let mut bundle = bundle_pem(&ca).map_err(|e| Failure::new(ExitKind::Rejected, e))?;
        if self.include_federated_trust_bundles {
            // tbot appends each federated bundle's X.509 authorities after the local ones
            // (`lib/tbot/services/workloadidentity/x509_output.go`); the bundles come from
            // `ListSPIFFEFederations` (`FetchInitialBundleSet`,
            // `lib/tbot/workloadidentity/trust_bundle_cache.go`).
            let federations = cx
                .auth
                .spiffe_federations()
                .await
                .map_err(|s| auth::status_failure("listing the SPIFFE federations", &s, ""))?;
            bundle.push_str(
                &federated_pem(&federations, issued.cluster.as_str())
                    .map_err(|e| Failure::new(ExitKind::Rejected, e))?,
            );
        }
        Ok(Issued {
            key: key.private_pem,
            svid_pem,
            bundle,
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
        Ok(vec![
            (SVID, issued.svid_pem.clone().into()),
            (SVID_KEY, issued.key.clone()),
            (SVID_BUNDLE, issued.bundle.clone().into()),
        ])
    }

    fn describe(&self, issued: &Issued) -> Described {
        tracing::info!(spiffe_id = %issued.spiffe_id, "X.509 SVID issued");
        Described {
            roles: issued.roles.clone(),
            expires: issued.expires,
        }
    }
}

/// What a `workload-identity-x509` output is issued.
pub struct Issued {
    key: Zeroizing<String>,
    svid_pem: String,
    bundle: String,
    spiffe_id: String,
    expires: SystemTime,
    roles: Vec<String>,
}

/// The SVID's key (purpose `BotSVID`, `lib/cryptosuites/suites.go` at 02cdf32d: RSA-2048 on
/// `legacy`, ECDSA P-256 on every other suite), its private half as PKCS#8 `PRIVATE KEY`.
pub(crate) struct SvidKey {
    pub(crate) private_pem: Zeroizing<String>,
    pub(crate) spki_der: Vec<u8>,
}

impl SvidKey {
    pub(crate) fn generate(suite: Suite) -> anyhow::Result<Self> {
        match suite {
            Suite::Unspecified | Suite::Legacy => {
                use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
                let private = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)?;
                Ok(Self {
                    private_pem: private.to_pkcs8_pem(LineEnding::LF)?,
                    spki_der: private.to_public_key().to_public_key_der()?.into_vec(),
                })
            }
            _ => {
                let key = SubjectKey::generate(Suite::BalancedV1)?;
                Ok(Self {
                    private_pem: key.private_pem,
                    spki_der: key.spki_der,
                })
            }
        }
    }
}

/// `svid_bundle.pem`: the SPIFFE CA's certificates (active and additional trusted), each
/// re-encoded from its DER; none is an error.
fn bundle_pem(ca: &keybound_proto::types::CertAuthorityV2) -> anyhow::Result<String> {
    let mut out = String::new();
    let sets = ca
        .spec
        .iter()
        .flat_map(|s| s.active_keys.iter().chain(&s.additional_trusted_keys));
    for pair in sets.flat_map(|k| &k.tls) {
        for pem in keybound_teleport::pem::split_pem_certs(&pair.cert)
            .map_err(|e| anyhow!("the SPIFFE CA's certificate is not PEM: {e:#}"))?
        {
            out.push_str(&pem);
        }
    }
    if out.is_empty() {
        return Err(anyhow!(
            "the cluster's SPIFFE CA holds no X.509 certificate"
        ));
    }
    Ok(out)
}

/// The X.509 authorities of each federation's `status.current_bundle` (a SPIFFE bundle: a
/// JWKS whose `x509-svid` keys carry the certificate in `x5c`), PEM, by trust domain name. A
/// federation without a bundle is skipped, as tbot skips one it cannot convert
/// (`convertSPIFFEFederationToBundle`), and so is one named as the local trust domain (the
/// local bundle takes precedence, `FederatedAndInternalTrustDomains`).
fn federated_pem(
    federations: &[keybound_proto::teleport::machineid::v1::SpiffeFederation],
    local: &str,
) -> anyhow::Result<String> {
    use base64::Engine as _;
    let mut sorted: Vec<_> = federations
        .iter()
        .map(|f| {
            let name = f.metadata.as_ref().map_or("", |m| m.name.as_str());
            let bundle = f.status.as_ref().map_or("", |s| s.current_bundle.as_str());
            (name, bundle)
        })
        .filter(|(name, bundle)| !name.is_empty() && *name != local && !bundle.is_empty())
        .collect();
    sorted.sort();
    let mut out = String::new();
    for (name, bundle) in sorted {
        let json: serde_json::Value = serde_json::from_str(bundle).map_err(|e| {
            anyhow!("the SPIFFE federation {name:?} has a bundle that is not JSON: {e}")
        })?;
        let keys = json.get("keys").and_then(serde_json::Value::as_array);
        for key in keys.into_iter().flatten() {
            if key.get("use").and_then(serde_json::Value::as_str) != Some("x509-svid") {
                continue;
            }
            let x5c = key.get("x5c").and_then(serde_json::Value::as_array);
            let Some([cert]) = x5c.map(Vec::as_slice) else {
                return Err(anyhow!(
                    "the SPIFFE federation {name:?} has an x509-svid key without exactly one \
                     x5c certificate"
                ));
            };
            let der = cert
                .as_str()
                .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
                .ok_or_else(|| {
                    anyhow!("the SPIFFE federation {name:?} has an x5c entry that is not base64")
                })?;
            x509_cert::Certificate::from_der(&der).map_err(|e| {
                anyhow!(
                    "the SPIFFE federation {name:?} has an x5c entry that is not a certificate: {e}"
                )
            })?;
            out.push_str(&keybound_teleport::pem::der_to_pem(&der));
        }
    }
    Ok(out)
}

/// `svid.pem`: the SVID, then each certificate of its chain, PEM, each re-encoded from its DER
/// after checking it parses and the SVID holds the key keybound sent.
fn svid_pem(credential: &wi::Credential, spki_der: &[u8]) -> anyhow::Result<String> {
    let Some(wi::credential::Credential::X509Svid(svid)) = &credential.credential else {
        return Err(anyhow!(
            "the cluster answered an X.509 SVID request with another credential"
        ));
    };
    let leaf = x509_cert::Certificate::from_der(&svid.cert)
        .map_err(|e| anyhow!("the cluster's X.509 SVID is not a certificate: {e}"))?;
    if leaf.tbs_certificate.subject_public_key_info.to_der()? != spki_der {
        return Err(anyhow!(
            "the cluster's X.509 SVID is for another key than the one keybound sent"
        ));
    }
    let mut out = keybound_teleport::pem::der_to_pem(&svid.cert);
    for der in &svid.chain {
        x509_cert::Certificate::from_der(der)
            .map_err(|e| anyhow!("a certificate of the SVID's chain does not parse: {e}"))?;
        out.push_str(&keybound_teleport::pem::der_to_pem(der));
    }
    Ok(out)
}
