//! The bodies of keybound's fuzz targets, one function per target: each feeds untrusted bytes to
//! the public functions keybound itself calls on them. A panic is a finding; an `Err` is the
//! right answer to bad input.
//!
//! The same file is compiled into the integration tests (`tests/integration/fuzz_regressions.rs`),
//! which run every input kept under `tests/data/fuzz-regressions/<target>/` through these
//! functions, so a finding stays fixed without the fuzzer.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keybound::join::subject::SubjectKey;
use keybound::suite::Suite;
use keybound_proto::proto as legacy;
use keybound_proto::teleport::join::v1;
use keybound_signer::{Algorithm, PublicKey, Signer as _};
use keybound_signer_soft::{SoftSigner, Source};
use prost::Message as _;
use zeroize::Zeroizing;

/// A target's body: it panics on a finding.
pub type Target = fn(&[u8]);

/// The targets, by name (`scripts/fuzz.sh` and the regression test use these names).
pub const TARGETS: &[(&str, Target)] = &[
    ("config_yaml", config_yaml),
    ("private_key_pem", private_key_pem),
    ("private_key_env", private_key_env),
    ("pkcs11_uri", pkcs11_uri),
    ("tss2_key_file", tss2_key_file),
    ("challenge_document", challenge_document),
    ("server_messages", server_messages),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A tbot.yaml: parsed, checked, and turned into a signer configuration.
pub fn config_yaml(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(config) = keybound::config::Config::parse(text, "fuzz.yaml") {
        let _ = config.onboarding.signer_config();
        let _ = config.check_destinations();
    }
}

/// A PEM private key file (the `file` backend).
pub fn private_key_pem(data: &[u8]) {
    let _ = SoftSigner::from_pem(data, Source::File("fuzz.pem".into()));
}

/// The value of `TBOT_BOUND_KEYPAIR_STATIC_KEY` (the `env` backend).
pub fn private_key_env(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let _ = SoftSigner::from_env_value("TBOT_BOUND_KEYPAIR_STATIC_KEY", text);
}

/// A PKCS#11 URI (`--pkcs11-uri`, `pkcs11_uri`), parsed and written back.
pub fn pkcs11_uri(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(uri) = keybound_signer_pkcs11::Pkcs11Uri::parse(text) {
        // What keybound writes (never the PIN settings) must read back the same.
        let written = uri.to_string();
        let expected = keybound_signer_pkcs11::Pkcs11Uri {
            pin_source: None,
            pin_value: None,
            ..uri
        };
        assert_eq!(
            keybound_signer_pkcs11::Pkcs11Uri::parse(&written).as_ref(),
            Ok(&expected),
            "{written:?}"
        );
    }
}

/// A TSS2 PEM key file (`--tpm-key-path`), parsed and written back.
pub fn tss2_key_file(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(key) = keybound_signer_tpm::keyfile::KeyFile::from_pem(text) {
        assert_eq!(
            keybound_signer_tpm::keyfile::KeyFile::from_pem(&key.to_pem()).as_ref(),
            Ok(&key),
            "a key file keybound writes must read back the same"
        );
    }
}

/// The clock the challenge checks run at, fixed so that inputs reproduce.
const NOW: u64 = 1_760_000_000;

/// The bound key the fuzzed server talks to, and a subject key for results.
struct Fixtures {
    ours: PublicKey,
    subject: SubjectKey,
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| Fixtures {
        ours: SoftSigner::generate(Algorithm::Ed25519)
            .expect("Ed25519 generation cannot fail")
            .public_key()
            .clone(),
        subject: SubjectKey::generate(Suite::BalancedV1).expect("P-256 generation cannot fail"),
    })
}

/// A challenge document for keybound's own key: the check made before anything is signed.
/// The first byte, if 0, replaces the key named by the server with the fuzzed line that follows
/// up to a newline.
pub fn challenge_document(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let f = fixtures();
    let ours = f.ours.to_openssh();
    let (key, document) = match text.strip_prefix('\0') {
        Some(rest) => rest.split_once('\n').unwrap_or((rest, "")),
        None => (ours.as_str(), text),
    };
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    let _ = keybound::join::vet_challenge(&f.ours, "fuzz", key, document, now);
    let _ = keybound::join::challenge::check(document, &f.ours, now);
}

/// One message from the cluster, decoded as each RPC's response and handed to what the client
/// does with it: the suite of a `ServerInit`, the checks on a challenge, and the certificates of a
/// result.
pub fn server_messages(data: &[u8]) {
    let f = fixtures();
    let now = SystemTime::now();
    if let Ok(message) = v1::JoinResponse::decode(data) {
        use v1::join_response::Payload;
        match message.payload {
            Some(Payload::Init(init)) => {
                let _ = Suite::parse(&init.signature_algorithm_suite);
            }
            Some(Payload::Challenge(v1::Challenge {
                payload: Some(v1::challenge::Payload::BoundKeypairChallenge(c)),
            })) => {
                let key = String::from_utf8_lossy(&c.public_key);
                let _ = keybound::join::vet_challenge(&f.ours, "fuzz", &key, &c.challenge, now);
            }
            Some(Payload::Result(v1::Result {
                payload: Some(v1::result::Payload::BotResult(result)),
            })) => {
                if let Some(certs) = result.certificates {
                    let _ = keybound::identity::Identity::from_wire(
                        Zeroizing::new(f.subject.private_pem.to_string()),
                        f.subject.ssh_authorized.clone(),
                        &certs.tls_cert,
                        &certs.tls_ca_certs,
                        &certs.ssh_cert,
                        &certs.ssh_ca_keys,
                    );
                }
            }
            _ => {}
        }
    }
    if let Ok(message) = legacy::RegisterUsingBoundKeypairMethodResponse::decode(data) {
        use legacy::register_using_bound_keypair_method_response::Response;
        match message.response {
            Some(Response::Challenge(c)) => {
                let _ = keybound::join::vet_challenge(
                    &f.ours,
                    "fuzz",
                    &c.public_key,
                    &c.challenge,
                    now,
                );
            }
            Some(Response::Rotation(r)) => {
                let _ = Suite::from_number(r.signature_algorithm_suite);
            }
            Some(Response::Certs(result)) => {
                if let Some(certs) = result.certs {
                    let _ = keybound::identity::Identity::from_text(
                        Zeroizing::new(f.subject.private_pem.to_string()),
                        f.subject.ssh_authorized.clone(),
                        &certs.tls,
                        &certs.tlsca_certs,
                        &certs.ssh,
                        &certs.sshca_certs,
                    );
                }
            }
            None => {}
        }
    }
}
