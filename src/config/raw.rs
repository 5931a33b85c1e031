//! The YAML shapes of `tbot.yaml`, deserialized strictly, and their check into a [`Config`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keybound_signer::PinSource;
use keybound_signer::config::Pkcs11UriText;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::{
    ClusterAddr, Config, ConfigError, DEFAULT_CREDENTIAL_TTL, DEFAULT_RENEWAL_INTERVAL,
    DEFAULT_STORAGE_PATH, Onboarding,
};
use crate::fsutil::Symlinks;
use crate::output::RawOutput;
use crate::service::{RawEntry, ServiceConfig};
use crate::signer::SignerKind;
use crate::values::{Destination, GoDuration, HostPort, RawDestination, checked_str, not_yet};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[allow(dead_code, reason = "its deserializer checks the value")]
    version: Version,
    onboarding: Option<RawOnboarding>,
    storage: Option<RawDestination>,
    outputs: Option<Vec<RawOutput>>,
    services: Option<Vec<RawEntry>>,
    #[serde(default)]
    debug: bool,
    auth_server: Option<String>,
    proxy_server: Option<String>,
    credential_ttl: Option<GoDuration>,
    renewal_interval: Option<GoDuration>,
    /// The pre-v17 name of `credential_ttl`, still read by tbot.
    certificate_ttl: Option<GoDuration>,
    #[serde(default)]
    oneshot: bool,
    #[serde(default, deserialize_with = "not_yet::fips")]
    #[allow(dead_code, reason = "its deserializer refuses any value but false")]
    fips: (),
    diag_addr: Option<String>,
    #[serde(default)]
    insecure: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOnboarding {
    join_method: Option<JoinMethod>,
    token: Option<String>,
    #[serde(default, deserialize_with = "not_yet::ca_pins")]
    #[allow(dead_code, reason = "its deserializer refuses any value but empty")]
    ca_pins: (),
    ca_path: Option<PathBuf>,
    bound_keypair: Option<RawBoundKeypair>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBoundKeypair {
    static_private_key_path: Option<PathBuf>,
    signer: Option<SignerValue>,
    pkcs11_uri: Option<Pkcs11UriValue>,
    pkcs11_module: Option<PathBuf>,
    pin_source: Option<PinSourceValue>,
    #[serde(default)]
    require_hardware_key: bool,
    tpm_tcti: Option<TctiValue>,
    tpm_key_handle: Option<HandleValue>,
    tpm_key_path: Option<PathBuf>,
    tpm_parent: Option<HandleValue>,
    tpm_state_nv_index: Option<HandleValue>,
    registration_secret: Option<SecretValue>,
    registration_secret_path: Option<PathBuf>,
    #[serde(default, deserialize_with = "not_yet::registration_secret")]
    #[allow(dead_code, reason = "its deserializer refuses any value but empty")]
    initial_join_secret: (),
}

impl Config {
    /// Reads and checks the YAML file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        // Zeroed when dropped: a pkcs11_uri may carry a PIN (pin-value).
        let text =
            zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("config {}: cannot read: {e}", path.display()))
            })?);
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses YAML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Err(ConfigError(format!(
                "config {origin}: is empty; it needs at least `version: v2` and `onboarding:`"
            )));
        }
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| {
            let message = e.to_string();
            // serde_yaml appends " at line L column C"; put the position first, compiler-style.
            let message = match message.rsplit_once(" at line ") {
                Some((head, _)) => head.to_owned(),
                None => message,
            };
            match e.location() {
                Some(at) => ConfigError(format!(
                    "config {origin}:{}:{}: {message}",
                    at.line(),
                    at.column()
                )),
                None => ConfigError(format!("config {origin}: {message}")),
            }
        })?;
        raw.check()
            .map_err(|message| ConfigError(format!("config {origin}: {message}")))
    }
}

impl RawConfig {
    pub(super) fn check(self) -> Result<Config, String> {
        let cluster = cluster(self.proxy_server, self.auth_server)?;
        let onboarding = self.onboarding.ok_or(
            "onboarding: missing; add `onboarding:` with `join_method: bound_keypair` and `token:`",
        )?;
        let token = onboarding.token(self.insecure)?;
        let storage = match self.storage {
            Some(d) => d.check("storage")?,
            None => Destination::Directory {
                path: PathBuf::from(DEFAULT_STORAGE_PATH),
                symlinks: Symlinks::default(),
            },
        };
        let (credential_ttl, renewal_interval) = lifetimes(
            self.credential_ttl.or(self.certificate_ttl),
            self.renewal_interval,
        )?;
        let mut outputs = Vec::new();
        for (i, output) in self.outputs.unwrap_or_default().into_iter().enumerate() {
            outputs.push(output.check(&format!("outputs[{i}]"))?);
        }
        let mut services = Vec::new();
        for (i, entry) in self.services.unwrap_or_default().into_iter().enumerate() {
            let at = format!("services[{i}]");
            match entry {
                RawEntry::Output(output) => outputs.push(output.check(&at)?),
                RawEntry::WorkloadApi(raw) => {
                    services.push(ServiceConfig::WorkloadApi(raw.check(&at)?))
                }
            }
        }
        let onboarding = onboarding.into_onboarding(token);
        onboarding
            .signer_config()
            .map_err(|e| format!("onboarding.bound_keypair: {e}"))?;
        let config = Config {
            cluster,
            onboarding,
            storage,
            credential_ttl,
            renewal_interval,
            oneshot: self.oneshot,
            debug: self.debug,
            insecure: self.insecure,
            diag_addr: self.diag_addr.filter(|a| !a.is_empty()),
            outputs,
            services,
        };
        config.check_destinations()?;
        Ok(config)
    }
}

/// `proxy_server` or `auth_server`, at most one.
fn cluster(proxy: Option<String>, auth: Option<String>) -> Result<Option<ClusterAddr>, String> {
    match (proxy, auth) {
        (Some(_), Some(_)) => Err(
            "proxy_server and auth_server are both set; set only one (proxy_server for a \
             Teleport Proxy)"
                .to_owned(),
        ),
        (Some(p), None) => Ok(Some(ClusterAddr::Proxy(
            HostPort::parse(&p, 443).map_err(|e| format!("proxy_server: {e}"))?,
        ))),
        (None, Some(a)) => Ok(Some(ClusterAddr::Auth(
            HostPort::parse(&a, 3025).map_err(|e| format!("auth_server: {e}"))?,
        ))),
        (None, None) => Ok(None),
    }
}

/// The certificate lifetime and the renewal interval, as tbot (`lib/tbot/config/config.go`):
/// the old `certificate_ttl` counts only when `credential_ttl` is unset (the caller picks
/// `ttl`), and a lifetime and an interval come as a pair.
fn lifetimes(
    ttl: Option<GoDuration>,
    interval: Option<GoDuration>,
) -> Result<(Duration, Duration), String> {
    match (ttl, interval) {
        (Some(ttl), Some(interval)) => Ok((ttl.0, interval.0)),
        (None, None) => Ok((DEFAULT_CREDENTIAL_TTL, DEFAULT_RENEWAL_INTERVAL)),
        _ => Err(
            "credential_ttl and renewal_interval must both be specified if either is".to_owned(),
        ),
    }
}

impl RawOnboarding {
    /// The join method and token, checked (`insecure` and a CA bundle exclude each other).
    fn token(&self, insecure: bool) -> Result<String, String> {
        if self.join_method.is_none() {
            return Err(
                "onboarding.join_method: missing; keybound joins with `join_method: bound_keypair`"
                    .to_owned(),
            );
        }
        let token =
            self.token.clone().filter(|t| !t.trim().is_empty()).ok_or(
                "onboarding.token: missing; set it to the bound_keypair join token's name",
            )?;
        // Read once here to fail early; the join reads it again (a token file may be replaced).
        super::token::read(&token).map_err(|e| format!("onboarding.token: {e}"))?;
        if insecure && self.ca_path.is_some() {
            return Err(
                "insecure and onboarding.ca_path are both set; remove one (insecure skips \
                 verification, so a CA bundle would be ignored)"
                    .to_owned(),
            );
        }
        Ok(token)
    }

    fn into_onboarding(self, token: String) -> Onboarding {
        match self.bound_keypair {
            None => Onboarding {
                token,
                ca_path: self.ca_path,
                ..Onboarding::default()
            },
            Some(b) => Onboarding {
                token,
                ca_path: self.ca_path,
                static_private_key_path: b.static_private_key_path,
                signer: b.signer.map(|v| v.0),
                pkcs11_uri: b.pkcs11_uri.map(|v| v.0),
                pkcs11_module: b.pkcs11_module,
                pin_source: b.pin_source.map(|v| v.0),
                require_hardware_key: b.require_hardware_key,
                tpm_tcti: b.tpm_tcti.map(|v| v.0),
                tpm_key_handle: b.tpm_key_handle.map(|v| v.0),
                tpm_key_path: b.tpm_key_path,
                tpm_parent: b.tpm_parent.map(|v| v.0),
                tpm_state_nv_index: b.tpm_state_nv_index.map(|v| v.0),
                registration_secret: b.registration_secret.map(|v| v.0),
                registration_secret_path: b.registration_secret_path,
            },
        }
    }
}

// === Scalar values with their own checks ===

/// `bound_keypair.registration_secret`: verbatim, as tbot takes it (an empty one is none).
struct SecretValue(crate::bkp::RegistrationSecret);

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = zeroize::Zeroizing::new(String::deserialize(d)?);
        Ok(Self(crate::bkp::RegistrationSecret::new(text.as_str())))
    }
}

/// `bound_keypair.signer`.
struct SignerValue(SignerKind);

impl<'de> Deserialize<'de> for SignerValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |v| SignerKind::parse(v).map(Self))
    }
}

/// `bound_keypair.pkcs11_uri`, checked as an RFC 7512 URI when the pkcs11 backend is built in.
struct Pkcs11UriValue(Pkcs11UriText);

impl<'de> Deserialize<'de> for Pkcs11UriValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |v| {
            #[cfg(feature = "pkcs11")]
            keybound_signer_pkcs11::Pkcs11Uri::parse(v)?;
            Ok(Self(v.into()))
        })
    }
}

/// `bound_keypair.tpm_tcti`, checked when the tpm backend is built in.
struct TctiValue(String);

impl<'de> Deserialize<'de> for TctiValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |v| {
            #[cfg(feature = "tpm")]
            keybound_signer_tpm::tcti::Tcti::parse(v)?;
            Ok(Self(v.to_owned()))
        })
    }
}

/// A TPM handle written as hex (`0x81000100`), as tpm2-tools write them.
struct HandleValue(u32);

/// Parses a TPM handle: hex with `0x`, or decimal.
pub fn parse_handle(v: &str) -> Result<u32, String> {
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    };
    parsed.ok_or_else(|| format!("{v:?} is not a TPM handle (write it like 0x81000100)"))
}

impl<'de> Deserialize<'de> for HandleValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HandleValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TPM handle such as 0x81000100")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HandleValue, E> {
                parse_handle(v).map(HandleValue).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HandleValue, E> {
                u32::try_from(v)
                    .map(HandleValue)
                    .map_err(|_| E::custom("not a TPM handle"))
            }
        }
        d.deserialize_any(V)
    }
}

/// `bound_keypair.pin_source`: `env:VAR` or `file:PATH`.
struct PinSourceValue(PinSource);

impl<'de> Deserialize<'de> for PinSourceValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |v| PinSource::parse(v).map(Self))
    }
}

/// `version:`; only v2 is read.
struct Version;

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |v| match v {
            "v2" => Ok(Self),
            "v1" => Err(
                "keybound reads tbot's v2 configuration; convert this v1 file with `tbot migrate`"
                    .to_owned(),
            ),
            other => Err(format!(
                "unknown config version {other:?}; keybound reads `version: v2`"
            )),
        })
    }
}

/// `onboarding.join_method:`; keybound joins with `bound_keypair` only.
struct JoinMethod;

impl<'de> Deserialize<'de> for JoinMethod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |v| match v {
            "bound_keypair" => Ok(Self),
            "" => Err("empty; keybound joins with `bound_keypair`".to_owned()),
            other => Err(format!(
                "join method {other:?} is not supported by keybound, which joins only with \
                 `bound_keypair` (use tbot for other join methods)"
            )),
        })
    }
}
