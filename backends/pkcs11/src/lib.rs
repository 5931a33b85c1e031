#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod key;
#[cfg(feature = "testing")]
pub mod testing;
mod uri;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keybound_signer::config::Pkcs11Config;
use keybound_signer::{
    Algorithm, Error, ErrorKind, PinSource, Protection, PublicKey, Signature, Signer,
};
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

pub use uri::Pkcs11Uri;

const BACKEND: &str = "pkcs11";
/// Attempts for a signature when the session or the token goes away underneath it.
const SIGN_ATTEMPTS: u32 = 3;
/// The first back-off; it doubles for each further attempt.
const BACKOFF: Duration = Duration::from_millis(50);

fn err(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, BACKEND, message)
}

/// What to make of a PKCS#11 error.
fn kind_of(e: &CkError) -> ErrorKind {
    match e {
        CkError::Pkcs11(rv, _) => match rv {
            RvError::PinIncorrect
            | RvError::PinLocked
            | RvError::PinExpired
            | RvError::PinInvalid
            | RvError::PinLenRange => ErrorKind::Auth,
            RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::ObjectHandleInvalid
            | RvError::KeyHandleInvalid
            | RvError::SessionCount
            | RvError::CryptokiNotInitialized => ErrorKind::Unavailable,
            RvError::MechanismInvalid
            | RvError::KeyTypeInconsistent
            | RvError::KeyFunctionNotPermitted => ErrorKind::Unsupported,
            _ => ErrorKind::Sign,
        },
        _ => ErrorKind::Sign,
    }
}

// === Modules ===

/// Loaded modules, one per path: `C_Initialize` runs once per process (SoftHSM refuses a second
/// one, and reads `SOFTHSM2_CONF` only then).
fn modules() -> &'static Mutex<HashMap<PathBuf, Pkcs11>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    MODULES.get_or_init(Default::default)
}

/// Loads and initialises the module at `path`, or returns the one already loaded.
pub fn load_module(path: &Path) -> Result<Pkcs11, Error> {
    let mut loaded = modules().lock().expect("module registry lock poisoned");
    if let Some(ctx) = loaded.get(path) {
        return Ok(ctx.clone());
    }
    if !path.exists() {
        return Err(err(
            ErrorKind::Config,
            format!(
                "PKCS#11 module {} does not exist; install it (SoftHSM: apt-get install softhsm2) or fix --pkcs11-module",
                path.display()
            ),
        ));
    }
    let ctx = Pkcs11::new(path).map_err(|e| {
        err(
            ErrorKind::Config,
            format!(
                "cannot load PKCS#11 module {}: is it a PKCS#11 library for this machine?",
                path.display()
            ),
        )
        .with_source(e)
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            if is_softhsm(path) {
                let conf = std::env::var_os(SOFTHSM2_CONF).map(PathBuf::from);
                let home = std::env::var_os("HOME").map(PathBuf::from);
                let module = path.display();
                // The diagnosis replaces SoftHSM's own words, which say nothing more.
                return Err(match softhsm_config_problem(conf, home) {
                    Ok(problem) => err(
                        ErrorKind::Config,
                        format!("SoftHSM ({module}) failed to initialise: {problem}"),
                    ),
                    Err(looked_at) => err(
                        ErrorKind::Unavailable,
                        format!(
                            "SoftHSM ({module}) failed to initialise: {looked_at}; SoftHSM logs \
                             its reason to syslog"
                        ),
                    )
                    .with_source(e),
                });
            }
            return Err(err(
                ErrorKind::Unavailable,
                format!("PKCS#11 module {} failed to initialise", path.display()),
            )
            .with_source(e));
        }
    }
    loaded.insert(path.to_owned(), ctx.clone());
    Ok(ctx)
}

/// The variable SoftHSM reads its configuration file's path from.
const SOFTHSM2_CONF: &str = "SOFTHSM2_CONF";

/// Whether the module at `path` is SoftHSM (by its file name: `libsofthsm2.so`, or a link to it).
fn is_softhsm(path: &Path) -> bool {
    let named = |p: &Path| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().contains("softhsm"))
    };
    named(path) || std::fs::canonicalize(path).is_ok_and(|p| named(&p))
}

/// What is wrong with SoftHSM's configuration, found the way SoftHSM 2.6 finds it: the file
/// `$SOFTHSM2_CONF` names, else `~/.config/softhsm2/softhsm2.conf` when readable, else
/// `/etc/softhsm/softhsm2.conf`; then its `directories.tokendir` (default
/// `/var/lib/softhsm/tokens`). SoftHSM itself only answers `CKR_GENERAL_ERROR` ("Some horrible,
/// unrecoverable error") and logs the reason to syslog. `Err` says what was looked at when
/// nothing wrong was found there.
fn softhsm_config_problem(conf: Option<PathBuf>, home: Option<PathBuf>) -> Result<String, String> {
    let fix = "point SOFTHSM2_CONF at a softhsm2.conf whose directories.tokendir is a directory this \
               user can write (softhsm-fixtures/init-token.sh makes both; docs/softhsm.md)";
    let (file, named_by) = match conf {
        Some(file) => (file, "named by $SOFTHSM2_CONF".to_owned()),
        None => {
            let user = home
                .filter(|h| !h.as_os_str().is_empty())
                .map(|h| h.join(".config/softhsm2/softhsm2.conf"))
                .filter(|p| std::fs::File::open(p).is_ok());
            match user {
                Some(file) => (file, "SOFTHSM2_CONF is not set".to_owned()),
                None => (
                    PathBuf::from("/etc/softhsm/softhsm2.conf"),
                    "SoftHSM's default: SOFTHSM2_CONF is not set".to_owned(),
                ),
            }
        }
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) => {
            return Ok(format!(
                "cannot read its configuration file {} ({named_by}): {e}; {fix}",
                file.display()
            ));
        }
    };
    // `name = value` lines; `#` starts a comment. The last tokendir line wins, as in SoftHSM.
    let configured = text
        .lines()
        .filter_map(|line| line.split('#').next()?.split_once('='))
        .filter(|(name, _)| name.trim() == "directories.tokendir")
        .map(|(_, value)| value.trim().to_owned())
        .next_back();
    let (dir, names) = match configured {
        Some(dir) => (
            PathBuf::from(&dir),
            format!("names the token directory {dir}"),
        ),
        None => (
            PathBuf::from("/var/lib/softhsm/tokens"),
            "sets no directories.tokendir, so the token directory is /var/lib/softhsm/tokens"
                .to_owned(),
        ),
    };
    let problem = match std::fs::read_dir(&dir) {
        Ok(_) => {
            return Err(format!(
                "its configuration file {} ({named_by}) {names}, which is readable",
                file.display()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "which does not exist".to_owned(),
        Err(e) => format!("which this user cannot read ({e})"),
    };
    Ok(format!(
        "its configuration file {} ({named_by}) {names}, {problem}; {fix}",
        file.display()
    ))
}

/// The token the URI names. Tokens are matched by label, serial, manufacturer and model, never by
/// slot number.
fn find_token(
    ctx: &Pkcs11,
    uri: &Pkcs11Uri,
    module: &Path,
) -> Result<(Slot, String, String), Error> {
    let slots = ctx.get_slots_with_token().map_err(|e| {
        err(
            ErrorKind::Unavailable,
            format!("listing the tokens of {}", module.display()),
        )
        .with_source(e)
    })?;
    let mut matches = Vec::new();
    let mut present = Vec::new();
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            continue;
        }
        let (label, serial) = (
            info.label().trim().to_owned(),
            info.serial_number().trim().to_owned(),
        );
        present.push(Pkcs11Uri::for_key(&label, &serial, None, &[]).to_string());
        if uri.matches_token(&label, &serial, info.manufacturer_id(), info.model()) {
            matches.push((slot, label, serial));
        }
    }
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => Err(err(
            ErrorKind::KeyNotFound,
            format!(
                "no token matches {uri} in {}; tokens present: {}",
                module.display(),
                if present.is_empty() {
                    "none".to_owned()
                } else {
                    present.join(", ")
                }
            ),
        )),
        _ => Err(err(
            ErrorKind::Config,
            format!(
                "{uri} matches {} tokens ({}); add token=LABEL or serial=... to pick one",
                matches.len(),
                matches
                    .iter()
                    .map(|(_, l, s)| Pkcs11Uri::for_key(l, s, None, &[]).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Refuses to log in when the token says the next wrong PIN would lock it, or it is locked.
fn check_pin_state(ctx: &Pkcs11, slot: Slot, token: &str) -> Result<(), Error> {
    let info = ctx.get_token_info(slot).map_err(|e| {
        err(ErrorKind::Unavailable, format!("reading token {token:?}")).with_source(e)
    })?;
    pin_policy(
        info.user_pin_locked(),
        info.user_pin_final_try(),
        info.user_pin_count_low(),
        token,
    )
}

/// The PIN policy as a pure function over the token's flags (`CKF_USER_PIN_LOCKED`,
/// `CKF_USER_PIN_FINAL_TRY`, `CKF_USER_PIN_COUNT_LOW`): the seam tests use, since SoftHSM never
/// sets these flags.
pub fn pin_policy(
    locked: bool,
    final_try: bool,
    count_low: bool,
    token: &str,
) -> Result<(), Error> {
    if locked {
        return Err(err(
            ErrorKind::Auth,
            format!(
                "the user PIN of token {token:?} is locked; unlock it with the security officer PIN before keybound can sign"
            ),
        ));
    }
    if final_try {
        return Err(err(
            ErrorKind::Auth,
            format!(
                "token {token:?} has one PIN try left; keybound will not risk locking it: log in once with the \
                 token's own tool and the right PIN to reset the counter"
            ),
        ));
    }
    if count_low {
        warn!(
            token,
            "the token reports that a wrong PIN has been entered recently"
        );
    }
    Ok(())
}

/// The name under which the refused-PIN memory ([`keybound_signer::refused`]) keeps a token's
/// PINs: the module, the token's label and its serial.
fn device_key(module: &Path, token: &str, serial: &str) -> String {
    format!(
        "pkcs11 {} token {token:?} serial {serial:?}",
        module.display()
    )
}

/// Logs `session` in with the PIN that `source` gives now: read afresh each time, so a fixed
/// source takes effect at the next open (SIGHUP) or reopen. A PIN this token refused before, in
/// this process, is not presented again; a PIN it refuses now is remembered. The token's own
/// PIN flags are checked first ([`pin_policy`]).
fn log_in(
    ctx: &Pkcs11,
    slot: Slot,
    session: &Session,
    source: Option<&PinSource>,
    (module, token, serial): (&Path, &str, &str),
) -> Result<(), Error> {
    let Some(source) = source else { return Ok(()) };
    let Some(pin) = source.read_for(BACKEND, &device_key(module, token, serial))? else {
        return Err(err(
            ErrorKind::Auth,
            source.refused_before(
                "the PIN",
                &format!("token {token:?}"),
                "real tokens lock after a few wrong PINs",
            ),
        ));
    };
    check_pin_state(ctx, slot, token)?;
    let mut exact = String::with_capacity(pin.value.len());
    exact.push_str(&pin.value);
    match session.login(UserType::User, Some(&AuthPin::from(exact))) {
        // Login is per application and token: another session already logged in.
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(
            RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange,
            _,
        )) => {
            pin.fingerprint.remember_refused();
            Err(err(
                ErrorKind::Auth,
                format!(
                    "token {token:?} refused the PIN; keybound does not retry a wrong PIN (real tokens lock): \
                     fix the PIN source: {}",
                    source.how_to_replace()
                ),
            ))
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(err(
            ErrorKind::Auth,
            format!("the user PIN of token {token:?} is locked"),
        )),
        Err(e) => Err(err(kind_of(&e), format!("logging in to token {token:?}")).with_source(e)),
    }
}

/// Where the user PIN comes from: the configuration's source, else the URI's `pin-source`,
/// else its `pin-value` (with a warning). Nothing is read here.
fn pin_source(config: &Pkcs11Config, uri: &Pkcs11Uri) -> Result<Option<PinSource>, Error> {
    Ok(match (&config.pin, &uri.pin_source, &uri.pin_value) {
        (Some(source), _, _) => Some(source.clone()),
        (None, Some(source), _) => Some(
            PinSource::parse(source)
                .map_err(|e| err(ErrorKind::Config, format!("pin-source: {e}")))?,
        ),
        (None, None, Some(value)) => {
            warn!(
                "the PKCS#11 URI carries pin-value: the PIN shows in process listings and shell history; use pin-source=env:VAR or file:PATH"
            );
            Some(PinSource::Value(value.clone()))
        }
        (None, None, None) => None,
    })
}

// === The signer ===

/// A bound keypair in a PKCS#11 token.
pub struct Pkcs11Signer {
    ctx: Pkcs11,
    module: PathBuf,
    token: String,
    serial: String,
    label: Option<String>,
    id: Vec<u8>,
    /// Where the PIN comes from; read again at each login.
    pin: Option<PinSource>,
    public: PublicKey,
    protection: Protection,
    mechanism_ecdsa_sha256: bool,
    state: Mutex<State>,
}

/// The open session and key handle, rebuilt when the token loses them.
struct State {
    slot: Slot,
    session: Option<(Session, ObjectHandle)>,
}

impl Pkcs11Signer {
    /// Opens the key `config` names: loads the module, finds the token, logs in, finds exactly one
    /// private key, and reads its public key and protection attributes.
    pub fn open(config: &Pkcs11Config) -> Result<Self, Error> {
        let uri = Pkcs11Uri::parse(&config.uri).map_err(|e| err(ErrorKind::Config, e))?;
        let module = config
            .module
            .clone()
            .or_else(|| uri.module_path.clone())
            .ok_or_else(|| err(ErrorKind::Config, "no PKCS#11 module: pass --pkcs11-module PATH or add ?module-path=PATH to the URI"))?;
        let pin = pin_source(config, &uri)?;
        let ctx = load_module(&module)?;
        let (slot, token, serial) = find_token(&ctx, &uri, &module)?;
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| err(ErrorKind::Unavailable, "reading token info").with_source(e))?;
        if info.login_required() && pin.is_none() {
            return Err(err(
                ErrorKind::Config,
                format!(
                    "token {token:?} needs the user PIN: pass --pin-source env:VAR or file:PATH (or pin-source in the URI)"
                ),
            ));
        }
        let session = ctx.open_ro_session(slot).map_err(|e| {
            err(kind_of(&e), format!("opening a session on token {token:?}")).with_source(e)
        })?;
        log_in(
            &ctx,
            slot,
            &session,
            pin.as_ref(),
            (&module, &token, &serial),
        )?;

        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if let Some(label) = &uri.object {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        if let Some(id) = &uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        let found = session
            .find_objects(&template)
            .map_err(|e| err(kind_of(&e), "searching the token for keys").with_source(e))?;
        let handle = match found.as_slice() {
            [one] => *one,
            [] => {
                let present = key::list(&session, &token, &serial).unwrap_or_default();
                return Err(err(
                    ErrorKind::KeyNotFound,
                    format!(
                        "no private key matches {} on token {token:?}; keys present: {}",
                        uri,
                        if present.is_empty() {
                            "none".to_owned()
                        } else {
                            present
                                .iter()
                                .map(|k| k.uri.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                ));
            }
            many => {
                let candidates: Vec<String> = many
                    .iter()
                    .filter_map(|h| key::describe(&session, *h, &token, &serial).ok())
                    .map(|k| k.uri.to_string())
                    .collect();
                return Err(err(
                    ErrorKind::Config,
                    format!(
                        "{} private keys match {uri}; pick one: {}",
                        many.len(),
                        candidates.join(", ")
                    ),
                ));
            }
        };
        let key = key::read(&session, handle, &token)?;
        let protection = key.protection();
        if config.require_hardware_key && !protection.is_hardware() {
            return Err(err(
                ErrorKind::Config,
                format!(
                    "the key {} is {protection}, and --require-hardware-key asks for a key generated \
                     in the token that never left it: make one with `keybound keypair create \
                     --static --signer pkcs11`",
                    Pkcs11Uri::for_key(&token, &serial, key.label.as_deref(), &key.id)
                ),
            ));
        }
        let mechanisms = ctx.get_mechanism_list(slot).unwrap_or_default();
        let needed = match key.public.algorithm() {
            Algorithm::Ed25519 => MechanismType::EDDSA,
            _ => MechanismType::ECDSA,
        };
        let usable = mechanisms.is_empty()
            || mechanisms.contains(&needed)
            || (needed == MechanismType::ECDSA
                && mechanisms.contains(&MechanismType::ECDSA_SHA256));
        if !usable {
            return Err(err(
                ErrorKind::Unsupported,
                format!("token {token:?} lists no {needed} mechanism to sign with this key"),
            ));
        }
        debug!(token, key = ?key.label, algorithm = %key.public.algorithm(), %protection, "opened PKCS#11 key");
        Ok(Self {
            module,
            token,
            serial,
            label: key.label,
            id: key.id,
            pin,
            public: key.public,
            protection,
            mechanism_ecdsa_sha256: mechanisms.contains(&MechanismType::ECDSA_SHA256),
            state: Mutex::new(State {
                slot,
                session: Some((session, handle)),
            }),
            ctx,
        })
    }

    /// The key's URI, ready to paste.
    pub fn uri(&self) -> Pkcs11Uri {
        Pkcs11Uri::for_key(&self.token, &self.serial, self.label.as_deref(), &self.id)
    }

    /// Reopens the session, logs in again and finds the key again (after the token lost them).
    fn reopen(&self, state: &mut State) -> Result<(), Error> {
        state.session = None;
        // The slot may have changed if the token was removed and inserted again.
        let uri = Pkcs11Uri {
            token: Some(self.token.clone()),
            serial: Some(self.serial.clone()).filter(|s| !s.is_empty()),
            ..Default::default()
        };
        let (slot, _, _) = find_token(&self.ctx, &uri, &self.module).map_err(|e| {
            err(
                ErrorKind::Unavailable,
                format!("token {:?} is gone: {}", self.token, e.message()),
            )
        })?;
        let session = self
            .ctx
            .open_ro_session(slot)
            .map_err(|e| err(kind_of(&e), "reopening a session").with_source(e))?;
        log_in(
            &self.ctx,
            slot,
            &session,
            self.pin.as_ref(),
            (&self.module, &self.token, &self.serial),
        )?;
        let mut template = vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(self.id.clone()),
        ];
        if let Some(label) = &self.label {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        let found = session
            .find_objects(&template)
            .map_err(|e| err(kind_of(&e), "finding the key again").with_source(e))?;
        let [handle] = found.as_slice() else {
            return Err(err(
                ErrorKind::KeyNotFound,
                format!("the key {} is no longer on the token", self.uri()),
            ));
        };
        state.slot = slot;
        state.session = Some((session, *handle));
        Ok(())
    }

    fn sign_once(
        &self,
        session: &Session,
        key: ObjectHandle,
        message: &[u8],
    ) -> Result<Vec<u8>, CkError> {
        match self.public.algorithm() {
            Algorithm::Ed25519 => session.sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                key,
                message,
            ),
            _ if self.mechanism_ecdsa_sha256 => session.sign(&Mechanism::EcdsaSha256, key, message),
            _ => session.sign(&Mechanism::Ecdsa, key, &Sha256::digest(message)),
        }
    }

    /// Drops the open session, as a token that lost it would (tests of the reopen path).
    #[cfg(feature = "testing")]
    pub fn close_session_for_test(&self) {
        let mut state = self.state.lock().expect("session lock poisoned");
        if let Some((session, _)) = state.session.take() {
            let _ = session.close();
        }
    }
}

impl Signer for Pkcs11Signer {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn protection(&self) -> Protection {
        self.protection.clone()
    }

    fn sign(&self, message: &[u8]) -> Result<Signature, Error> {
        // One session, used by one signature at a time: PKCS#11 sessions are not thread-safe, and
        // SoftHSM and most tokens serialise anyway.
        let mut state = self.state.lock().expect("session lock poisoned");
        let mut last = None;
        for attempt in 0..SIGN_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(BACKOFF * 2u32.pow(attempt - 1));
            }
            if state.session.is_none() {
                match self.reopen(&mut state) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::Unavailable => {
                        last = Some(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let (session, key) = state.session.as_ref().expect("opened above");
            match self.sign_once(session, *key, message) {
                Ok(bytes) => return Signature::new(self.public.algorithm(), bytes),
                Err(e) if kind_of(&e) == ErrorKind::Unavailable => {
                    warn!(token = %self.token, error = %e, attempt, "the token lost the session; reopening");
                    state.session = None;
                    last = Some(
                        err(
                            ErrorKind::Unavailable,
                            format!("token {:?} failed to sign", self.token),
                        )
                        .with_source(e),
                    );
                }
                Err(e) => {
                    let kind = kind_of(&e);
                    return Err(err(
                        kind,
                        format!("token {:?} failed to sign with {}", self.token, self.uri()),
                    )
                    .with_source(e));
                }
            }
        }
        Err(last.unwrap_or_else(|| err(ErrorKind::Unavailable, "the token is unavailable")))
    }
}

impl fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("module", &self.module)
            .field("key", &self.uri().to_string())
            .field("algorithm", &self.public.algorithm())
            .field("fingerprint", &self.public.fingerprint())
            .field("protection", &self.protection)
            .finish_non_exhaustive()
    }
}

// === Key creation and listing ===

/// Makes a new keypair inside the token: a token object, private, sensitive, not extractable,
/// sign only. The URI must name the key with `object=LABEL` (and may give `id`). An existing key
/// with that label or id is replaced only with `overwrite`.
pub fn generate(
    config: &Pkcs11Config,
    algorithm: Algorithm,
    overwrite: bool,
) -> Result<Pkcs11Signer, Error> {
    let mut uri = Pkcs11Uri::parse(&config.uri).map_err(|e| err(ErrorKind::Config, e))?;
    let label = uri.object.clone().ok_or_else(|| {
        err(
            ErrorKind::Config,
            "name the new key: add object=LABEL to --pkcs11-uri",
        )
    })?;
    let module = config
        .module
        .clone()
        .or_else(|| uri.module_path.clone())
        .ok_or_else(|| {
            err(
                ErrorKind::Config,
                "no PKCS#11 module: pass --pkcs11-module PATH or add ?module-path=PATH to the URI",
            )
        })?;
    let pin = pin_source(config, &uri)?;
    let ctx = load_module(&module)?;
    let (slot, token, serial) = find_token(&ctx, &uri, &module)?;
    let mechanisms = ctx
        .get_mechanism_list(slot)
        .map_err(|e| err(kind_of(&e), "listing the token's mechanisms").with_source(e))?;
    keygen_support(&mechanisms, algorithm, &token)?;
    let session = ctx.open_rw_session(slot).map_err(|e| {
        err(
            kind_of(&e),
            format!("opening a read-write session on token {token:?}"),
        )
        .with_source(e)
    })?;
    log_in(
        &ctx,
        slot,
        &session,
        pin.as_ref(),
        (&module, &token, &serial),
    )?;

    let id = match &uri.id {
        Some(id) => id.clone(),
        None => key::free_id(&session)?,
    };
    let mut existing = Vec::new();
    for attribute in [
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.clone()),
    ] {
        existing.extend(
            session
                .find_objects(&[attribute])
                .map_err(|e| err(kind_of(&e), "searching the token").with_source(e))?,
        );
    }
    existing.sort_by_key(|h| h.handle());
    existing.dedup();
    if !existing.is_empty() {
        if !overwrite {
            return Err(err(
                ErrorKind::Config,
                format!(
                    "token {token:?} already holds an object labelled {label:?} or with that id ({}); keybound never replaces a key without --overwrite",
                    Pkcs11Uri::for_key(&token, &serial, Some(&label), &id)
                ),
            ));
        }
        for handle in existing {
            session
                .destroy_object(handle)
                .map_err(|e| err(kind_of(&e), "removing the old key").with_source(e))?;
        }
    }
    key::generate(&session, algorithm, &label, &id, &token)?;
    drop(session);
    uri.object = Some(label);
    uri.id = Some(id);
    uri.pin_source = None;
    uri.pin_value = None;
    let mut opened = config.clone();
    opened.uri = uri.to_string().into();
    opened.module = Some(module);
    // Re-read the PIN source rather than keep a second copy of the PIN.
    opened.pin = config.pin.clone().or_else(|| {
        Pkcs11Uri::parse(&config.uri)
            .ok()
            .and_then(|u| u.pin_source)
            .and_then(|s| PinSource::parse(&s).ok())
    });
    Pkcs11Signer::open(&opened)
}

/// Whether a token with `mechanisms` can make and use `algorithm` keys; if not, the error says
/// what to choose instead.
pub fn keygen_support(
    mechanisms: &[MechanismType],
    algorithm: Algorithm,
    token: &str,
) -> Result<(), Error> {
    let (keygen, sign, other) = match algorithm {
        Algorithm::Ed25519 => (
            MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
            MechanismType::EDDSA,
            "ecdsa-p256",
        ),
        _ => (
            MechanismType::ECC_KEY_PAIR_GEN,
            MechanismType::ECDSA,
            "ed25519",
        ),
    };
    for needed in [keygen, sign] {
        if !mechanisms.contains(&needed) {
            return Err(err(
                ErrorKind::Unsupported,
                format!(
                    "token {token:?} cannot make {algorithm} keys (no {needed}); choose --algorithm {other} instead \
                     (static keys keep their algorithm, and Teleport accepts both)"
                ),
            ));
        }
    }
    Ok(())
}

/// A token and the keys on it.
#[derive(Clone, Debug)]
pub struct TokenListing {
    /// The token's URI.
    pub uri: Pkcs11Uri,
    /// Manufacturer and model, for people.
    pub description: String,
    /// Whether the token needs a PIN.
    pub login_required: bool,
    /// The keys (private keys when logged in, else public keys).
    pub keys: Vec<KeyListing>,
    /// Why the keys could not be listed, if they could not.
    pub error: Option<String>,
}

/// A key on a token.
#[derive(Clone, Debug)]
pub struct KeyListing {
    /// The key's URI, ready to paste.
    pub uri: Pkcs11Uri,
    /// `ed25519`, `ecdsa-p256`, or the key type a bound keypair cannot use.
    pub kind: String,
    /// The public key's `authorized_keys` line, when keybound can use the key.
    pub public_key: Option<String>,
}

/// Lists the tokens of `module` and their keys. With a PIN, private keys are listed (and the PIN
/// policy applies); without one, public key objects.
pub fn list(module: &Path, pin: Option<&PinSource>) -> Result<Vec<TokenListing>, Error> {
    let ctx = load_module(module)?;
    let mut out = Vec::new();
    for slot in ctx
        .get_slots_with_token()
        .map_err(|e| err(ErrorKind::Unavailable, "listing tokens").with_source(e))?
    {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            continue;
        }
        let (token, serial) = (
            info.label().trim().to_owned(),
            info.serial_number().trim().to_owned(),
        );
        let keys = (|| {
            let session = ctx
                .open_ro_session(slot)
                .map_err(|e| err(kind_of(&e), format!("opening token {token:?}")).with_source(e))?;
            log_in(&ctx, slot, &session, pin, (module, &token, &serial))?;
            key::list(&session, &token, &serial)
        })();
        out.push(TokenListing {
            uri: Pkcs11Uri::for_key(&token, &serial, None, &[]),
            description: format!("{} {}", info.manufacturer_id().trim(), info.model().trim()),
            login_required: info.login_required(),
            error: keys.as_ref().err().map(ToString::to_string),
            keys: keys.unwrap_or_default(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_softhsm_configuration_names_the_file_and_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("softhsm2.conf");
        let problem = softhsm_config_problem(Some(conf.clone()), None).unwrap();
        assert!(
            problem.starts_with(&format!(
                "cannot read its configuration file {} (named by $SOFTHSM2_CONF): ",
                conf.display()
            )) && problem.contains("No such file")
                && problem.contains("point SOFTHSM2_CONF at"),
            "{problem}"
        );

        let tokens = dir.path().join("tokens");
        std::fs::write(
            &conf,
            format!(
                "# a comment = x\ndirectories.tokendir = /elsewhere\ndirectories.tokendir = {} # last wins\n",
                tokens.display()
            ),
        )
        .unwrap();
        let problem = softhsm_config_problem(Some(conf.clone()), None).unwrap();
        assert!(
            problem.starts_with(&format!(
                "its configuration file {} (named by $SOFTHSM2_CONF) names the token directory {}, \
                 which does not exist",
                conf.display(),
                tokens.display()
            )),
            "{problem}"
        );
        std::fs::create_dir(&tokens).unwrap();
        let fine = softhsm_config_problem(Some(conf), None).unwrap_err();
        assert!(fine.ends_with("which is readable"), "{fine}");

        // Without the variable: the user's own file, when there is one.
        let home = dir.path().join("home");
        let user = home.join(".config/softhsm2/softhsm2.conf");
        std::fs::create_dir_all(user.parent().unwrap()).unwrap();
        std::fs::write(&user, "directories.tokendir = /nonexistent/tokens\n").unwrap();
        let problem = softhsm_config_problem(None, Some(home)).unwrap();
        assert!(
            problem.contains(&format!(
                "file {} (SOFTHSM2_CONF is not set)",
                user.display()
            )),
            "{problem}"
        );
    }

    #[test]
    fn pin_policy_never_risks_the_last_try() {
        assert!(pin_policy(false, false, false, "t").is_ok());
        assert!(pin_policy(false, false, true, "t").is_ok());
        let last = pin_policy(false, true, true, "t").unwrap_err();
        assert_eq!(last.kind(), ErrorKind::Auth);
        assert!(last.to_string().contains("one PIN try left"), "{last}");
        let locked = pin_policy(true, false, false, "t").unwrap_err();
        assert!(locked.to_string().contains("is locked"), "{locked}");
    }

    #[test]
    fn a_token_without_ed25519_names_the_alternative() {
        let p256_only = [MechanismType::ECC_KEY_PAIR_GEN, MechanismType::ECDSA];
        let error = keygen_support(&p256_only, Algorithm::Ed25519, "yubihsm").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unsupported);
        assert!(
            error.to_string().contains("choose --algorithm ecdsa-p256"),
            "{error}"
        );
        assert!(keygen_support(&p256_only, Algorithm::EcdsaP256Sha256, "yubihsm").is_ok());
        let error = keygen_support(
            &[MechanismType::ECC_EDWARDS_KEY_PAIR_GEN],
            Algorithm::Ed25519,
            "t",
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("no CKM_EDDSA") || error.to_string().contains("EDDSA"),
            "{error}"
        );
    }

    #[test]
    fn errors_are_classified_for_retries() {
        use cryptoki::context::Function;
        assert_eq!(
            kind_of(&CkError::Pkcs11(RvError::PinIncorrect, Function::Login)),
            ErrorKind::Auth
        );
        assert_eq!(
            kind_of(&CkError::Pkcs11(
                RvError::SessionHandleInvalid,
                Function::Sign
            )),
            ErrorKind::Unavailable
        );
        assert_eq!(
            kind_of(&CkError::Pkcs11(RvError::DeviceRemoved, Function::Sign)),
            ErrorKind::Unavailable
        );
        assert_eq!(
            kind_of(&CkError::Pkcs11(
                RvError::MechanismInvalid,
                Function::SignInit
            )),
            ErrorKind::Unsupported
        );
    }
}
