//! The bodies of keybound's fuzz targets, one function per target: each feeds untrusted bytes to
//! the public functions keybound itself calls on them. A panic is a finding; an `Err` is the
//! right answer to bad input.
//!
//! The same file is compiled into the integration tests (`tests/integration/fuzz_regressions.rs`),
//! which run every input kept under `tests/data/fuzz-regressions/<target>/` through these
//! functions, so a finding stays fixed without the fuzzer.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keybound::subject_key::SubjectKey;
use keybound_proto::proto as legacy;
use keybound_proto::teleport::join::v1;
use keybound_signer::PublicKey;
use keybound_signer_soft::{SoftSigner, Source};
use keybound_teleport::suite::Suite;
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
    ("attest_evidence", attest_evidence),
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

/// Attestation evidence, from the host being judged: read as `attest verify` reads it, every
/// check run (without roots, so the chains fail: a panic is the finding), the challenge made
/// from it, and each TPM structure and the statement parsed from the raw bytes too.
pub fn attest_evidence(data: &[u8]) {
    use keybound::attest::{challenge, evidence, tpm2, verify};
    let _ = tpm2::PublicArea::from_tpm2b(data, "fuzzed public area");
    let _ = tpm2::CertifyInfo::parse(data);
    let Some(text) = text(data) else { return };
    let _ = evidence::Statement::parse(text);
    let Ok(evidence) = serde_json::from_str::<evidence::Evidence>(text) else {
        return;
    };
    let against = verify::Against {
        roots: Vec::new(),
        expected: verify::Expected::PublicKey(fixtures().ours.clone()),
        nonce: Some("n".to_owned()),
        response: None,
    };
    let checks = verify::verify(&evidence, &against);
    assert!(
        checks.iter().any(|c| !c.ok),
        "with no EK root, some check must fail"
    );
    let _ = challenge::make(&evidence);
}

/// The clock the challenge checks run at, fixed so that inputs reproduce.
const NOW: u64 = 1_760_000_000;

/// The bound key the fuzzed server talks to, and a subject key for results.
struct Fixtures {
    ours: PublicKey,
    subject: SubjectKey,
}

/// The bound key's public half: fixed, so that kept inputs can name its key ID
/// ([`CHALLENGE_KEY_ID`]) and reach the checks behind the `sub` check.
const CHALLENGE_KEY: [u8; 32] = [
    0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
    0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
];

/// The key ID of [`CHALLENGE_KEY`], as a challenge's `sub` names it.
pub const CHALLENGE_KEY_ID: &str = "BuP9j9opu2CrWVV95h7bCuzbIxE0vjDnW0Vfjht5L6k";

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let ours = PublicKey::from_ed25519_bytes(&CHALLENGE_KEY).expect("a valid Ed25519 point");
        assert_eq!(ours.key_id(), CHALLENGE_KEY_ID);
        Fixtures {
            ours,
            subject: SubjectKey::generate(Suite::BalancedV1).expect("P-256 generation cannot fail"),
        }
    })
}

/// The cluster a held identity names, for the challenge checks that know one.
const CLUSTER: &str = "example.com";

/// A challenge document for keybound's own key: the check made before anything is signed,
/// without and with a known cluster. The first byte, if 0, replaces the key named by the server
/// with the fuzzed line that follows up to a newline.
///
/// Beyond "no panic", a document keybound accepts must be one it may sign: Teleport's claims
/// and nothing else, issued by the cluster it names as audience, and times that keep the
/// signature fresh (computed here in `i128`, where nothing wraps).
pub fn challenge_document(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let f = fixtures();
    let ours = f.ours.to_openssh();
    let (key, document) = match text.strip_prefix('\0') {
        Some(rest) => rest.split_once('\n').unwrap_or((rest, "")),
        None => (ours.as_str(), text),
    };
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    let _ = keybound::join::vet_challenge(&f.ours, "fuzz", key, document, None, now);
    let _ = keybound::join::vet_challenge(&f.ours, "fuzz", key, document, Some(CLUSTER), now);
    for cluster in [None, Some(CLUSTER)] {
        if keybound::join::challenge::check(document, &f.ours, cluster, now).is_ok() {
            assert_signable(document, cluster);
        }
    }
}

/// What an accepted challenge document must be (see [`challenge_document`]).
fn assert_signable(document: &str, cluster: Option<&str>) {
    use keybound::join::challenge::{CLOCK_SKEW, MAX_WINDOW};
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(document).expect("an accepted challenge is a JSON object");
    let mut names: Vec<&str> = claims.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["aud", "exp", "iat", "iss", "nbf", "nonce", "sub"],
        "accepted claims other than Teleport's: {document}"
    );
    assert_eq!(claims["sub"], CHALLENGE_KEY_ID, "{document}");
    let iss = claims["iss"].as_str().expect("iss is a string");
    if let Some(cluster) = cluster {
        assert_eq!(
            iss, cluster,
            "accepted another cluster's challenge: {document}"
        );
    }
    let aud_ok = match &claims["aud"] {
        serde_json::Value::String(a) => a == iss,
        serde_json::Value::Array(list) => list.len() == 1 && list[0] == iss,
        _ => false,
    };
    assert!(
        aud_ok,
        "accepted an audience other than the issuer: {document}"
    );
    let time = |name: &str| i128::from(claims[name].as_i64().expect("an integer time"));
    let (nbf, iat, exp, now) = (time("nbf"), time("iat"), time("exp"), i128::from(NOW));
    let skew = i128::from(CLOCK_SKEW.as_secs());
    assert!(
        nbf <= iat && iat < exp,
        "accepted times out of order: {document}"
    );
    assert!(
        exp - nbf <= i128::from(MAX_WINDOW.as_secs()),
        "accepted a window longer than {MAX_WINDOW:?}: {document}"
    );
    assert!(
        (iat - now).abs() <= skew,
        "accepted a stale or future challenge: {document}"
    );
    assert!(
        exp + skew >= now,
        "accepted an expired challenge: {document}"
    );
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
                let _ =
                    keybound::join::vet_challenge(&f.ours, "fuzz", &key, &c.challenge, None, now);
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
                    None,
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
