//! The soft backend against the conformance suite, every accepted format, and every refusal.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use base64::Engine as _;
use keybound_signer::config::{EnvConfig, FileConfig};
use keybound_signer::{Algorithm, ErrorKind, PublicKey, Signer, testkit};
use keybound_signer_soft::{SoftSigner, Source};

fn write_key(dir: &tempfile::TempDir, name: &str, bytes: &[u8], mode: u32) -> FileConfig {
    let path = dir.path().join(name);
    fs::write(&path, bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    FileConfig::new(path)
}

fn pem_error(pem: &[u8]) -> String {
    SoftSigner::from_pem(pem, Source::File("k.pem".into()))
        .unwrap_err()
        .to_string()
}

#[test]
fn generated_keys_pass_the_conformance_suite() {
    for algorithm in Algorithm::ALL {
        let signer = SoftSigner::generate(algorithm).unwrap();
        assert_eq!(signer.algorithm(), algorithm);
        testkit::run_all(&signer);
    }
}

#[test]
fn pkcs8_round_trips_through_file_and_env_with_the_same_public_key() {
    let dir = tempfile::tempdir().unwrap();
    for algorithm in Algorithm::ALL {
        let generated = SoftSigner::generate(algorithm).unwrap();
        let pem = generated.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.ends_with("-----END PRIVATE KEY-----\n"));

        let file = write_key(&dir, algorithm.as_str(), pem.as_bytes(), 0o600);
        let from_file = SoftSigner::open_file(&file).unwrap();
        let from_env = SoftSigner::from_env_value("KEY", &generated.to_env_value()).unwrap();
        assert_eq!(from_file.backend(), "file");
        assert_eq!(from_env.backend(), "env");
        for signer in [&from_file, &from_env] {
            assert_eq!(signer.public_key(), generated.public_key());
            assert_eq!(
                signer.public_key().key_id(),
                generated.public_key().key_id()
            );
            testkit::run_all(signer);
        }
    }
}

#[test]
fn ed25519_pkcs8_matches_go_and_openssl_layout() {
    // Go's x509.MarshalPKCS8PrivateKey and `openssl genpkey` both write PKCS#8 v1 without the
    // public key: a 48-byte DER starting 302e020100300506032b6570.
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let pem = signer.to_pkcs8_pem();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    assert_eq!(der.len(), 48);
    assert_eq!(
        &der[..12],
        &[
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70
        ]
    );
}

#[test]
fn env_value_tolerates_whitespace_and_rejects_bad_base64() {
    let signer = SoftSigner::generate(Algorithm::EcdsaP256Sha256).unwrap();
    let value = signer.to_env_value();
    let wrapped: String = value
        .as_bytes()
        .chunks(60)
        .map(|c| format!("  {}\r\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let again = SoftSigner::from_env_value("V", &wrapped).unwrap();
    assert_eq!(again.public_key(), signer.public_key());

    let err =
        SoftSigner::from_env_value("TBOT_BOUND_KEYPAIR_STATIC_KEY", "not base64!").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let msg = err.to_string();
    assert!(
        msg.starts_with("env: $TBOT_BOUND_KEYPAIR_STATIC_KEY is not valid base64"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    // Where the bad character is, but not what it is: it is a character of a secret.
    let err = SoftSigner::from_env_value("V", "QUJD%EVG").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("not base64 at offset 4"), "{msg}");
    assert!(!msg.contains('%') && !msg.contains("37"), "{msg}");

    // Unpadded base64 is refused, as Go's StdEncoding refuses it.
    let unpadded = value.trim_end_matches('=');
    if unpadded.len() != value.len() {
        assert!(SoftSigner::from_env_value("V", unpadded).is_err());
    }
    let err = SoftSigner::from_env_value("V", " \n").unwrap_err();
    assert!(err.to_string().contains("$V is empty"), "{err}");
    // The base64 of something that is not PEM.
    let err = SoftSigner::from_env_value("V", "aGVsbG8=").unwrap_err();
    assert_eq!(
        err.to_string(),
        "env: $V: holds no PEM block (-----BEGIN ...-----)"
    );
}

#[test]
fn missing_env_variable_says_what_to_set() {
    let err =
        SoftSigner::open_env(&EnvConfig::new("KEYBOUND_TEST_SURELY_UNSET_VARIABLE")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyNotFound);
    let msg = err.to_string();
    assert!(
        msg.contains("$KEYBOUND_TEST_SURELY_UNSET_VARIABLE is not set"),
        "{msg}"
    );
    assert!(msg.contains("static_private_key_path"), "{msg}");
}

#[test]
fn openssh_and_sec1_keys_load_with_the_public_key_ssh_keygen_wrote() {
    for (pem, public) in [
        (
            &include_bytes!("data/ed25519-openssh.pem")[..],
            include_str!("data/ed25519-openssh.pub"),
        ),
        (
            include_bytes!("data/p256-openssh.pem"),
            include_str!("data/p256-openssh.pub"),
        ),
    ] {
        let signer = SoftSigner::from_pem(pem, Source::Generated).unwrap();
        let expected = PublicKey::from_openssh(public).unwrap();
        assert_eq!(signer.public_key(), &expected);
        // ssh-keygen wrote "<type> <base64> test"; ours is the same without the comment.
        assert_eq!(
            format!("{} test", signer.public_key().to_openssh()),
            public.trim()
        );
        testkit::run_all(&signer);
    }
    let sec1 = SoftSigner::from_pem(
        include_bytes!("data/p256-sec1-with-params.pem"),
        Source::Generated,
    )
    .unwrap();
    assert_eq!(sec1.algorithm(), Algorithm::EcdsaP256Sha256);
    testkit::run_all(&sec1);
}

#[test]
fn unsupported_and_broken_keys_are_refused_by_name() {
    let cases: [(&[u8], &str); 14] = [
        (
            include_bytes!("data/rsa-pkcs8.pem"),
            "k.pem: unsupported key type RSA",
        ),
        (
            include_bytes!("data/rsa-pkcs1.pem"),
            "k.pem: unsupported key type RSA",
        ),
        (
            include_bytes!("data/rsa-openssh.pem"),
            "k.pem: unsupported key type ssh-rsa",
        ),
        (
            include_bytes!("data/p384-pkcs8.pem"),
            "k.pem: unsupported key type ECDSA P-384",
        ),
        (
            include_bytes!("data/p384-sec1.pem"),
            "k.pem: unsupported key type ECDSA P-384",
        ),
        (
            include_bytes!("data/ed448.pem"),
            "k.pem: unsupported key type Ed448",
        ),
        (
            include_bytes!("data/ed25519-encrypted-openssh.pem"),
            "k.pem: is passphrase-protected",
        ),
        (
            include_bytes!("data/ed25519-encrypted-pkcs8.pem"),
            "k.pem: is an encrypted PKCS#8 key",
        ),
        (b"", "k.pem: is empty"),
        (
            b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n",
            "holds a public key",
        ),
        (b"\xff\xfe", "k.pem: is not PEM text"),
        (
            b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0 me@host\n",
            "k.pem: holds a public key; give keybound the private key (an OpenSSH public key",
        ),
        (
            b"\necdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY=\n",
            "holds a public key; give keybound the private key",
        ),
        (
            b"---- BEGIN SSH2 PUBLIC KEY ----\nAAAAC3NzaC1lZDI1NTE5AAAAIE0=\n---- END SSH2 PUBLIC KEY ----\n",
            "holds a public key; give keybound the private key (an SSH2 public key)",
        ),
    ];
    for (pem, expected) in cases {
        let msg = pem_error(pem);
        assert!(msg.contains(expected), "{expected:?} not in {msg:?}");
        assert!(!msg.contains('\n'), "one line: {msg:?}");
    }
    // "Ed25519 or ECDSA P-256" tells the user what would work.
    assert!(
        pem_error(include_bytes!("data/rsa-pkcs8.pem"))
            .ends_with("bound keypairs must be Ed25519 or ECDSA P-256")
    );
}

#[test]
fn truncated_pem_is_refused() {
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let pem = signer.to_pkcs8_pem();
    for cut in [pem.len() - 10, pem.len() / 2, 20] {
        let msg = pem_error(&pem.as_bytes()[..cut]);
        assert!(msg.contains("truncated"), "{msg}");
    }
    // A body cut short but with its END line: valid PEM framing, broken DER.
    let lines: Vec<&str> = pem.lines().collect();
    let short = format!("{}\n{}\n{}\n", lines[0], &lines[1][..20], lines[2]);
    let msg = pem_error(short.as_bytes());
    assert!(msg.starts_with("file: key file k.pem: is not"), "{msg}");
}

#[test]
fn key_files_open_only_when_private() {
    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let pem = signer.to_pkcs8_pem();
    for mode in [0o640, 0o604, 0o644, 0o660] {
        let file = write_key(&dir, &format!("k{mode:o}"), pem.as_bytes(), mode);
        let err = SoftSigner::open_file(&file).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("permissions 0{mode:o} are too open")),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("chmod 600 {}", file.path.display())),
            "{msg}"
        );
    }
    for mode in [0o600, 0o400] {
        let file = write_key(&dir, &format!("ok{mode:o}"), pem.as_bytes(), mode);
        assert!(SoftSigner::open_file(&file).is_ok());
    }

    let missing = FileConfig::new(dir.path().join("missing.pem"));
    let err = SoftSigner::open_file(&missing).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyNotFound);
    assert!(
        err.to_string().contains("missing.pem: cannot open"),
        "{err}"
    );

    let empty = write_key(&dir, "empty", b"", 0o600);
    let err = SoftSigner::open_file(&empty).unwrap_err();
    assert!(err.to_string().contains("empty: is empty"), "{err}");

    let err = SoftSigner::open_file(&FileConfig::new(dir.path())).unwrap_err();
    assert!(err.to_string().contains("is not a regular file"), "{err}");
}

#[test]
fn debug_and_errors_never_show_key_material() {
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let pem = signer.to_pkcs8_pem();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let debug = format!("{signer:?}");
    assert!(!debug.contains(&body[..16]));
    assert!(debug.contains("SHA256:"));
    // A damaged key's error does not echo what it read.
    let damaged = pem.replace("-----END PRIVATE KEY-----", "");
    let msg = pem_error(damaged.as_bytes());
    assert!(!msg.contains(&body[..16]), "{msg}");
}

#[test]
fn a_value_taken_out_of_the_environment_is_still_found() {
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    // Never in the environment: the program handed it over after removing it.
    let name = "KEYBOUND_TEST_TAKEN_KEY";
    assert!(std::env::var_os(name).is_none());
    keybound_signer_soft::keep_env_value(name, signer.to_env_value());
    let opened = SoftSigner::open_env(&EnvConfig::new(name)).unwrap();
    assert_eq!(opened.public_key(), signer.public_key());
    assert_eq!(opened.source(), &Source::Env(name.to_owned()));
}
