//! Listing what a module holds: its tokens, and the keys on each as URIs ready to paste
//! (`keybound signer list`).

use std::path::Path;

use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use keybound_signer::{Error, ErrorKind, PinSource};

use crate::error::{err, kind_of};
use crate::key::{self, text};
use crate::login::log_in;
use crate::module::load_module;
use crate::{Pkcs11Uri, token};

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
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| err(ErrorKind::Unavailable, "listing tokens").with_source(e))?;
    let mut out = Vec::new();
    for (slot, info, token, serial) in token::initialised(&ctx, slots) {
        let found = (|| {
            let session = ctx
                .open_ro_session(slot)
                .map_err(|e| err(kind_of(&e), format!("opening token {token:?}")).with_source(e))?;
            log_in(&ctx, slot, &session, pin, (module, &token, &serial))?;
            keys(&session, &token, &serial)
        })();
        out.push(TokenListing {
            uri: Pkcs11Uri::for_key(&token, &serial, None, &[]),
            description: format!("{} {}", info.manufacturer_id().trim(), info.model().trim()),
            login_required: info.login_required(),
            error: found.as_ref().err().map(ToString::to_string),
            keys: found.unwrap_or_default(),
        });
    }
    Ok(out)
}

/// A listing line for one key object.
pub(crate) fn describe(
    session: &Session,
    handle: ObjectHandle,
    token: &str,
    serial: &str,
) -> Result<KeyListing, Error> {
    let attributes = session
        .get_attributes(
            handle,
            &[
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::KeyType,
            ],
        )
        .map_err(|e| err(kind_of(&e), "reading a key").with_source(e))?;
    let (mut label, mut id, mut key_type) = (None, Vec::new(), None);
    for attribute in attributes {
        match attribute {
            Attribute::Label(v) => label = text(&v),
            Attribute::Id(v) => id = v,
            Attribute::KeyType(t) => key_type = Some(t),
            _ => {}
        }
    }
    let (kind, public_key) = match key::read(session, handle, token) {
        Ok(info) => (
            info.public.algorithm().as_str().to_owned(),
            Some(info.public.to_openssh()),
        ),
        Err(_) => (
            key_type.map_or_else(|| "unknown".to_owned(), |t| format!("{t} (not usable)")),
            None,
        ),
    };
    Ok(KeyListing {
        uri: Pkcs11Uri::for_key(token, serial, label.as_deref(), &id),
        kind,
        public_key,
    })
}

/// Every key on the token: private keys if the session can see them, else public keys.
pub(crate) fn keys(session: &Session, token: &str, serial: &str) -> Result<Vec<KeyListing>, Error> {
    let find = |class| {
        session
            .find_objects(&[Attribute::Class(class)])
            .map_err(|e| err(kind_of(&e), "listing keys").with_source(e))
    };
    let mut handles = find(ObjectClass::PRIVATE_KEY)?;
    if handles.is_empty() {
        handles = find(ObjectClass::PUBLIC_KEY)?;
    }
    let mut keys: Vec<KeyListing> = handles
        .into_iter()
        .filter_map(|h| describe(session, h, token, serial).ok())
        .collect();
    keys.sort_by_key(|k| k.uri.to_string());
    keys.dedup_by_key(|k| k.uri.to_string());
    Ok(keys)
}
