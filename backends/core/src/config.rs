//! Where each backend finds its key. These are plain data: the agent builds them from tbot's YAML
//! and the command line, and each backend's `open` takes its own.

use std::fmt;
use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::PinSource;

/// The environment variable tbot reads a static key from
/// (`onboarding.BoundKeypairStaticKeyEnv`, `lib/tbot/bot/onboarding/config.go`).
pub const STATIC_KEY_ENV: &str = "TBOT_BOUND_KEYPAIR_STATIC_KEY";

/// A static key in a PEM file (`onboarding.bound_keypair.static_private_key_path`).
#[non_exhaustive]
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct FileConfig {
    /// The PEM file. It must not be readable by group or others.
    pub path: PathBuf,
}

impl FileConfig {
    /// A file key at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

/// A static key in an environment variable: standard, padded base64 of the whole PEM file.
#[non_exhaustive]
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct EnvConfig {
    /// The variable's name; tbot's is [`STATIC_KEY_ENV`].
    pub variable: String,
}

impl EnvConfig {
    /// A key in the variable `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            variable: name.into(),
        }
    }
}

impl Default for EnvConfig {
    fn default() -> Self {
        Self::new(STATIC_KEY_ENV)
    }
}

/// A PKCS#11 URI as the user gave it (`--pkcs11-uri`, `pkcs11_uri`). It may carry the PIN in
/// `pin-value`, so it is zeroed when dropped, and `Debug` shows it [`redacted`](Self::redacted).
/// It derefs to the text, for parsing.
#[derive(Clone, Default, Eq, PartialEq)]
pub struct Pkcs11UriText(Zeroizing<String>);

impl Pkcs11UriText {
    /// The URI with the value of any `pin-value` attribute (path or query, whatever its case or
    /// percent-encoding) replaced by `(hidden)`: fit for messages and summaries.
    pub fn redacted(&self) -> String {
        let (head, query) = match self.0.split_once('?') {
            Some((head, query)) => (head, Some(query)),
            None => (self.0.as_str(), None),
        };
        let hide = |part: &str, separator: char| -> String {
            part.split(separator)
                .map(|attr| match attr.split_once('=') {
                    Some((name, _)) if is_pin_value(name) => format!("{name}=(hidden)"),
                    _ => attr.to_owned(),
                })
                .collect::<Vec<_>>()
                .join(&separator.to_string())
        };
        match query {
            Some(query) => format!("{}?{}", hide(head, ';'), hide(query, '&')),
            None => hide(head, ';'),
        }
    }
}

/// Whether an attribute name is `pin-value`, in any case, `-` percent-encoded or not.
fn is_pin_value(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "pin-value" || name == "pin%2dvalue"
}

impl std::ops::Deref for Pkcs11UriText {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Pkcs11UriText {
    fn from(text: String) -> Self {
        Self(Zeroizing::new(text))
    }
}

impl From<&str> for Pkcs11UriText {
    fn from(text: &str) -> Self {
        Self::from(text.to_owned())
    }
}

impl fmt::Debug for Pkcs11UriText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// A key in a PKCS#11 token (an HSM, a smart card, SoftHSM).
#[non_exhaustive]
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Pkcs11Config {
    /// An RFC 7512 URI naming the token and the key (`pkcs11:token=...;object=...`).
    pub uri: Pkcs11UriText,
    /// The module to load; wins over the URI's `module-path`.
    pub module: Option<PathBuf>,
    /// Where the user PIN comes from; wins over the URI's `pin-source` and `pin-value`.
    pub pin: Option<PinSource>,
    /// Refuse a key the token could export or did not generate (not `CKA_LOCAL`).
    pub require_hardware_key: bool,
}

impl Pkcs11Config {
    /// A key named by `uri`.
    pub fn new(uri: impl Into<Pkcs11UriText>) -> Self {
        Self {
            uri: uri.into(),
            module: None,
            pin: None,
            require_hardware_key: false,
        }
    }
}

/// Where a TPM key is kept.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum TpmKey {
    /// A persistent handle (`0x81xxxxxx`).
    Handle(u32),
    /// A `TSS2 PRIVATE KEY` PEM file (the format tpm2-openssl and tpm2-tss-engine use).
    File(PathBuf),
}

/// A key in a TPM 2.0.
#[non_exhaustive]
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TpmConfig {
    /// The TCTI (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, ...); `None` reads
    /// `TPM2TOOLS_TCTI`, then `TCTI`, then uses `device:/dev/tpmrm0`.
    pub tcti: Option<String>,
    /// The key.
    pub key: TpmKey,
    /// A persistent parent for a key file, instead of the standard ECC P-256 storage primary.
    pub parent: Option<u32>,
    /// Where the key's authorization value comes from, if it has one.
    pub auth: Option<PinSource>,
    /// Refuse a key the TPM did not generate or may let out (not fixedTPM, fixedParent and
    /// sensitiveDataOrigin).
    pub require_hardware_key: bool,
}

impl TpmConfig {
    /// A key kept as `key`.
    pub fn new(key: TpmKey) -> Self {
        Self {
            tcti: None,
            key,
            parent: None,
            auth: None,
            require_hardware_key: false,
        }
    }
}

/// Which backend holds the key, with its settings.
#[non_exhaustive]
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum SignerConfig {
    /// A base64 PEM in an environment variable.
    Env(EnvConfig),
    /// A PEM file.
    File(FileConfig),
    /// A PKCS#11 token.
    Pkcs11(Pkcs11Config),
    /// A TPM 2.0.
    Tpm(TpmConfig),
}

impl SignerConfig {
    /// The backend's short name, as [`Signer::backend`](crate::Signer::backend) reports it.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Env(_) => "env",
            Self::File(_) => "file",
            Self::Pkcs11(_) => "pkcs11",
            Self::Tpm(_) => "tpm",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_in_a_pkcs11_uri_is_never_shown() {
        let shown = |uri: &str| Pkcs11UriText::from(uri).redacted();
        assert_eq!(
            shown("pkcs11:token=t;object=k?pin-value=1234&module-path=/m.so"),
            "pkcs11:token=t;object=k?pin-value=(hidden)&module-path=/m.so"
        );
        assert_eq!(
            shown("pkcs11:token=t;pin-value=1234;object=k"),
            "pkcs11:token=t;pin-value=(hidden);object=k"
        );
        assert_eq!(
            shown("pkcs11:token=t?PIN%2dValue=1234"),
            "pkcs11:token=t?PIN%2dValue=(hidden)"
        );
        assert_eq!(shown("pkcs11:token=t;object=k"), "pkcs11:token=t;object=k");
        let config = Pkcs11Config::new("pkcs11:token=t?pin-value=Secret-4711");
        assert!(!format!("{config:?}").contains("Secret-4711"), "{config:?}");
        assert_eq!(&*config.uri, "pkcs11:token=t?pin-value=Secret-4711");
    }
}
