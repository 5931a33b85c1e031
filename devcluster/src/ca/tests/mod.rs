//! Checked with tools keybound did not write: `openssl` (verify, x509), `ssh-keygen -L`
//! (which also checks the CA signature while parsing), rustls/webpki, and `x509-cert`.
//!
//! This file holds what the tests share: subject keys as a client sends them, a bot's request,
//! and the runners of the outside tools.

mod export;
mod keys;
mod server;
mod user_ssh;
mod user_tls;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::pkcs8::EncodePublicKey as _;
use rand_core::OsRng;
use x509_cert::der::{Tag, Tagged as _};

use super::BotCertRequest;

const CLUSTER: &str = "dev.example.test";
const INSTANCE: &str = "3c6a8a1e-9d0e-4d1e-8a47-1b0c1f3c2d4e";
const TOKEN: &str = "bot-token";

/// A subject key as the client would send it.
struct Subject {
    spki: Vec<u8>,
    wire: Vec<u8>,
}

fn ssh_wire(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(&u32::try_from(part.len()).unwrap().to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn p256_subject() -> (p256::SecretKey, Subject) {
    let secret = p256::SecretKey::random(&mut OsRng);
    let spki = secret.public_key().to_public_key_der().unwrap().into_vec();
    let point = p256::EncodedPoint::from(secret.public_key());
    let wire = ssh_wire(&[b"ecdsa-sha2-nistp256", b"nistp256", point.as_bytes()]);
    (secret, Subject { spki, wire })
}

fn ed25519_subject() -> Subject {
    let key = ed25519_dalek::SigningKey::generate(&mut OsRng).verifying_key();
    Subject {
        spki: key.to_public_key_der().unwrap().into_vec(),
        wire: ssh_wire(&[b"ssh-ed25519", key.as_bytes()]),
    }
}

/// An RSA-2048 key made and exported by openssl and ssh-keygen.
fn rsa_subject(dir: &Path) -> Subject {
    use std::os::unix::fs::PermissionsExt as _;
    let key = dir.join("rsa.pem");
    let der = dir.join("rsa.pub.der");
    run_ok(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            s(&key),
        ],
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    run_ok(
        "openssl",
        &[
            "pkey",
            "-in",
            s(&key),
            "-pubout",
            "-outform",
            "DER",
            "-out",
            s(&der),
        ],
    );
    let line = run_ok("ssh-keygen", &["-y", "-f", s(&key)]);
    let mut fields = line.split_whitespace();
    assert_eq!(fields.next(), Some("ssh-rsa"));
    Subject {
        spki: std::fs::read(&der).unwrap(),
        wire: B64.decode(fields.next().unwrap()).unwrap(),
    }
}

fn request<'a>(subject: &'a Subject, not_after: SystemTime) -> BotCertRequest<'a> {
    BotCertRequest {
        bot_name: "my bot",
        bot_instance_id: INSTANCE,
        generation: 1,
        tls_public_key_der: &subject.spki,
        ssh_public_key_wire: &subject.wire,
        not_after,
        login_ip: Some("192.0.2.10"),
        join_token_name: TOKEN,
    }
}

fn in_one_hour() -> SystemTime {
    SystemTime::now() + Duration::from_secs(3600)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Runs a tool with TZ=UTC; returns (success, stdout + stderr).
fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .env("TZ", "UTC")
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let (ok, text) = run(program, args);
    assert!(ok, "{program} {args:?} failed:\n{text}");
    text
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// `date -u` rendering of a Unix time, as ssh-keygen -L prints validity under TZ=UTC.
fn utc(unix: u64) -> String {
    run_ok(
        "date",
        &["-u", "-d", &format!("@{unix}"), "+%Y-%m-%dT%H:%M:%S"],
    )
    .trim()
    .to_owned()
}

/// Hex of an SSH string, as ssh-keygen -L dumps extension data it does not know.
fn ssh_string_hex(value: &str) -> String {
    ssh_wire(&[value.as_bytes()])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fingerprint `ssh-keygen -l` gives for an SSH public key blob.
fn ssh_fingerprint(dir: &Path, name: &str, wire: &[u8]) -> String {
    let key = ssh_key::PublicKey::from_bytes(wire).unwrap();
    let path = write(
        dir,
        name,
        format!("{} {}\n", key.algorithm().as_str(), B64.encode(wire)),
    );
    let out = run_ok("ssh-keygen", &["-l", "-f", s(&path)]);
    out.split_whitespace().nth(1).unwrap().to_owned()
}

/// The subject attributes as (dotted OID, string), read back with x509-cert, the way the
/// client reads them: Go writes PrintableString or UTF8String, both must be accepted.
fn name_attributes(name: &x509_cert::name::Name) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            let tag = atv.value.tag();
            assert!(
                matches!(tag, Tag::PrintableString | Tag::Utf8String),
                "{} has string type {tag:?}",
                atv.oid
            );
            let value = std::str::from_utf8(atv.value.value()).unwrap().to_owned();
            out.push((atv.oid.to_string(), value));
        }
    }
    out
}
