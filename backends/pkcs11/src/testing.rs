//! SoftHSM for tests: one module per process, one fresh token per test.
//!
//! The process's token store is the one `SOFTHSM2_CONF` names, which the workspace's
//! `.cargo/config.toml` points at `target/softhsm-tests/`. The first use writes that config and
//! empties its token directory; the harness refuses any other path, so it can never wipe a real
//! token store. SoftHSM runs for real; nothing here is mocked.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::Pkcs11;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keybound_signer::PinSource;
use keybound_signer::config::Pkcs11Config;
use zeroize::Zeroizing;

use crate::load_module;

/// Debian's SoftHSM module.
pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The security officer PIN of test tokens.
pub const SO_PIN: &str = "12345678";
/// The user PIN of test tokens.
pub const USER_PIN: &str = "Pin-For-Tests-7c41";

/// The SoftHSM module: `$SOFTHSM2_MODULE`, else Debian's. Panics (never skips) when it is missing.
pub fn module_path() -> PathBuf {
    let path = std::env::var_os("SOFTHSM2_MODULE")
        .map_or_else(|| PathBuf::from(DEFAULT_MODULE), PathBuf::from);
    assert!(
        path.exists(),
        "the SoftHSM module {} is missing: apt-get install softhsm2 (make deps does)",
        path.display()
    );
    path
}

fn module() -> &'static Pkcs11 {
    static MODULE: OnceLock<Pkcs11> = OnceLock::new();
    MODULE.get_or_init(|| {
        let conf = PathBuf::from(std::env::var_os("SOFTHSM2_CONF").expect(
            "SOFTHSM2_CONF is not set: run the tests through cargo, whose .cargo/config.toml sets it",
        ));
        assert!(
            conf.ends_with("target/softhsm-tests/softhsm2.conf"),
            "SOFTHSM2_CONF is {}, not the test store under target/softhsm-tests: refusing to touch it",
            conf.display()
        );
        let dir = conf.parent().expect("a file has a parent");
        let tokens = dir.join("tokens");
        let _ = std::fs::remove_dir_all(&tokens);
        std::fs::create_dir_all(&tokens).expect("create the test token directory");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("write the SoftHSM test config");
        load_module(&module_path()).expect("load SoftHSM")
    })
}

/// A token made for one test.
pub struct TestToken {
    /// Its label.
    pub label: String,
}

impl TestToken {
    /// A new token with a unique label starting with `prefix`, its user PIN set to [`USER_PIN`].
    pub fn new(prefix: &str) -> Self {
        static LOCK: Mutex<()> = Mutex::new(());
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let ctx = module();
        // Two tests must not initialise the same free slot.
        let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let label = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        assert!(
            label.len() <= 32,
            "token labels are at most 32 characters: {label}"
        );
        let free = ctx
            .get_all_slots()
            .expect("list slots")
            .into_iter()
            .find(|s| ctx.get_token_info(*s).is_ok_and(|i| !i.token_initialized()))
            .expect("SoftHSM always keeps a free slot");
        let so = AuthPin::from(SO_PIN.to_owned());
        ctx.init_token(free, &so, &label)
            .expect("initialise a token");
        // SoftHSM gives the initialised token a new slot id: find it by label.
        let slot = ctx
            .get_slots_with_token()
            .expect("list slots")
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|i| i.label().trim() == label)
            })
            .expect("the new token");
        let session = ctx.open_rw_session(slot).expect("SO session");
        session.login(UserType::So, Some(&so)).expect("SO login");
        session
            .init_pin(&AuthPin::from(USER_PIN.to_owned()))
            .expect("set the user PIN");
        session.logout().expect("SO logout");
        Self { label }
    }

    /// The token's directory in the test store (SoftHSM names it by a UUID; `token.object` holds
    /// the label).
    pub fn dir(&self) -> PathBuf {
        let conf = PathBuf::from(std::env::var_os("SOFTHSM2_CONF").expect("SOFTHSM2_CONF is set"));
        let tokens = conf.parent().expect("a file has a parent").join("tokens");
        std::fs::read_dir(&tokens)
            .expect("the test token store")
            .filter_map(|entry| Some(entry.ok()?.path()))
            .find(|dir| {
                std::fs::read(dir.join("token.object")).is_ok_and(|bytes| {
                    bytes
                        .windows(self.label.len())
                        .any(|w| w == self.label.as_bytes())
                })
            })
            .expect("the token's directory")
    }

    /// A read-only session on this token, logged in as the user.
    fn user_session(&self) -> cryptoki::session::Session {
        let ctx = module();
        let slot = ctx
            .get_slots_with_token()
            .expect("list slots")
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|i| i.label().trim() == self.label)
            })
            .expect("the token");
        let session = ctx.open_ro_session(slot).expect("session");
        match session.login(UserType::User, Some(&AuthPin::from(USER_PIN.to_owned()))) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(e) => panic!("login: {e}"),
        }
        session
    }

    /// Whether `CKA_VALUE` of the private key `object` can be read, asked of the token directly
    /// (logged in as the user): it must not be, for a sensitive key.
    pub fn private_value_readable(&self, object: &str) -> bool {
        use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
        let session = self.user_session();
        let key = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(object.as_bytes().to_vec()),
            ])
            .expect("find")[0];
        let info = session
            .get_attribute_info(key, &[AttributeType::Value])
            .expect("attribute info");
        let value = session
            .get_attributes(key, &[AttributeType::Value])
            .expect("attributes");
        !matches!(info.as_slice(), [AttributeInfo::Sensitive]) || !value.is_empty()
    }

    /// Signs straight through cryptoki with the private key `object`: the floor keybound's own
    /// signer is measured against (one session, opened once and kept).
    pub fn raw_sign(
        &self,
        object: &str,
        algorithm: keybound_signer::Algorithm,
        message: &[u8],
    ) -> Vec<u8> {
        use cryptoki::mechanism::Mechanism;
        use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
        use cryptoki::object::{Attribute, ObjectClass};
        use sha2::Digest as _;
        thread_local! {
            static SESSION: std::cell::RefCell<Option<(String, cryptoki::session::Session, cryptoki::object::ObjectHandle)>> =
                const { std::cell::RefCell::new(None) };
        }
        SESSION.with(|cell| {
            let mut cached = cell.borrow_mut();
            let key = format!("{}/{object}", self.label);
            if cached.as_ref().is_none_or(|(k, _, _)| *k != key) {
                let session = self.user_session();
                let handle = session
                    .find_objects(&[
                        Attribute::Class(ObjectClass::PRIVATE_KEY),
                        Attribute::Label(object.as_bytes().to_vec()),
                    ])
                    .expect("find")[0];
                *cached = Some((key, session, handle));
            }
            let (_, session, handle) = cached.as_ref().expect("set above");
            match algorithm {
                keybound_signer::Algorithm::Ed25519 => session
                    .sign(
                        &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                        *handle,
                        message,
                    )
                    .expect("sign"),
                _ => session
                    .sign(&Mechanism::Ecdsa, *handle, &sha2::Sha256::digest(message))
                    .expect("sign"),
            }
        })
    }

    /// A config for the key `object` on this token, with the module and the user PIN.
    pub fn config(&self, object: &str) -> Pkcs11Config {
        let mut config = Pkcs11Config::new(format!("pkcs11:token={};object={object}", self.label));
        config.module = Some(module_path());
        config.pin = Some(PinSource::Value(Zeroizing::new(USER_PIN.to_owned())));
        config
    }
}
