//! tbot's v2 YAML configuration, the only module that touches `serde_yaml`.
//!
//! keybound reads the same `tbot.yaml` that Teleport's `tbot` reads (`lib/tbot/config/config.go`,
//! `lib/tbot/bot/onboarding/config.go`). Parsing is strict: an unknown key or a value of the wrong
//! type is an error naming the file, line, column and key. Keys that tbot knows but keybound does
//! not implement are errors that say so, never silently ignored; setting them to their "off"
//! value (`false`, empty) is accepted.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use keybound_signer::PinSource;
use keybound_signer::config::{
    EnvConfig, FileConfig, Pkcs11Config, Pkcs11UriText, SignerConfig, TpmConfig, TpmKey,
};

pub use crate::fsutil::Symlinks;
use crate::signer::SignerKind;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// tbot's default storage directory (`lib/tbot/config`, `defaultStoragePath`).
pub const DEFAULT_STORAGE_PATH: &str = "/var/lib/teleport/bot";
/// tbot's default certificate lifetime.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(60 * 60);
/// tbot's default renewal interval.
pub const DEFAULT_RENEWAL_INTERVAL: Duration = Duration::from_secs(20 * 60);

/// A loaded, checked configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where the cluster is reached, if the file says.
    pub cluster: Option<ClusterAddr>,
    /// How to join.
    pub onboarding: Onboarding,
    /// Where the bot's own identity is kept between runs.
    pub storage: Destination,
    /// Requested certificate lifetime.
    pub credential_ttl: Duration,
    /// How often to renew.
    pub renewal_interval: Duration,
    /// Join once, write outputs, and exit.
    pub oneshot: bool,
    /// Verbose logging.
    pub debug: bool,
    /// Skip TLS verification of the cluster (development only).
    pub insecure: bool,
    /// The diagnostics listener address.
    pub diag_addr: Option<String>,
    /// The `identity` outputs (`outputs:` and `services:` together, in that order).
    pub outputs: Vec<IdentityOutput>,
}

/// The cluster address: through a Proxy (`proxy_server`) or straight to Auth (`auth_server`).
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum ClusterAddr {
    /// A Teleport Proxy, normally its web port.
    Proxy(HostPort),
    /// A Teleport Auth Service (or a Proxy on 443/3080, which tbot tries as a Proxy first).
    Auth(HostPort),
}

/// `onboarding:`.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Onboarding {
    /// The join token's name.
    pub token: String,
    /// A CA bundle to verify the cluster with, instead of the system roots.
    pub ca_path: Option<PathBuf>,
    /// `bound_keypair.static_private_key_path`.
    pub static_private_key_path: Option<PathBuf>,
    /// `bound_keypair.signer` (keybound): which backend holds the key.
    pub signer: Option<SignerKind>,
    /// `bound_keypair.pkcs11_uri` (keybound): the key in a PKCS#11 token (it may carry a PIN).
    pub pkcs11_uri: Option<Pkcs11UriText>,
    /// `bound_keypair.pkcs11_module` (keybound): the PKCS#11 module to load.
    pub pkcs11_module: Option<PathBuf>,
    /// `bound_keypair.pin_source` (keybound): where the token PIN comes from.
    pub pin_source: Option<PinSource>,
    /// `bound_keypair.require_hardware_key` (keybound): refuse keys not generated in a device.
    pub require_hardware_key: bool,
    /// `bound_keypair.tpm_tcti` (keybound): how to reach the TPM.
    pub tpm_tcti: Option<String>,
    /// `bound_keypair.tpm_key_handle` (keybound): a persistent handle.
    pub tpm_key_handle: Option<u32>,
    /// `bound_keypair.tpm_key_path` (keybound): a TSS2 PEM key file.
    pub tpm_key_path: Option<PathBuf>,
    /// `bound_keypair.tpm_parent` (keybound): a persistent parent for the key file.
    pub tpm_parent: Option<u32>,
}

impl Onboarding {
    /// Where the key lives. Without an explicit `signer`, a PKCS#11 URI means pkcs11 and a TPM key
    /// means tpm; then, as in tbot, the configured path wins over `TBOT_BOUND_KEYPAIR_STATIC_KEY`.
    pub fn signer_config(&self) -> Result<SignerConfig, String> {
        let tpm_key_set = self.tpm_key_handle.is_some() || self.tpm_key_path.is_some();
        let kind = self.signer.unwrap_or(if self.pkcs11_uri.is_some() {
            SignerKind::Pkcs11
        } else if tpm_key_set {
            SignerKind::Tpm
        } else if self.static_private_key_path.is_some() {
            SignerKind::File
        } else {
            SignerKind::Env
        });
        // Settings that belong to another backend than the chosen one are mistakes, not noise.
        let settings = [
            (
                "static_private_key_path",
                self.static_private_key_path.is_some(),
                &[SignerKind::File][..],
            ),
            (
                "pkcs11_uri/pkcs11_module",
                self.pkcs11_uri.is_some() || self.pkcs11_module.is_some(),
                &[SignerKind::Pkcs11],
            ),
            (
                "tpm_tcti/tpm_key_handle/tpm_key_path/tpm_parent",
                tpm_key_set || self.tpm_tcti.is_some() || self.tpm_parent.is_some(),
                &[SignerKind::Tpm],
            ),
            (
                "pin_source",
                self.pin_source.is_some(),
                &[SignerKind::Pkcs11, SignerKind::Tpm],
            ),
        ];
        if let Some((name, _, _)) = settings
            .iter()
            .find(|(_, set, owners)| *set && !owners.contains(&kind))
        {
            return Err(format!(
                "{name} does not apply to the {} signer; remove it or choose its signer",
                kind.name()
            ));
        }
        match kind {
            SignerKind::File => {
                let path = self.static_private_key_path.as_ref().ok_or(
                    "the file signer needs static_private_key_path (or --static-key-path)",
                )?;
                Ok(SignerConfig::File(FileConfig::new(path)))
            }
            SignerKind::Env => Ok(SignerConfig::Env(EnvConfig::default())),
            SignerKind::Pkcs11 => {
                let uri = self.pkcs11_uri.clone().ok_or(
                    "the pkcs11 signer needs pkcs11_uri (or --pkcs11-uri 'pkcs11:token=LABEL;object=LABEL')",
                )?;
                let mut config = Pkcs11Config::new(uri);
                config.module.clone_from(&self.pkcs11_module);
                config.pin.clone_from(&self.pin_source);
                config.require_hardware_key = self.require_hardware_key;
                Ok(SignerConfig::Pkcs11(config))
            }
            SignerKind::Tpm => {
                let key = match (self.tpm_key_handle, &self.tpm_key_path) {
                    (Some(handle), None) => TpmKey::Handle(handle),
                    (None, Some(path)) => TpmKey::File(path.clone()),
                    (Some(_), Some(_)) => {
                        return Err("give tpm_key_handle or tpm_key_path, not both".to_owned());
                    }
                    (None, None) => {
                        return Err(
                            "the tpm signer needs tpm_key_handle (0x81xxxxxx) or tpm_key_path (a TSS2 PEM file)".to_owned(),
                        );
                    }
                };
                if self.tpm_parent.is_some() && self.tpm_key_handle.is_some() {
                    return Err(
                        "tpm_parent applies to tpm_key_path keys, not persistent handles"
                            .to_owned(),
                    );
                }
                let mut config = TpmConfig::new(key);
                config.tcti.clone_from(&self.tpm_tcti);
                config.parent = self.tpm_parent;
                config.auth.clone_from(&self.pin_source);
                config.require_hardware_key = self.require_hardware_key;
                Ok(SignerConfig::Tpm(config))
            }
        }
    }
}

/// A storage or output destination.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Destination {
    /// Files in a directory (created 0700; files 0600).
    Directory {
        /// The directory.
        path: PathBuf,
        /// tbot's symlink policy (`symlinks:`).
        symlinks: Symlinks,
    },
    /// Kept in memory for the life of the process.
    Memory,
}

/// A `type: identity` output: the bot's certificates in tbot's file layout.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct IdentityOutput {
    /// Where to write.
    pub destination: Destination,
    /// Whether to write `known_hosts` and `ssh_config` (tbot's `ssh_config: on`, the default).
    pub ssh_config: bool,
    /// An optional name for logs.
    pub name: Option<String>,
    /// The roles to impersonate; empty means every role the bot may impersonate (tbot's
    /// default, read from the bot's role).
    pub roles: Vec<String>,
    /// Whether the output's certificates may request further certificates (`allow_reissue`).
    pub allow_reissue: bool,
}

/// A `host:port` pair, checked: only [`HostPort::parse`] makes one, so a host that reaches
/// `ssh_config`, `known_hosts` or a command line is an address or a DNS-style name
/// ([`crate::untrusted::check_host`]), whether it came from the configuration or the cluster.
#[derive(Clone, Debug, Eq, Hash, PartialEq)]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    /// Parses `host:port`, `host` (taking `default_port`), `[v6]:port` or `[v6]`.
    pub fn parse(s: &str, default_port: u16) -> Result<Self, String> {
        let s = s.trim();
        let shown = crate::untrusted::quoted(s);
        let bad = || format!("{shown} is not a host:port address");
        if s.is_empty() || s.contains("://") || s.contains('/') {
            return Err(format!(
                "{shown} is not a host:port address (no scheme or path, e.g. example.teleport.sh:443)"
            ));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else {
            match s.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => return Err(bad()),
                Some((host, port)) => (host, Some(port)),
                None => (s, None),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        crate::untrusted::check_host(host)
            .map_err(|why| format!("{shown} is not a host:port address: {why}"))?;
        let port = match port {
            None => default_port,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                format!(
                    "{shown} has an invalid port {}",
                    crate::untrusted::quoted(p)
                )
            })?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// The host name or IP address (without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where the directory `path` leads: an absolute path with `.`, `..` and symbolic links
/// resolved as far as it exists (`canonicalize`, one component at a time), and the part that
/// does not exist yet taken as written, `..` removing the component before it (those
/// directories will be created as real ones).
pub fn resolve(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut resolved = PathBuf::from("/");
    let mut on_disk = true;
    for component in absolute.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => resolved = PathBuf::from("/"),
            Component::CurDir => {}
            // While on disk `resolved` is canonical (no links), so its parent is what `..` is.
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(name) => {
                let next = resolved.join(name);
                match on_disk.then(|| next.canonicalize()) {
                    Some(Ok(real)) => resolved = real,
                    _ => {
                        on_disk = false;
                        resolved = next;
                    }
                }
            }
        }
    }
    resolved
}

/// A configuration error: one line naming the file and, where YAML knows it, line and column.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Refuses destinations that would overwrite each other: an output that is the storage
    /// directory or inside it (its role-impersonated files would replace the bot's own, which
    /// the cluster would then see rejoin with the wrong certificate, or sit among them), or two
    /// outputs in one directory; and an output directory its `ssh_config` could not name
    /// ([`crate::output::check_ssh_config_dir`]). Paths are compared where they lead
    /// ([`resolve`]): `x/../storage` and a symbolic link to the storage directory are the storage
    /// directory.
    pub fn check_destinations(&self) -> Result<(), String> {
        let via = |path: &Path, resolved: &Path| {
            if path == resolved {
                String::new()
            } else {
                format!(" (it resolves to {})", resolved.display())
            }
        };
        let storage = match &self.storage {
            Destination::Directory { path, .. } => Some((path, resolve(path))),
            Destination::Memory => None,
        };
        let mut seen: Vec<PathBuf> = Vec::new();
        for output in &self.outputs {
            let Destination::Directory { path, .. } = &output.destination else {
                continue;
            };
            let here = resolve(path);
            if let Some((storage_path, storage)) = &storage {
                if *storage == here {
                    return Err(format!(
                        "output {}{} is the storage directory; outputs hold role-impersonated \
                         certificates that would replace the bot's own: give the output its own \
                         directory",
                        path.display(),
                        via(path, &here)
                    ));
                }
                if here.starts_with(storage) {
                    return Err(format!(
                        "output {}{} is inside the storage directory {}; give the output a \
                         directory outside it",
                        path.display(),
                        via(path, &here),
                        storage_path.display()
                    ));
                }
            }
            if seen.contains(&here) {
                return Err(format!(
                    "two outputs write to {}{}; give each its own directory",
                    path.display(),
                    via(path, &here)
                ));
            }
            seen.push(here);
            if output.ssh_config {
                crate::output::check_ssh_config_dir(path)?;
            }
        }
        Ok(())
    }

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

// === Raw YAML shapes ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[allow(dead_code, reason = "its deserializer checks the value")]
    version: Version,
    onboarding: Option<RawOnboarding>,
    storage: Option<RawDestination>,
    outputs: Option<Vec<RawService>>,
    services: Option<Vec<RawService>>,
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
    #[serde(default, deserialize_with = "not_yet::registration_secret")]
    #[allow(dead_code, reason = "its deserializer refuses any value but empty")]
    registration_secret: (),
    #[serde(default, deserialize_with = "not_yet::registration_secret")]
    #[allow(dead_code, reason = "its deserializer refuses any value but empty")]
    registration_secret_path: (),
    #[serde(default, deserialize_with = "not_yet::registration_secret")]
    #[allow(dead_code, reason = "its deserializer refuses any value but empty")]
    initial_join_secret: (),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    #[serde(rename = "type")]
    kind: DestinationType,
    path: Option<PathBuf>,
    symlinks: Option<SymlinksValue>,
    #[serde(default, deserialize_with = "not_yet::acls")]
    #[allow(dead_code, reason = "its deserializer refuses any value but off")]
    acls: (),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "its deserializer refuses every type but identity")]
    kind: ServiceType,
    destination: Option<RawDestination>,
    name: Option<String>,
    ssh_config: Option<OnOff>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default, deserialize_with = "not_yet::cluster")]
    #[allow(dead_code, reason = "its deserializer refuses any value but empty")]
    cluster: (),
    #[serde(default)]
    allow_reissue: bool,
    #[serde(default, deserialize_with = "not_yet::service_lifetime")]
    #[allow(dead_code, reason = "its deserializer refuses any value but empty")]
    credential_ttl: (),
    #[serde(default, deserialize_with = "not_yet::service_lifetime")]
    #[allow(dead_code, reason = "its deserializer refuses any value but empty")]
    renewal_interval: (),
}

impl RawConfig {
    fn check(self) -> Result<Config, String> {
        let cluster = match (self.proxy_server, self.auth_server) {
            (Some(_), Some(_)) => {
                return Err(
                    "proxy_server and auth_server are both set; set only one (proxy_server for a \
                     Teleport Proxy)"
                        .to_owned(),
                );
            }
            (Some(p), None) => Some(ClusterAddr::Proxy(
                HostPort::parse(&p, 443).map_err(|e| format!("proxy_server: {e}"))?,
            )),
            (None, Some(a)) => Some(ClusterAddr::Auth(
                HostPort::parse(&a, 3025).map_err(|e| format!("auth_server: {e}"))?,
            )),
            (None, None) => None,
        };
        let onboarding = self.onboarding.ok_or(
            "onboarding: missing; add `onboarding:` with `join_method: bound_keypair` and `token:`",
        )?;
        if onboarding.join_method.is_none() {
            return Err(
                "onboarding.join_method: missing; keybound joins with `join_method: bound_keypair`"
                    .to_owned(),
            );
        }
        let token = onboarding
            .token
            .filter(|t| !t.trim().is_empty())
            .ok_or("onboarding.token: missing; set it to the bound_keypair join token's name")?;
        let token = token_value(token)?;
        if self.insecure && onboarding.ca_path.is_some() {
            return Err(
                "insecure and onboarding.ca_path are both set; remove one (insecure skips \
                 verification, so a CA bundle would be ignored)"
                    .to_owned(),
            );
        }
        let storage = match self.storage {
            Some(d) => d.check("storage")?,
            None => Destination::Directory {
                path: PathBuf::from(DEFAULT_STORAGE_PATH),
                symlinks: Symlinks::default(),
            },
        };
        // As tbot (`lib/tbot/config/config.go`): the old certificate_ttl counts only when
        // credential_ttl is unset, and a lifetime and an interval come as a pair.
        let ttl = self.credential_ttl.or(self.certificate_ttl).map(|d| d.0);
        let (credential_ttl, renewal_interval) = match (ttl, self.renewal_interval) {
            (Some(ttl), Some(interval)) => (ttl, interval.0),
            (None, None) => (DEFAULT_CREDENTIAL_TTL, DEFAULT_RENEWAL_INTERVAL),
            _ => {
                return Err(
                    "credential_ttl and renewal_interval must both be specified if either is"
                        .to_owned(),
                );
            }
        };
        let mut outputs = Vec::new();
        for (list, raw) in [("outputs", self.outputs), ("services", self.services)] {
            for (i, service) in raw.unwrap_or_default().into_iter().enumerate() {
                let destination = service
                    .destination
                    .ok_or_else(|| format!("{list}[{i}].destination: missing"))?
                    .check(&format!("{list}[{i}].destination"))?;
                if let Some(empty) = service.roles.iter().position(|r| r.trim().is_empty()) {
                    return Err(format!(
                        "{list}[{i}].roles[{empty}]: empty; name a role, or remove `roles` to \
                         impersonate every role the bot may"
                    ));
                }
                outputs.push(IdentityOutput {
                    destination,
                    ssh_config: service.ssh_config.is_none_or(|v| v.0),
                    name: service.name,
                    roles: service.roles,
                    allow_reissue: service.allow_reissue,
                });
            }
        }
        let bound_keypair = onboarding.bound_keypair;
        let onboarding = match bound_keypair {
            None => Onboarding {
                token,
                ca_path: onboarding.ca_path,
                ..Onboarding::default()
            },
            Some(b) => Onboarding {
                token,
                ca_path: onboarding.ca_path,
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
            },
        };
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
        };
        config.check_destinations()?;
        Ok(config)
    }
}

/// tbot reads `onboarding.token` through `utils.TryReadValueAsFile`: an absolute path to a file
/// means the file's trimmed contents.
fn token_value(token: String) -> Result<String, String> {
    if !token.starts_with('/') {
        return Ok(token);
    }
    let text = std::fs::read_to_string(&token)
        .map_err(|e| format!("onboarding.token: cannot read token file {token}: {e}"))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(format!("onboarding.token: token file {token} is empty"));
    }
    Ok(value.to_owned())
}

impl RawDestination {
    fn check(self, at: &str) -> Result<Destination, String> {
        match self.kind {
            DestinationType::Directory => {
                let path = self
                    .path
                    .filter(|p| !p.as_os_str().is_empty())
                    .ok_or_else(|| {
                        format!("{at}.path: missing; a directory destination needs a path")
                    })?;
                Ok(Destination::Directory {
                    path,
                    symlinks: self.symlinks.map(|s| s.0).unwrap_or_default(),
                })
            }
            DestinationType::Memory => {
                if self.path.is_some() || self.symlinks.is_some() {
                    return Err(format!(
                        "{at}: a memory destination takes no path or symlinks"
                    ));
                }
                Ok(Destination::Memory)
            }
        }
    }
}

// === Scalar values with their own checks ===

/// Deserializes a string and checks it with `check`. Raising the error inside the visitor lets
/// serde_yaml attach the value's own path, line and column to it.
fn checked_str<'de, D, T>(d: D, check: fn(&str) -> Result<T, String>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<T>(fn(&str) -> Result<T, String>);
    impl<T> Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V(check))
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

enum DestinationType {
    Directory,
    Memory,
}

impl<'de> Deserialize<'de> for DestinationType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |v| match v {
            "directory" => Ok(Self::Directory),
            "memory" => Ok(Self::Memory),
            "kubernetes_secret" => Err(
                "destination type \"kubernetes_secret\" is not supported by keybound yet; use \
                 directory or memory"
                    .to_owned(),
            ),
            other => Err(format!(
                "unknown destination type {other:?}; use directory or memory"
            )),
        })
    }
}

struct SymlinksValue(Symlinks);

impl<'de> Deserialize<'de> for SymlinksValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |v| match v {
            "secure" => Ok(Self(Symlinks::Secure)),
            "try-secure" | "" => Ok(Self(Symlinks::TrySecure)),
            "insecure" => Ok(Self(Symlinks::Insecure)),
            other => Err(format!(
                "unknown symlinks policy {other:?}; use secure, try-secure or insecure"
            )),
        })
    }
}

/// tbot's service types (`lib/tbot/config`): keybound writes `identity` only.
struct ServiceType;

const TBOT_SERVICE_TYPES: &[&str] = &[
    "application",
    "application-tunnel",
    "database",
    "database-tunnel",
    "kubernetes",
    "kubernetes/v2",
    "kubernetes/argo-cd",
    "ssh_host",
    "ssh-multiplexer",
    "spiffe-svid",
    "spiffe-workload-api",
    "workload-identity-x509",
    "workload-identity-jwt",
    "workload-identity-api",
    "workload-identity-aws-roles-anywhere",
    "application-proxy",
    "example",
];

impl<'de> Deserialize<'de> for ServiceType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |v| {
            if v == "identity" {
                Ok(Self)
            } else if TBOT_SERVICE_TYPES.contains(&v) {
                Err(format!(
                    "tbot service type {v:?} is not supported by keybound yet; keybound writes \
                     `type: identity` outputs"
                ))
            } else {
                Err(format!(
                    "unknown service type {v:?}; keybound writes `type: identity` outputs"
                ))
            }
        })
    }
}

/// tbot's `ssh_config: on|off` (YAML 1.1 booleans, as Go's yaml reads them, or the words).
struct OnOff(bool);

impl<'de> Deserialize<'de> for OnOff {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = OnOff;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("on or off")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<OnOff, E> {
                Ok(OnOff(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OnOff, E> {
                match v {
                    "on" | "true" | "yes" => Ok(OnOff(true)),
                    "off" | "false" | "no" => Ok(OnOff(false)),
                    _ => Err(E::custom(format!("{v:?} is not on or off"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A Go-style duration (`1h`, `20m`, `1h30m`, `90s`); must be positive.
struct GoDuration(Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, Self::from_str)
    }
}

impl FromStr for GoDuration {
    type Err = String;

    fn from_str(v: &str) -> Result<Self, String> {
        match humantime::parse_duration(v.trim()) {
            Ok(d) if !d.is_zero() => Ok(Self(d)),
            Ok(_) => Err(format!("duration {v:?} must be positive")),
            Err(_) => Err(format!(
                "{v:?} is not a duration; write it like 1h, 20m, 1h30m or 90s"
            )),
        }
    }
}

/// Parses a Go-style duration, as the command line takes them.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    GoDuration::from_str(v).map(|d| d.0)
}

/// tbot keys keybound does not implement yet. Each accepts its "off" value (false, null, empty)
/// and refuses anything else with a message saying so; going through a visitor makes serde_yaml
/// report the key's own path, line and column.
mod not_yet {
    use super::*;

    struct Refuse(&'static str);

    impl<'de> Visitor<'de> for Refuse {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_none<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
            if v { Err(E::custom(self.0)) } else { Ok(()) }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
            if v.is_empty() || v == "off" {
                Ok(())
            } else {
                Err(E::custom(self.0))
            }
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            Err(E::custom(self.0))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            Err(E::custom(self.0))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            Err(E::custom(self.0))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            match seq.next_element::<IgnoredAny>()? {
                None => Ok(()),
                Some(_) => Err(de::Error::custom(self.0)),
            }
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            match map.next_key::<IgnoredAny>()? {
                None => Ok(()),
                Some(_) => Err(de::Error::custom(self.0)),
            }
        }
    }

    fn refuse<'de, D: Deserializer<'de>>(d: D, message: &'static str) -> Result<(), D::Error> {
        d.deserialize_any(Refuse(message))
    }

    pub(super) fn fips<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        refuse(
            d,
            "FIPS mode is not supported by keybound yet; remove `fips: true`",
        )
    }
    pub(super) fn ca_pins<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        refuse(
            d,
            "CA pins are not supported by keybound yet; join through proxy_server, or give the \
             cluster's CA bundle with onboarding.ca_path",
        )
    }
    pub(super) fn registration_secret<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        refuse(
            d,
            "registration secrets are not supported: keybound joins with a static key \
             (static_private_key_path or $TBOT_BOUND_KEYPAIR_STATIC_KEY) registered as the \
             token's initial_public_key",
        )
    }
    pub(super) fn acls<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        refuse(
            d,
            "POSIX ACLs on destinations are not supported by keybound yet; remove `acls`",
        )
    }
    pub(super) fn cluster<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        refuse(
            d,
            "routing an output to another cluster is not supported by keybound yet",
        )
    }
    pub(super) fn service_lifetime<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        refuse(
            d,
            "per-output credential_ttl and renewal_interval are not supported by keybound yet; \
             set them at the top level",
        )
    }
}

/// Every key the loader reads, as dotted paths (`onboarding.bound_keypair.signer`,
/// `services.destination.path`; a list's items are entered without an index), in the order the
/// YAML structs declare them. Read from the structs themselves (their serde field lists), so it is
/// the one source of truth: `docs/config.md` is tested against it. Keys that are refused by name
/// (`fips`, `ca_pins`, ...) are included, since the loader knows them.
pub fn keys() -> Vec<String> {
    let mut keys = Vec::new();
    let mut pending: Vec<Vec<&'static str>> = vec![Vec::new()];
    while let Some(path) = pending.pop() {
        let found = std::cell::Cell::new(None);
        let _ = RawConfig::deserialize(probe::Probe {
            path: &path,
            found: &found,
        });
        for field in found.get().unwrap_or_default().iter().rev() {
            let mut child = path.clone();
            child.push(field);
            pending.push(child);
        }
        if !path.is_empty() {
            keys.push(path.join("."));
        }
    }
    keys
}

/// A deserializer that feeds a YAML struct nothing but the way to one key, and records the
/// field names of the struct found there: serde hands them to `deserialize_struct`.
mod probe {
    use std::cell::Cell;

    use serde::de::value::{BorrowedStrDeserializer, Error};
    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    pub(super) struct Probe<'a> {
        /// The keys still to walk down.
        pub(super) path: &'a [&'static str],
        /// The fields of the struct at the end of the path; left `None` for a scalar.
        pub(super) found: &'a Cell<Option<&'static [&'static str]>>,
    }

    fn stop() -> Error {
        de::Error::custom("probe finished")
    }

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(stop())
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            match self.path.split_first() {
                None => {
                    self.found.set(Some(fields));
                    Err(stop())
                }
                Some((key, rest)) => visitor.visit_map(Step {
                    key: Some(key),
                    value: Probe {
                        path: rest,
                        found: self.found,
                    },
                }),
            }
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_some(self)
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_seq(Item(Some(self)))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            unit unit_struct tuple tuple_struct map enum identifier ignored_any
        }
    }

    /// A map of one entry: the next key, and the probe for its value.
    struct Step<'a> {
        key: Option<&'static str>,
        value: Probe<'a>,
    }

    impl<'de> MapAccess<'de> for Step<'_> {
        type Error = Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Error> {
            self.key
                .take()
                .map(|key| seed.deserialize(BorrowedStrDeserializer::new(key)))
                .transpose()
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
            seed.deserialize(Probe {
                path: self.value.path,
                found: self.value.found,
            })
        }
    }

    /// A list of one item, probed like the list itself.
    struct Item<'a>(Option<Probe<'a>>);

    impl<'de> SeqAccess<'de> for Item<'_> {
        type Error = Error;

        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, Error> {
            self.0
                .take()
                .map(|probe| seed.deserialize(probe))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        let hp = |s| HostPort::parse(s, 443);
        assert_eq!(
            hp("example.com:3080").unwrap().to_string(),
            "example.com:3080"
        );
        assert_eq!(hp("example.com").unwrap().port(), 443);
        assert_eq!(hp("[::1]:8443").unwrap().host(), "::1");
        assert_eq!(hp("[::1]").unwrap().to_string(), "[::1]:443");
        assert!(hp("https://example.com").unwrap_err().contains("no scheme"));
        assert!(hp("example.com:0").is_err());
        assert!(hp("example.com:99999").is_err());
        assert!(hp("::1:443").is_err());
        assert!(hp(":443").is_err());
        // A host that ssh_config or known_hosts would read as syntax is refused, escaped.
        let error = hp("evil\nMatch exec \"touch x\":443").unwrap_err();
        assert!(
            error.starts_with(r#""evil\nMatch exec \"touch x\":443" is not"#),
            "{error}"
        );
        assert!(hp("a b:443").is_err());
        assert!(hp("*.example.com").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").unwrap_err().contains("positive"));
        assert!(parse_duration("10").unwrap_err().contains("like 1h"));
    }

    #[test]
    fn keys_come_from_the_yaml_structs() {
        let keys = keys();
        for key in [
            "version",
            "proxy_server",
            "onboarding.token",
            "onboarding.bound_keypair.static_private_key_path",
            "onboarding.bound_keypair.tpm_parent",
            "onboarding.ca_pins",
            "storage.type",
            "storage.symlinks",
            "services.destination.path",
            "outputs.roles",
            "fips",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
        // Scalars and lists of scalars have no keys below them.
        assert!(
            !keys
                .iter()
                .any(|k| k.starts_with("version.") || k.starts_with("outputs.roles."))
        );
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), keys.len(), "{keys:?}");
    }
}
