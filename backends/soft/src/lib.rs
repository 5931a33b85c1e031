#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod parse;

use std::fmt;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use keybound_signer::config::{EnvConfig, FileConfig};
use keybound_signer::{Algorithm, Error, ErrorKind, PublicKey, Signature, Signer};
use p256::pkcs8::LineEnding;
use rand_core::OsRng;
use zeroize::Zeroizing;

/// A key file larger than this is not a key; refusing it early bounds what we read.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Values a program took out of its environment before any thread started ([`keep_env_value`]),
/// by variable name.
static TAKEN: Mutex<Vec<(String, Zeroizing<String>)>> = Mutex::new(Vec::new());

/// Hands over the value of the environment variable `name`, which the program has removed from
/// its environment (so that no thread or child process sees it); [`SoftSigner::open_env`] reads
/// `name` from here first. The value is zeroized when the process ends or it is replaced.
pub fn keep_env_value(name: &str, value: Zeroizing<String>) {
    let mut taken = TAKEN.lock().expect("environment value lock poisoned");
    taken.retain(|(n, _)| n != name);
    taken.push((name.to_owned(), value));
}

/// Whether `name` holds a value (handed over by [`keep_env_value`], or still in the
/// environment), without reading it out.
pub fn env_value_present(name: &str) -> bool {
    env_value(name).is_some()
}

/// The value of `name`: handed over by [`keep_env_value`], or still in the environment.
fn env_value(name: &str) -> Option<Result<Zeroizing<String>, ()>> {
    let taken = TAKEN.lock().expect("environment value lock poisoned");
    if let Some((_, value)) = taken.iter().find(|(n, _)| n == name) {
        return Some(Ok(value.clone()));
    }
    drop(taken);
    std::env::var_os(name).map(|v| v.into_string().map(Zeroizing::new).map_err(|_| ()))
}

/// A software key: Ed25519 or ECDSA P-256 held in process memory, zeroized on drop.
pub struct SoftSigner {
    key: SoftKey,
    public: PublicKey,
    source: Source,
}

/// Both key types zeroize themselves on drop (`ed25519-dalek`'s `zeroize` feature, and
/// `elliptic-curve`'s `NonZeroScalar`).
enum SoftKey {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

/// Where a key came from, for `Debug`, errors and the agent's summary.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Source {
    /// Read from a PEM file.
    File(PathBuf),
    /// Read from an environment variable.
    Env(String),
    /// Made by [`SoftSigner::generate`].
    Generated,
}

impl SoftSigner {
    /// Opens a PEM key file. The file must be a regular file that group and others cannot read.
    pub fn open_file(config: &FileConfig) -> Result<Self, Error> {
        let path = &config.path;
        let pem = read_key_file(path)?;
        Self::from_pem(&pem, Source::File(path.clone()))
    }

    /// Opens a key from the environment variable `config.variable`.
    pub fn open_env(config: &EnvConfig) -> Result<Self, Error> {
        let name = &config.variable;
        let Some(value) = env_value(name) else {
            return Err(Error::new(
                ErrorKind::KeyNotFound,
                "env",
                format!(
                    "no static key: ${name} is not set and no static_private_key_path is \
                     configured; export ${name} with the value `keybound keypair create --static` \
                     printed, or set onboarding.bound_keypair.static_private_key_path"
                ),
            ));
        };
        let value = value.map_err(|()| {
            Error::new(
                ErrorKind::Config,
                "env",
                format!("${name} is not valid UTF-8; it must hold base64 text"),
            )
        })?;
        Self::from_env_value(name, &value)
    }

    /// Decodes the value of the environment variable `name`: standard padded base64 of the whole
    /// PEM file, ASCII whitespace ignored (Go's decoder skips newlines; we skip all whitespace).
    pub fn from_env_value(name: &str, value: &str) -> Result<Self, Error> {
        let compact: Zeroizing<Vec<u8>> =
            Zeroizing::new(value.bytes().filter(|b| !b.is_ascii_whitespace()).collect());
        if compact.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "env",
                format!(
                    "${name} is empty; set it to the base64 value `keybound keypair create \
                     --static` printed"
                ),
            ));
        }
        let pem = Zeroizing::new(STANDARD.decode(&*compact).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                "env",
                format!(
                    "${name} is not valid base64 ({}); it must hold the standard base64 of the \
                     whole PEM key file, as `keybound keypair create --static` prints it",
                    base64_problem(&e)
                ),
            )
        })?);
        Self::from_pem(&pem, Source::Env(name.to_owned()))
    }

    /// Parses a PEM private key; `source` names it in errors.
    pub fn from_pem(pem: &[u8], source: Source) -> Result<Self, Error> {
        let key = parse::private_key(pem).map_err(|message| {
            Error::new(
                ErrorKind::InvalidKey,
                source.backend(),
                format!("{}: {message}", source.describe()),
            )
        })?;
        Ok(Self::new(key, source))
    }

    /// Makes a new random key of `algorithm` from the operating system's CSPRNG.
    pub fn generate(algorithm: Algorithm) -> Result<Self, Error> {
        let key = match algorithm {
            Algorithm::Ed25519 => SoftKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng)),
            Algorithm::EcdsaP256Sha256 => {
                SoftKey::P256(p256::ecdsa::SigningKey::random(&mut OsRng))
            }
            other => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "soft",
                    format!("cannot generate {other} keys"),
                ));
            }
        };
        Ok(Self::new(key, Source::Generated))
    }

    fn new(key: SoftKey, source: Source) -> Self {
        let public = match &key {
            SoftKey::Ed25519(k) => PublicKey::from_ed25519(&k.verifying_key()),
            SoftKey::P256(k) => PublicKey::from_p256(&k.verifying_key().into()),
        };
        Self {
            key,
            public,
            source,
        }
    }

    /// Where the key came from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The private key as tbot writes it (`keys.MarshalPrivateKey`): PEM `PRIVATE KEY` holding
    /// PKCS#8 v1 DER, with a final newline. Ed25519 keys carry no public key, byte for byte what
    /// Go's `x509.MarshalPKCS8PrivateKey` and `openssl genpkey` write.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let pem = match &self.key {
            SoftKey::Ed25519(k) => {
                let bytes = ed25519_dalek::pkcs8::KeypairBytes {
                    secret_key: k.to_bytes(),
                    public_key: None,
                };
                let pem = bytes.to_pkcs8_pem(LineEnding::LF);
                // `KeypairBytes` holds a copy of the secret; it zeroizes on drop.
                drop(bytes);
                pem
            }
            SoftKey::P256(k) => p256::SecretKey::from(k).to_pkcs8_pem(LineEnding::LF),
        };
        pem.expect("encoding an in-memory key as PKCS#8 cannot fail")
    }

    /// The value for `TBOT_BOUND_KEYPAIR_STATIC_KEY`: standard padded base64 of
    /// [`to_pkcs8_pem`](Self::to_pkcs8_pem).
    pub fn to_env_value(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.to_pkcs8_pem().as_bytes()))
    }
}

impl Signer for SoftSigner {
    fn backend(&self) -> &'static str {
        self.source.backend()
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Signature, Error> {
        let (algorithm, bytes) = match &self.key {
            SoftKey::Ed25519(k) => (Algorithm::Ed25519, k.sign(message).to_bytes().to_vec()),
            SoftKey::P256(k) => {
                // RFC 6979 deterministic ECDSA over SHA-256; `to_bytes` is the fixed-width r‖s.
                let signature: p256::ecdsa::Signature = k.sign(message);
                (Algorithm::EcdsaP256Sha256, signature.to_bytes().to_vec())
            }
        };
        Signature::new(algorithm, bytes)
    }
}

impl fmt::Debug for SoftSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftSigner")
            .field("algorithm", &self.public.algorithm())
            .field("fingerprint", &self.public.fingerprint())
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Source {
    fn backend(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Env(_) => "env",
            Self::Generated => "soft",
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::File(path) => format!("key file {}", path.display()),
            Self::Env(name) => format!("${name}"),
            Self::Generated => "generated key".to_owned(),
        }
    }
}

/// What is wrong with a base64 value, without the offending byte: base64's own message quotes it,
/// and it is a byte of a secret.
fn base64_problem(error: &base64::DecodeError) -> String {
    use base64::DecodeError as E;
    match error {
        E::InvalidByte(offset, _) => format!("a character that is not base64 at offset {offset}"),
        E::InvalidLength(length) => format!("{length} base64 characters, a length no value has"),
        E::InvalidLastSymbol(offset, _) => format!("a bad last character at offset {offset}"),
        E::InvalidPadding => "bad padding".to_owned(),
    }
}

fn file_error(kind: ErrorKind, path: &Path, what: impl fmt::Display) -> Error {
    Error::new(kind, "file", format!("key file {}: {what}", path.display()))
}

/// Reads a key file after checking it is a small regular file that only its owner can read (a
/// public key given by mistake is named as such, whatever its mode).
fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut file = File::open(path).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::KeyNotFound
        } else {
            ErrorKind::Config
        };
        file_error(
            kind,
            path,
            format!("cannot open: {e}; check static_private_key_path"),
        )
    })?;
    let meta = file
        .metadata()
        .map_err(|e| file_error(ErrorKind::Config, path, format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(file_error(ErrorKind::Config, path, "is not a regular file"));
    }
    if meta.len() == 0 {
        return Err(file_error(
            ErrorKind::InvalidKey,
            path,
            "is empty; write the PEM key `keybound keypair create --static --static-key-path` \
             makes",
        ));
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(file_error(
            ErrorKind::InvalidKey,
            path,
            format!("is {} bytes, too large to be a PEM private key", meta.len()),
        ));
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    file.read_to_end(&mut bytes)
        .map_err(|e| file_error(ErrorKind::Config, path, format!("cannot read: {e}")))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        // A public key (`KEY.pub` is 0644) given by mistake: say so, rather than ask for the
        // permissions of a file that must not be used at all.
        if let Some(what) = std::str::from_utf8(&bytes).ok().and_then(parse::public_key) {
            return Err(file_error(ErrorKind::InvalidKey, path, what));
        }
        return Err(file_error(
            ErrorKind::Config,
            path,
            format!(
                "permissions {mode:04o} are too open: a private key must not be accessible by \
                 group or others; fix with `chmod 600 {}`",
                path.display()
            ),
        ));
    }
    Ok(bytes)
}
