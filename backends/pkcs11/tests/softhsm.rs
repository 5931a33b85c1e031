//! The PKCS#11 signer against a real SoftHSM, and against OpenSC's pkcs11-tool and openssl.

use std::path::Path;
use std::process::Command;

use keybound_signer::{Algorithm, ErrorKind, PinSource, Protection, Signer, testkit};
use keybound_signer_pkcs11::testing::{TestToken, USER_PIN, module_path};
use keybound_signer_pkcs11::{Pkcs11Signer, Pkcs11Uri, generate, list};
use zeroize::Zeroizing;

fn tool(name: &str) -> &str {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join(name).is_file());
    assert!(
        found,
        "{name} is missing: apt-get install opensc openssl (make deps does)"
    );
    name
}

fn pkcs11_tool(token: &TestToken) -> Command {
    let mut cmd = Command::new(tool("pkcs11-tool"));
    cmd.arg("--module")
        .arg(module_path())
        .args(["--token-label", &token.label]);
    cmd
}

fn run(cmd: &mut Command) -> std::process::Output {
    let output = cmd.output().expect("spawn");
    assert!(
        output.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn keys_made_by_keybound_pass_the_conformance_suite() {
    for algorithm in Algorithm::ALL {
        let token = TestToken::new("conf");
        let signer = generate(&token.config("bound"), algorithm, false).unwrap();
        assert_eq!(signer.algorithm(), algorithm);
        testkit::run_all(&signer);
        // Sensitive, not extractable, never extractable, generated in the token.
        match signer.protection() {
            Protection::NonExportable(why) => {
                assert!(
                    why.contains("CKA_NEVER_EXTRACTABLE") && why.contains("CKA_LOCAL: generated"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Opening the key again by its URI gives the same key.
        let again = Pkcs11Signer::open(&token.config("bound")).unwrap();
        assert_eq!(again.public_key(), signer.public_key());
        assert!(!format!("{again:?}").contains(USER_PIN));
    }
}

#[test]
fn the_private_key_cannot_be_read_from_the_token() {
    let token = TestToken::new("read");
    generate(&token.config("secret"), Algorithm::EcdsaP256Sha256, false).unwrap();
    // The token refuses CKA_VALUE (CKR_ATTRIBUTE_SENSITIVE) even to a logged-in user.
    assert!(!token.private_value_readable("secret"));
    // OpenSC's view of the object agrees.
    let listing = run(pkcs11_tool(&token).args([
        "--login",
        "--pin",
        USER_PIN,
        "--list-objects",
        "--type",
        "privkey",
    ]));
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.contains("sensitive") && text.contains("never extractable") && text.contains("local"),
        "{text}"
    );
    assert!(
        !text.contains("extractable,") || text.contains("never extractable"),
        "{text}"
    );
}

#[test]
fn pkcs11_tool_signs_with_a_keybound_key_and_openssl_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let message = dir.path().join("message");
    std::fs::write(&message, b"a challenge, more or less").unwrap();
    for (algorithm, mechanism) in [
        (Algorithm::EcdsaP256Sha256, "ECDSA-SHA256"),
        (Algorithm::Ed25519, "EDDSA"),
    ] {
        let token = TestToken::new("tool");
        let signer = generate(&token.config("k"), algorithm, false).unwrap();
        let public = dir.path().join("public.pem");
        std::fs::write(&public, signer.public_key().to_pem()).unwrap();
        let signature = dir.path().join("signature");
        let mut sign = pkcs11_tool(&token);
        sign.args([
            "--login",
            "--pin",
            USER_PIN,
            "--sign",
            "--label",
            "k",
            "--mechanism",
            mechanism,
        ]);
        if algorithm == Algorithm::EcdsaP256Sha256 {
            // SoftHSM has no CKM_ECDSA_SHA256: hash here, sign the digest with plain ECDSA, DER out.
            let digest = dir.path().join("digest");
            run(Command::new(tool("openssl"))
                .args(["dgst", "-sha256", "-binary", "-out"])
                .arg(&digest)
                .arg(&message));
            sign.args([
                "--mechanism",
                "ECDSA",
                "--signature-format",
                "openssl",
                "-i",
            ])
            .arg(&digest);
        } else {
            sign.arg("-i").arg(&message);
        }
        run(sign.arg("-o").arg(&signature));
        let mut verify = Command::new(tool("openssl"));
        if algorithm == Algorithm::EcdsaP256Sha256 {
            verify
                .args(["dgst", "-sha256", "-verify"])
                .arg(&public)
                .arg("-signature")
                .arg(&signature)
                .arg(&message);
        } else {
            verify
                .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
                .arg(&public)
                .arg("-sigfile")
                .arg(&signature)
                .arg("-in")
                .arg(&message);
        }
        let output = run(&mut verify);
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("Verified")
                || String::from_utf8_lossy(&output.stdout).contains("Success")
        );
    }
}

#[test]
fn keys_made_by_pkcs11_tool_work() {
    for (key_type, algorithm) in [
        ("EC:prime256v1", Algorithm::EcdsaP256Sha256),
        ("EC:edwards25519", Algorithm::Ed25519),
    ] {
        let token = TestToken::new("made");
        run(pkcs11_tool(&token).args([
            "--login",
            "--pin",
            USER_PIN,
            "--keypairgen",
            "--key-type",
            key_type,
            "--label",
            "theirs",
            "--id",
            "10",
            "--usage-sign",
            "--sensitive",
            "--private",
        ]));
        let signer = Pkcs11Signer::open(&token.config("theirs")).unwrap();
        assert_eq!(signer.algorithm(), algorithm, "{key_type}");
        assert!(
            signer.protection().is_hardware(),
            "{:?}",
            signer.protection()
        );
        testkit::run_all(&signer);
        // The key as pkcs11-tool reports it is the key keybound reads.
        let listed = list(
            &module_path(),
            Some(&PinSource::Value(Zeroizing::new(USER_PIN.into()))),
        )
        .unwrap();
        let ours = listed
            .iter()
            .find(|t| t.uri.token.as_deref() == Some(token.label.as_str()))
            .unwrap();
        assert_eq!(ours.keys.len(), 1);
        assert_eq!(
            ours.keys[0].public_key.as_deref(),
            Some(signer.public_key().to_openssh().as_str())
        );
        assert_eq!(ours.keys[0].uri.id.as_deref(), Some(&[0x10][..]));
    }
}

#[test]
fn an_exportable_key_is_reported_and_can_be_refused() {
    let token = TestToken::new("export");
    run(pkcs11_tool(&token).args([
        "--login",
        "--pin",
        USER_PIN,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "soft",
        "--usage-sign",
        "--extractable",
    ]));
    let signer = Pkcs11Signer::open(&token.config("soft")).unwrap();
    assert!(
        !signer.protection().is_hardware(),
        "{:?}",
        signer.protection()
    );
    let mut strict = token.config("soft");
    strict.require_hardware_key = true;
    let error = Pkcs11Signer::open(&strict).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(
        error.to_string().contains("--require-hardware-key"),
        "{error}"
    );
}

#[test]
fn an_existing_key_is_replaced_only_with_overwrite() {
    let token = TestToken::new("over");
    let first = generate(&token.config("k"), Algorithm::Ed25519, false).unwrap();
    let error = generate(&token.config("k"), Algorithm::Ed25519, false).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("never replaces a key without --overwrite"),
        "{error}"
    );
    assert_eq!(
        Pkcs11Signer::open(&token.config("k")).unwrap().public_key(),
        first.public_key()
    );
    let second = generate(&token.config("k"), Algorithm::Ed25519, true).unwrap();
    assert_ne!(second.public_key(), first.public_key());
    assert_eq!(
        Pkcs11Signer::open(&token.config("k")).unwrap().public_key(),
        second.public_key()
    );
}

#[test]
fn a_lost_session_is_reopened() {
    let token = TestToken::new("lost");
    let signer = generate(&token.config("k"), Algorithm::EcdsaP256Sha256, false).unwrap();
    signer.close_session_for_test();
    let signature = signer.sign(b"after the session went away").unwrap();
    signer
        .public_key()
        .verify(b"after the session went away", signature.as_bytes())
        .unwrap();
    // A second signer on the same token logs in again: CKR_USER_ALREADY_LOGGED_IN is fine.
    let other = Pkcs11Signer::open(&token.config("k")).unwrap();
    other.sign(b"x").unwrap();
}

#[test]
fn each_failure_has_its_own_clear_error() {
    let token = TestToken::new("errs");
    generate(&token.config("k"), Algorithm::Ed25519, false).unwrap();
    generate(&token.config("k2"), Algorithm::Ed25519, false).unwrap();
    let expect = |config: keybound_signer::config::Pkcs11Config, kind: ErrorKind, text: &str| {
        let error = Pkcs11Signer::open(&config).unwrap_err();
        let message = error.to_string();
        assert_eq!(error.kind(), kind, "{message}");
        assert!(message.contains(text), "{text:?} not in {message:?}");
        assert!(!message.contains('\n'));
        assert!(!message.contains(USER_PIN) || text.contains(USER_PIN));
    };
    let mut missing = token.config("k");
    missing.module = Some("/no/such/libpkcs11.so".into());
    expect(
        missing,
        ErrorKind::Config,
        "PKCS#11 module /no/such/libpkcs11.so does not exist",
    );

    let mut not_pkcs11 = token.config("k");
    not_pkcs11.module = Some(Path::new("/lib/x86_64-linux-gnu/libz.so.1").into());
    expect(
        not_pkcs11,
        ErrorKind::Config,
        "cannot load PKCS#11 module /lib/x86_64-linux-gnu/libz.so.1",
    );

    let mut no_token = token.config("k");
    no_token.uri = "pkcs11:token=nobody-here;object=k".into();
    expect(
        no_token,
        ErrorKind::KeyNotFound,
        "no token matches pkcs11:token=nobody-here",
    );

    expect(
        token.config("absent"),
        ErrorKind::KeyNotFound,
        "no private key matches",
    );
    let mut ambiguous = token.config("k");
    ambiguous.uri = format!("pkcs11:token={}", token.label);
    expect(ambiguous, ErrorKind::Config, "2 private keys match");

    let mut wrong_pin = token.config("k");
    wrong_pin.pin = Some(PinSource::Value(Zeroizing::new("9999".into())));
    expect(wrong_pin, ErrorKind::Auth, "does not retry a wrong PIN");

    let mut no_pin = token.config("k");
    no_pin.pin = None;
    expect(no_pin, ErrorKind::Config, "needs the user PIN");

    let mut no_module = token.config("k");
    no_module.module = None;
    expect(no_module, ErrorKind::Config, "no PKCS#11 module");

    let mut bad_uri = token.config("k");
    bad_uri.uri = "pkcs11:slot-id=1".into();
    expect(bad_uri, ErrorKind::Config, "never by slot");

    // The lists in the errors are ready-to-paste URIs.
    let mut absent = token.config("absent");
    absent.require_hardware_key = false;
    let message = Pkcs11Signer::open(&absent).unwrap_err().to_string();
    let pasted = message
        .rsplit("keys present: ")
        .next()
        .unwrap()
        .split(", ")
        .next()
        .unwrap();
    Pkcs11Uri::parse(pasted).unwrap();
}
