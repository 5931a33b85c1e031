//! The client state of device keys (the key references, [`KeysFile`], and the join state), and
//! the same as one compact binary record, for a TPM NV slot (about 1 KiB): the join state
//! and the key references of `bkp_device_keys.json`, smaller than their JSON by half.
//!
//! ```text
//! version u8 (1)
//! join state: form u8, then 0 = raw: u16 length + bytes; 1 = JWT: its three base64url parts
//!             decoded, each u16 length + bytes (about a quarter smaller)
//! keys: u8 count, each: time i64 (Unix seconds), reference u8 length + text, public key:
//!       form u8, then 0 = authorized_keys line: u16 length + text; 1 = P-256: the 65-byte
//!       point; 2 = Ed25519: the 32-byte key
//! active u8 (index into keys, 0xff none), history u8 (the first n keys), retired u8 (the next
//! n); the active key is appended after them when it is in neither
//! ```
//!
//! Every compact form is used only when decoding it gives back the same text, so a record reads
//! back exactly what was stored.

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use serde::{Deserialize, Serialize};

/// The file of key references.
pub const DEVICE_KEYS: &str = "bkp_device_keys.json";

/// One key in the device.
#[derive(Clone, Debug, Eq, PartialEq, Serialize, Deserialize)]
pub struct KeyRef {
    /// When it was made (RFC 3339).
    pub time: String,
    /// Where it is: a PKCS#11 URI (token, serial, label, id; no PIN, no module), or the name of
    /// a TPM key file in storage.
    pub key: String,
    /// Its public key, an `authorized_keys` line.
    pub public_key: String,
}

/// The key references: `bkp_device_keys.json`.
#[derive(Clone, Debug, Default, Eq, PartialEq, Serialize, Deserialize)]
pub struct KeysFile {
    /// The key the cluster binds, as far as this client knows.
    #[serde(default)]
    pub active: Option<KeyRef>,
    /// Newest first, at most [`super::state::HISTORY_LENGTH`] (or the store's
    /// [`super::store::StateStore::history_length`]).
    #[serde(default)]
    pub history: Vec<KeyRef>,
    /// Out of the history, still in the token: destroyed after the next result.
    #[serde(default)]
    pub retired: Vec<KeyRef>,
    /// Keys being made (write-ahead): recorded before the device makes them, dropped when the
    /// key's reference joins the history. One left here is a key whose making was interrupted,
    /// never sent to the cluster: destroyed, if it was made, after the next result. PKCS#11
    /// only, so the NV record (TPM only) does not carry it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<Pending>,
}

/// A key being made: PKCS#11, the token's URI with the label drawn for it (its id is chosen
/// as the pair is made).
#[derive(Clone, Debug, Eq, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// When it was recorded (RFC 3339).
    pub time: String,
    /// The reference drawn for it.
    pub key: String,
}

const VERSION: u8 = 1;
const NONE: u8 = 0xff;
const P256_PREFIX: &[u8] = b"\0\0\0\x13ecdsa-sha2-nistp256\0\0\0\x08nistp256\0\0\0\x41";
const ED25519_PREFIX: &[u8] = b"\0\0\0\x0bssh-ed25519\0\0\0\x20";

/// What the store keeps: the key references and the last join state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// `bkp_device_keys.json`'s content.
    pub keys: KeysFile,
    /// The last join state, as the cluster sent it.
    pub join_state: Vec<u8>,
}

/// `stored` as a record.
pub fn encode(stored: &Stored) -> anyhow::Result<Vec<u8>> {
    if !stored.keys.pending.is_empty() {
        // Pending keys are PKCS#11's (a token's label drawn before the pair is made); the record
        // is for a TPM, which records its keys once they exist.
        bail!("keys being made are not kept in a record");
    }
    let mut out = vec![VERSION];
    encode_join_state(&mut out, &stored.join_state)?;
    let keys = &stored.keys;
    let mut list: Vec<&KeyRef> = keys.history.iter().chain(&keys.retired).collect();
    let active = match &keys.active {
        None => NONE,
        Some(active) => match list.iter().position(|k| *k == active) {
            Some(i) => i as u8,
            None => {
                list.push(active);
                (list.len() - 1) as u8
            }
        },
    };
    if list.len() >= NONE as usize {
        bail!("too many keys for one record: {}", list.len());
    }
    out.push(list.len() as u8);
    for key in &list {
        encode_key(&mut out, key)?;
    }
    out.push(active);
    out.push(keys.history.len() as u8);
    out.push(keys.retired.len() as u8);
    Ok(out)
}

/// The record's content.
pub fn decode(bytes: &[u8]) -> anyhow::Result<Stored> {
    let mut r = Reader(bytes);
    if r.u8()? != VERSION {
        bail!("record version {} is not one keybound reads", bytes[0]);
    }
    let join_state = decode_join_state(&mut r)?;
    let count = r.u8()? as usize;
    let mut list = Vec::with_capacity(count);
    for _ in 0..count {
        list.push(decode_key(&mut r)?);
    }
    let active = r.u8()?;
    let history = r.u8()? as usize;
    let retired = r.u8()? as usize;
    let listed = history + retired;
    // The active key is appended after both lists when it is in neither.
    let appended = count == listed + 1 && active as usize == listed;
    if !r.0.is_empty()
        || !(count == listed || appended)
        || (active != NONE && active as usize >= count)
    {
        bail!("the record's lists do not add up");
    }
    let active_key = (active != NONE).then(|| list[active as usize].clone());
    list.truncate(listed);
    let retired = list.split_off(history);
    Ok(Stored {
        keys: KeysFile {
            active: active_key,
            history: list,
            retired,
            pending: Vec::new(),
        },
        join_state,
    })
}

fn put16(out: &mut Vec<u8>, bytes: &[u8]) -> anyhow::Result<()> {
    let len =
        u16::try_from(bytes.len()).map_err(|_| anyhow!("a field of {} bytes", bytes.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn put8(out: &mut Vec<u8>, bytes: &[u8]) -> anyhow::Result<()> {
    let len = u8::try_from(bytes.len()).map_err(|_| anyhow!("a name of {} bytes", bytes.len()))?;
    out.push(len);
    out.extend_from_slice(bytes);
    Ok(())
}

/// The three parts of a compact JWT, decoded, when they encode back to the same text.
fn jwt_parts(jwt: &[u8]) -> Option<Vec<Vec<u8>>> {
    let text = std::str::from_utf8(jwt).ok()?;
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() != 3 {
        return None;
    }
    let decoded: Vec<Vec<u8>> = parts
        .iter()
        .map(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .collect::<Option<_>>()?;
    let again: Vec<String> = decoded.iter().map(|d| URL_SAFE_NO_PAD.encode(d)).collect();
    (again.join(".") == text).then_some(decoded)
}

fn encode_join_state(out: &mut Vec<u8>, jwt: &[u8]) -> anyhow::Result<()> {
    match jwt_parts(jwt) {
        Some(parts) => {
            out.push(1);
            for part in parts {
                put16(out, &part)?;
            }
        }
        None => {
            out.push(0);
            put16(out, jwt)?;
        }
    }
    Ok(())
}

fn decode_join_state(r: &mut Reader<'_>) -> anyhow::Result<Vec<u8>> {
    Ok(match r.u8()? {
        0 => r.take16()?.to_vec(),
        1 => {
            let parts = [r.take16()?, r.take16()?, r.take16()?];
            parts
                .iter()
                .map(|p| URL_SAFE_NO_PAD.encode(p))
                .collect::<Vec<_>>()
                .join(".")
                .into_bytes()
        }
        form => bail!("join state form {form} is unknown"),
    })
}

fn unix_seconds(time: &str) -> i64 {
    time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .map_or(0, |t| t.unix_timestamp())
}

fn rfc3339(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The compact form of an `authorized_keys` line: (form, bytes), when it reads back the same.
fn compact_key(line: &str) -> Option<(u8, Vec<u8>)> {
    let (kind, b64) = line.split_once(' ')?;
    let blob = STANDARD.decode(b64).ok()?;
    let (form, prefix) = match kind {
        "ecdsa-sha2-nistp256" => (1, P256_PREFIX),
        "ssh-ed25519" => (2, ED25519_PREFIX),
        _ => return None,
    };
    let raw = blob.strip_prefix(prefix)?.to_vec();
    (expand_key(form, &raw).as_deref() == Some(line)).then_some((form, raw))
}

fn expand_key(form: u8, raw: &[u8]) -> Option<String> {
    let (kind, prefix, len) = match form {
        1 => ("ecdsa-sha2-nistp256", P256_PREFIX, 65),
        2 => ("ssh-ed25519", ED25519_PREFIX, 32),
        _ => return None,
    };
    if raw.len() != len {
        return None;
    }
    let mut blob = prefix.to_vec();
    blob.extend_from_slice(raw);
    Some(format!("{kind} {}", STANDARD.encode(blob)))
}

fn encode_key(out: &mut Vec<u8>, key: &KeyRef) -> anyhow::Result<()> {
    out.extend_from_slice(&unix_seconds(&key.time).to_be_bytes());
    put8(out, key.key.as_bytes())?;
    match compact_key(&key.public_key) {
        Some((form, raw)) => {
            out.push(form);
            out.extend_from_slice(&raw);
        }
        None => {
            out.push(0);
            put16(out, key.public_key.as_bytes())?;
        }
    }
    Ok(())
}

fn decode_key(r: &mut Reader<'_>) -> anyhow::Result<KeyRef> {
    let time = rfc3339(i64::from_be_bytes(r.take(8)?.try_into()?));
    let len = r.u8()? as usize;
    let key = String::from_utf8(r.take(len)?.to_vec()).context("a key reference")?;
    let public_key = match r.u8()? {
        0 => String::from_utf8(r.take16()?.to_vec()).context("a public key")?,
        form @ (1 | 2) => {
            let raw = r.take(if form == 1 { 65 } else { 32 })?;
            expand_key(form, raw).ok_or_else(|| anyhow!("a public key does not decode"))?
        }
        form => bail!("public key form {form} is unknown"),
    };
    Ok(KeyRef {
        time,
        key,
        public_key,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        if self.0.len() < n {
            bail!("the record ends early");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn take16(&mut self) -> anyhow::Result<&'a [u8]> {
        let len = u16::from_be_bytes(self.take(2)?.try_into()?) as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybound_signer::Signer as _;

    fn key_ref(name: &str, algorithm: keybound_signer::Algorithm) -> KeyRef {
        let signer = keybound_signer_soft::SoftSigner::generate(algorithm).unwrap();
        KeyRef {
            time: "2026-12-05T10:00:00Z".to_owned(),
            key: name.to_owned(),
            public_key: signer.public_key().to_openssh(),
        }
    }

    fn jwt() -> Vec<u8> {
        let part = |v: &str| URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.{}",
            part(r#"{"alg":"ES256","kid":"abc","typ":"JWT"}"#),
            part(r#"{"bot_instance_id":"1234","recovery_sequence":2}"#),
            URL_SAFE_NO_PAD.encode([7u8; 64])
        )
        .into_bytes()
    }

    #[test]
    fn a_record_reads_back_what_was_stored() {
        use keybound_signer::Algorithm::{EcdsaP256Sha256, Ed25519};
        let a = key_ref("0x81000010", EcdsaP256Sha256);
        let b = key_ref("bkp_tpm_0123456789abcdef.pem", Ed25519);
        let c = key_ref("0x81000011", EcdsaP256Sha256);
        let cases = [
            Stored::default(),
            Stored {
                keys: KeysFile {
                    active: Some(a.clone()),
                    history: vec![b.clone(), a.clone()],
                    retired: vec![c.clone()],
                    pending: vec![],
                },
                join_state: jwt(),
            },
            // The active key out of both lists; a join state that is not a JWT.
            Stored {
                keys: KeysFile {
                    active: Some(c.clone()),
                    history: vec![a.clone()],
                    retired: vec![],
                    pending: vec![],
                },
                join_state: b"not a jwt".to_vec(),
            },
            // The active key retired (a crash before the result was stored).
            Stored {
                keys: KeysFile {
                    active: Some(c.clone()),
                    history: vec![a, b],
                    retired: vec![c],
                    pending: vec![],
                },
                join_state: jwt(),
            },
        ];
        for stored in cases {
            let bytes = encode(&stored).unwrap();
            assert_eq!(decode(&bytes).unwrap(), stored);
        }
    }

    #[test]
    fn compact_forms_are_smaller_and_damage_is_an_error() {
        let a = key_ref("0x81000010", keybound_signer::Algorithm::EcdsaP256Sha256);
        let stored = Stored {
            keys: KeysFile {
                active: Some(a.clone()),
                history: vec![a],
                retired: vec![],
                pending: vec![],
            },
            join_state: jwt(),
        };
        let bytes = encode(&stored).unwrap();
        let json = serde_json::to_vec(&stored.keys).unwrap().len() + stored.join_state.len();
        assert!(bytes.len() * 2 < json, "{} vs {json}", bytes.len());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes;
        longer.push(0);
        assert!(decode(&longer).is_err());
    }
}
