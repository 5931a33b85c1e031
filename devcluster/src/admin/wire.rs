//! The admin requests' and answers' shapes (JSON), and resource names in request paths.

use serde::{Deserialize, Serialize};

/// The most a request body may hold.
pub(super) const MAX_BODY: usize = 1 << 20;

/// `POST /v1/resources`: `tctl create [-f]`.
#[derive(Debug, Deserialize, Serialize)]
pub(super) struct CreateRequest {
    /// Where the YAML came from (a file name), for errors.
    pub(super) origin: String,
    /// The resources, in Teleport's YAML.
    pub(super) yaml: String,
    /// Replace resources that exist (`tctl create -f`).
    pub(super) force: bool,
}

/// `POST /v1/sign-host`: an SSH host certificate from the host CA (what `tctl auth sign
/// --format=openssh --host=...` gives an OpenSSH node).
#[derive(Debug, Deserialize, Serialize)]
pub(super) struct SignHostRequest {
    /// The host's public key, in `authorized_keys` form.
    pub(super) public_key: String,
    /// The names the certificate is valid for.
    pub(super) principals: Vec<String>,
}

/// The answer to `sign-host`.
#[derive(Debug, Deserialize, Serialize)]
pub(super) struct SignHostAnswer {
    /// The certificate, one OpenSSH line.
    pub(super) certificate: String,
}

/// What `create` did to one resource.
#[derive(Clone, Deserialize, Eq, PartialEq, Serialize)]
pub struct Applied {
    /// Its kind (`token`).
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Whether it replaced one of the same name.
    pub replaced: bool,
    /// The registration secret the cluster generated for a token, shown here once (`get` never
    /// shows it: `crate::secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_secret: Option<String>,
}

impl std::fmt::Debug for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applied")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("replaced", &self.replaced)
            .field(
                "registration_secret",
                &self.registration_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A refusal's body.
#[derive(Debug, Deserialize, Serialize)]
pub(super) struct ErrorBody {
    pub(super) error: String,
}

/// `name` for a request path: every byte but letters, digits and `-._~` as `%XX`.
pub(super) fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A name from a request path; `None` for a malformed escape or bytes that are not UTF-8.
pub(super) fn decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_survive_the_path() {
        for name in ["example-token", "a b/c%d", "bot-ci.v2~x", "Ünïcode"] {
            let encoded = encode(name);
            assert!(
                !encoded.contains('/') && !encoded.contains(' '),
                "{encoded}"
            );
            assert_eq!(decode(&encoded).as_deref(), Some(name));
        }
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%4"), None);
        assert_eq!(decode("%FF"), None);
    }
}
