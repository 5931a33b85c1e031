//! RFC 7512 PKCS#11 URIs: `pkcs11:token=LABEL;object=LABEL;id=%01?module-path=...&pin-source=...`.

use std::fmt;
use std::path::PathBuf;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use zeroize::Zeroizing;

/// Characters left unescaped in attribute values (RFC 7512 `pk11-pchar` less the separators).
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'[')
    .remove(b']')
    .remove(b'@')
    .remove(b'!')
    .remove(b'$')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b'=');

/// Characters left unescaped in query values (`pk11-qchar`: also `/`, `?` and `|`).
const QUERY: &AsciiSet = &VALUE.remove(b'/').remove(b'?').remove(b'|');

/// The parts of a PKCS#11 URI keybound uses. Unknown path attributes are refused; unknown query
/// attributes too (a typo in `pin-source` must not be ignored).
///
/// `Debug` never shows `pin_value`, and a parse error never quotes the text of a URI that
/// carries `pin-value`: the PIN could be anywhere in it, typo'd attribute names included.
#[derive(Clone, Default, Eq, PartialEq)]
pub struct Pkcs11Uri {
    /// `token`: the token label.
    pub token: Option<String>,
    /// `serial`: the token serial number.
    pub serial: Option<String>,
    /// `manufacturer`: the token manufacturer.
    pub manufacturer: Option<String>,
    /// `model`: the token model.
    pub model: Option<String>,
    /// `object`: the key's `CKA_LABEL`.
    pub object: Option<String>,
    /// `id`: the key's `CKA_ID`.
    pub id: Option<Vec<u8>>,
    /// `module-path`.
    pub module_path: Option<PathBuf>,
    /// `pin-source`.
    pub pin_source: Option<String>,
    /// `pin-value` (shows in process listings), zeroed when dropped.
    pub pin_value: Option<Zeroizing<String>>,
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Uri")
            .field("token", &self.token)
            .field("serial", &self.serial)
            .field("manufacturer", &self.manufacturer)
            .field("model", &self.model)
            .field("object", &self.object)
            .field("id", &self.id)
            .field("module_path", &self.module_path)
            .field("pin_source", &self.pin_source)
            .field("pin_value", &self.pin_value.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

/// What a parse error says instead of quoting a URI that carries a PIN.
const HIDDEN: &str = "(not shown: the URI carries pin-value)";

/// Whether `uri` may carry a PIN in `pin-value` (also percent-encoded, in any case).
fn carries_pin_value(uri: &str) -> bool {
    let lower = uri.to_ascii_lowercase();
    lower.contains("pin-value") || lower.contains("pin%2dvalue")
}

/// Quotes URI text for an error, or hides it (see [`HIDDEN`]).
#[derive(Clone, Copy)]
struct Quote {
    hide: bool,
}

impl Quote {
    fn of(&self, text: &str) -> String {
        if self.hide {
            HIDDEN.to_owned()
        } else {
            format!("{text:?}")
        }
    }
}

fn decode(name: &str, value: &str, quote: Quote) -> Result<Vec<u8>, String> {
    if value.contains('%') {
        // Check each escape is complete: percent_decode keeps malformed ones verbatim.
        let bytes = value.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'%' {
                let ok = bytes
                    .get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
                if !ok {
                    return Err(format!(
                        "{name}: malformed percent-escape in {}",
                        quote.of(value)
                    ));
                }
            }
        }
    }
    Ok(percent_decode_str(value).collect())
}

fn text(name: &str, value: &str, quote: Quote) -> Result<String, String> {
    String::from_utf8(decode(name, value, quote)?)
        .map_err(|_| format!("{name}: not UTF-8 after decoding"))
}

impl Pkcs11Uri {
    /// Parses a `pkcs11:` URI.
    pub fn parse(uri: &str) -> Result<Self, String> {
        let quote = Quote {
            hide: carries_pin_value(uri),
        };
        let rest = uri.strip_prefix("pkcs11:").ok_or_else(|| {
            format!(
                "{} is not a PKCS#11 URI (it must start with pkcs11:)",
                quote.of(uri)
            )
        })?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut out = Self::default();
        for part in path.split(';').filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("PKCS#11 URI attribute {} has no value", quote.of(part)))?;
            out.set_path_attribute(name, value, quote)?;
        }
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                format!(
                    "PKCS#11 URI query attribute {} has no value",
                    quote.of(part)
                )
            })?;
            out.set_query_attribute(name, value, quote)?;
        }
        Ok(out)
    }

    /// One `name=value` of the path part: token and key attributes. Slot attributes are refused
    /// (slot numbers change); library attributes are ignored.
    fn set_path_attribute(&mut self, name: &str, value: &str, quote: Quote) -> Result<(), String> {
        let slot = match name {
            "token" => &mut self.token,
            "serial" => &mut self.serial,
            "manufacturer" => &mut self.manufacturer,
            "model" => &mut self.model,
            "object" => &mut self.object,
            "id" => return set_once(&mut self.id, decode(name, value, quote)?, name),
            "type" => {
                if value != "private" && value != "public" {
                    return Err(format!(
                        "type={}: keybound uses private keys (type=private)",
                        if quote.hide { HIDDEN } else { value }
                    ));
                }
                return Ok(());
            }
            "slot-id" | "slot-description" | "slot-manufacturer" => {
                return Err(format!(
                    "{name}: keybound finds tokens by label or serial, never by slot (slot numbers change); use token=LABEL"
                ));
            }
            "library-manufacturer" | "library-description" | "library-version" => return Ok(()),
            // RFC 7512 puts these in the query; written in the path, they mean the same, and a
            // pin-value there gets the same warning when it is used.
            "module-path" | "pin-source" | "pin-value" => {
                return self.set_query_attribute(name, value, quote);
            }
            other => {
                return Err(format!("unknown PKCS#11 URI attribute {}", quote.of(other)));
            }
        };
        set_once(slot, text(name, value, quote)?, name)
    }

    /// One `name=value` of the query part: the module and the PIN.
    fn set_query_attribute(&mut self, name: &str, value: &str, quote: Quote) -> Result<(), String> {
        match name {
            "module-path" => set_once(
                &mut self.module_path,
                PathBuf::from(text(name, value, quote)?),
                name,
            ),
            "pin-source" => set_once(&mut self.pin_source, text(name, value, quote)?, name),
            "pin-value" => set_once(
                &mut self.pin_value,
                Zeroizing::new(text(name, value, quote)?),
                name,
            ),
            "module-name" => Err(
                "module-name: give the module's path with module-path or --pkcs11-module"
                    .to_owned(),
            ),
            other => Err(format!(
                "unknown PKCS#11 URI query attribute {}",
                quote.of(other)
            )),
        }
    }

    /// Whether a token matches the URI's token attributes.
    pub fn matches_token(
        &self,
        label: &str,
        serial: &str,
        manufacturer: &str,
        model: &str,
    ) -> bool {
        let same = |want: &Option<String>, have: &str| {
            want.as_ref().is_none_or(|w| w.trim() == have.trim())
        };
        same(&self.token, label)
            && same(&self.serial, serial)
            && same(&self.manufacturer, manufacturer)
            && same(&self.model, model)
    }

    /// The URI of one key on one token, ready to paste (no PIN, no module).
    pub fn for_key(token: &str, serial: &str, label: Option<&str>, id: &[u8]) -> Self {
        Self {
            token: Some(token.trim().to_owned()),
            serial: Some(serial.trim().to_owned()).filter(|s| !s.is_empty()),
            object: label.map(str::to_owned),
            id: Some(id.to_vec()).filter(|i| !i.is_empty()),
            ..Self::default()
        }
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("PKCS#11 URI attribute {name} is given twice"));
    }
    *slot = Some(value);
    Ok(())
}

impl fmt::Display for Pkcs11Uri {
    /// The path attributes and `module-path`; never a PIN.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let mut text = |name: &str, value: &Option<String>| {
            if let Some(v) = value {
                parts.push(format!("{name}={}", utf8_percent_encode(v, VALUE)));
            }
        };
        text("token", &self.token);
        text("serial", &self.serial);
        text("manufacturer", &self.manufacturer);
        text("model", &self.model);
        text("object", &self.object);
        if let Some(id) = &self.id {
            parts.push(format!(
                "id={}",
                id.iter().map(|b| format!("%{b:02x}")).collect::<String>()
            ));
        }
        write!(f, "pkcs11:{}", parts.join(";"))?;
        if let Some(path) = &self.module_path {
            write!(
                f,
                "?module-path={}",
                utf8_percent_encode(&path.display().to_string(), QUERY)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc7512_examples() {
        let uri = Pkcs11Uri::parse("pkcs11:token=My%20token;object=bound;id=%01%a0;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:PIN").unwrap();
        assert_eq!(uri.token.as_deref(), Some("My token"));
        assert_eq!(uri.object.as_deref(), Some("bound"));
        assert_eq!(uri.id.as_deref(), Some(&[0x01, 0xa0][..]));
        assert_eq!(
            uri.module_path.as_deref(),
            Some(std::path::Path::new("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(uri.pin_source.as_deref(), Some("env:PIN"));
        assert_eq!(
            uri.to_string(),
            "pkcs11:token=My%20token;object=bound;id=%01%a0?module-path=/usr/lib/softhsm/libsofthsm2.so"
        );
        assert_eq!(Pkcs11Uri::parse(&uri.to_string()).unwrap().token, uri.token);
    }

    #[test]
    fn refuses_what_it_would_otherwise_ignore() {
        for (uri, expected) in [
            ("token=x", "must start with pkcs11:"),
            ("pkcs11:slot-id=3", "never by slot"),
            (
                "pkcs11:token=a;tokn=b",
                "unknown PKCS#11 URI attribute \"tokn\"",
            ),
            (
                "pkcs11:token=a?pin-sourse=env:X",
                "unknown PKCS#11 URI query attribute",
            ),
            ("pkcs11:token=a;token=b", "given twice"),
            ("pkcs11:id=%zz", "malformed percent-escape"),
            ("pkcs11:type=secret-key", "type=private"),
        ] {
            let err = Pkcs11Uri::parse(uri).unwrap_err();
            assert!(err.contains(expected), "{uri}: {err}");
        }
    }

    /// A URI that carries `pin-value` never has its text quoted in an error, wherever the PIN
    /// sits: in the value, after a stray `&`, in a misspelt attribute, in a bad escape.
    #[test]
    fn errors_never_quote_a_uri_that_carries_a_pin() {
        const PIN: &str = "Secret-PIN-4711";
        for uri in [
            format!("pkcs1:token=a?pin-value={PIN}"),
            format!("pkcs11:token=a?pin-value=12&{PIN}"),
            format!("pkcs11:token=a?pin-value=12&{PIN}=x"),
            format!("pkcs11:token=a;{PIN}?pin-value=1"),
            format!("pkcs11:token=a;{PIN}=x?pin-value=1"),
            format!("pkcs11:token=a;type={PIN}?pin-value=1"),
            format!("pkcs11:token=a?pin-value={PIN}%zz"),
            format!("pkcs11:token=a?pin-value={PIN}&pin-value={PIN}"),
            format!("pkcs11:id=%{PIN}?pin-value=1"),
            format!("pkcs11:token=a?PIN%2DVALUE={PIN}"),
        ] {
            let err = Pkcs11Uri::parse(&uri).unwrap_err();
            assert!(!err.contains(PIN), "{uri}: {err}");
            assert!(!err.contains("Secret"), "{uri}: {err}");
        }
        // Without a PIN in it, the error still shows what is wrong.
        let err = Pkcs11Uri::parse("pkcs11:token=a;tokn=b").unwrap_err();
        assert!(err.contains(r#""tokn""#), "{err}");
        // Parsed, the PIN shows neither in Debug nor in Display.
        let uri = Pkcs11Uri::parse(&format!("pkcs11:token=a?pin-value={PIN}")).unwrap();
        assert_eq!(uri.pin_value.as_ref().map(|p| p.as_str()), Some(PIN));
        assert!(!format!("{uri:?}").contains(PIN), "{uri:?}");
        assert!(format!("{uri:?}").contains("[REDACTED]"));
        assert!(!uri.to_string().contains(PIN));
    }

    /// The query's attributes written in the path are read as in the query: the PIN, its
    /// source, the module; still once each, and still never quoted.
    #[test]
    fn query_attributes_in_the_path_are_read_as_in_the_query() {
        const PIN: &str = "Secret-PIN-4711";
        let uri = Pkcs11Uri::parse(&format!("pkcs11:token=a;object=k;pin-value={PIN}")).unwrap();
        assert_eq!(uri.pin_value.as_ref().map(|p| p.as_str()), Some(PIN));
        assert_eq!(uri.object.as_deref(), Some("k"));
        assert!(!uri.to_string().contains(PIN));
        let uri =
            Pkcs11Uri::parse("pkcs11:token=a;pin-source=env:HSM_PIN;module-path=/m.so").unwrap();
        assert_eq!(uri.pin_source.as_deref(), Some("env:HSM_PIN"));
        assert_eq!(uri.module_path, Some(PathBuf::from("/m.so")));
        let err = Pkcs11Uri::parse(&format!("pkcs11:token=a;pin-value={PIN}?pin-value={PIN}"))
            .unwrap_err();
        assert!(err.contains("pin-value is given twice"), "{err}");
        assert!(!err.contains(PIN), "{err}");
    }
}
