//! Finding the one token a URI names among the module's slots.

use std::path::Path;

use cryptoki::context::Pkcs11;
use cryptoki::slot::{Slot, TokenInfo};
use keybound_signer::{Error, ErrorKind};

use crate::Pkcs11Uri;
use crate::error::err;

/// The token the URI names. Tokens are matched by label, serial, manufacturer and model, never by
/// slot number.
pub(crate) fn find_token(
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
    for (slot, info, label, serial) in initialised(ctx, slots) {
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

/// The initialised tokens in `slots`, with their label and serial number (trimmed of the
/// padding PKCS#11 gives them). A slot whose token cannot be read is passed over.
pub(crate) fn initialised(
    ctx: &Pkcs11,
    slots: Vec<Slot>,
) -> impl Iterator<Item = (Slot, TokenInfo, String, String)> + '_ {
    slots.into_iter().filter_map(|slot| {
        let info = ctx.get_token_info(slot).ok()?;
        if !info.token_initialized() {
            return None;
        }
        let (label, serial) = (
            info.label().trim().to_owned(),
            info.serial_number().trim().to_owned(),
        );
        Some((slot, info, label, serial))
    })
}
