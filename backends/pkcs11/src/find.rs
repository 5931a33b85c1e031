//! Finding the key a URI names, with what the token holds when it is not there.

use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use keybound_signer::{Error, ErrorKind};

use crate::Pkcs11Uri;
use crate::error::{err, kind_of};
use crate::list;

/// The one private key `uri` names (by its `object` label and `id`). None, or more than one, is
/// an error that lists the keys the token holds, as URIs.
pub(crate) fn find_private(
    session: &Session,
    uri: &Pkcs11Uri,
    token: &str,
    serial: &str,
) -> Result<ObjectHandle, Error> {
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
    match found.as_slice() {
        [one] => Ok(*one),
        [] => {
            let present = list::keys(session, token, serial).unwrap_or_default();
            Err(err(
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
            ))
        }
        many => {
            let candidates: Vec<String> = many
                .iter()
                .filter_map(|h| list::describe(session, *h, token, serial).ok())
                .map(|k| k.uri.to_string())
                .collect();
            Err(err(
                ErrorKind::Config,
                format!(
                    "{} private keys match {uri}; pick one: {}",
                    many.len(),
                    candidates.join(", ")
                ),
            ))
        }
    }
}
