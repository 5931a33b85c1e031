//! Removing a key keybound made inside a token (a rotated-out key of standard bound-keypair
//! joining): both objects of the pair, named by label and id together; or, for a pair whose
//! making was interrupted before its id was recorded, by a label the caller drew at random and
//! recorded before making it (`destroy_unrecorded`).

use cryptoki::object::{Attribute, ObjectClass};
use keybound_signer::config::Pkcs11Config;
use keybound_signer::{Error, ErrorKind};

use cryptoki::session::Session;

use crate::Pkcs11Uri;
use crate::error::{err, kind_of};
use crate::login::pin_source;
use crate::module::{load_module, module_path};
use crate::token::find_token;

/// Destroys (`C_DestroyObject`) every object with the label and id `config`'s URI gives: the
/// private and public halves of one key pair. Both must be given, so that a URI naming only a
/// label or an id cannot take other objects with it. Returns how many objects went; none is not
/// an error (a crash may have come after an earlier destroy).
pub fn destroy(config: &Pkcs11Config) -> Result<usize, Error> {
    let uri = Pkcs11Uri::parse(&config.uri).map_err(|e| err(ErrorKind::Config, e))?;
    let (Some(label), Some(id)) = (&uri.object, &uri.id) else {
        return Err(err(
            ErrorKind::Config,
            format!("destroying a key needs its object label and id in the URI ({uri})"),
        ));
    };
    let session = logged_in(config, &uri)?;
    let found = session
        .find_objects(&[
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ])
        .map_err(|e| err(kind_of(&e), "searching the token").with_source(e))?;
    for handle in &found {
        session
            .destroy_object(*handle)
            .map_err(|e| err(kind_of(&e), format!("destroying {uri}")).with_source(e))?;
    }
    Ok(found.len())
}

/// Destroys the key pair labelled with `config`'s `object=` (its id unknown: the pair's making
/// was interrupted before the caller recorded it): the private and public key objects with that
/// label, nothing else (no certificate, no data object). Only for a label the caller drew at
/// random and recorded *before* making the pair, so that an object with it can only be the one
/// it made. Returns how many objects went; none is not an error (the crash may have come before
/// the pair was made).
pub fn destroy_unrecorded(config: &Pkcs11Config) -> Result<usize, Error> {
    let uri = Pkcs11Uri::parse(&config.uri).map_err(|e| err(ErrorKind::Config, e))?;
    let Some(label) = &uri.object else {
        return Err(err(
            ErrorKind::Config,
            format!("destroying an unrecorded key needs its object label in the URI ({uri})"),
        ));
    };
    let session = logged_in(config, &uri)?;
    let mut destroyed = 0;
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        let found = session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(|e| err(kind_of(&e), "searching the token").with_source(e))?;
        for handle in &found {
            session
                .destroy_object(*handle)
                .map_err(|e| err(kind_of(&e), format!("destroying {uri}")).with_source(e))?;
            destroyed += 1;
        }
    }
    Ok(destroyed)
}

/// A read-write session, logged in, on the token `uri` names.
fn logged_in(config: &Pkcs11Config, uri: &Pkcs11Uri) -> Result<Session, Error> {
    let module = module_path(config, uri)?;
    let pin = pin_source(config, uri)?;
    let ctx = load_module(&module)?;
    let (slot, token, serial) = find_token(&ctx, uri, &module)?;
    crate::keygen::rw_session(&ctx, slot, pin.as_ref(), (&module, &token, &serial))
}
