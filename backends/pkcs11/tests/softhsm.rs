//! The PKCS#11 signer against a real SoftHSM, in process. (Interop with OpenSC's pkcs11-tool runs
//! in the workspace's integration tests, each with its own token store: SoftHSM does not cope
//! with another process writing a token directory this process is busy with.)

use std::path::Path;

use keybound_signer::{Algorithm, ErrorKind, PinSource, Protection, Signer, testkit};
use keybound_signer_pkcs11::testing::{TestToken, USER_PIN};
use keybound_signer_pkcs11::{Pkcs11Signer, Pkcs11Uri, generate};
use zeroize::Zeroizing;

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
    // The error quotes the existing key's own URI (its id, not one picked for the new key).
    let existing = first.uri().to_string();
    assert!(existing.contains(";id=%"), "{existing}");
    assert!(
        error.to_string().contains(&format!("({existing})")),
        "{existing} not in {error}"
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

/// Every reopen reads the PIN file again: a wrong PIN written there is presented once (the token
/// refuses it), then refused here without a login; the right one, written back, signs.
#[test]
fn a_reopen_reads_the_pin_again_and_never_presents_a_refused_one() {
    use std::os::unix::fs::PermissionsExt as _;
    let token = TestToken::new("reread");
    generate(&token.config("k"), Algorithm::Ed25519, false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pin");
    let write = |pin: &str| {
        std::fs::write(&file, pin).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    write(USER_PIN);
    let mut config = token.config("k");
    config.pin = Some(PinSource::File(file.clone()));
    let signer = Pkcs11Signer::open(&config).unwrap();
    signer.sign(b"first").unwrap();

    write("Wrong-PIN-1357");
    signer.close_session_for_test();
    let refused = signer.sign(b"x").unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Auth);
    assert!(
        refused
            .to_string()
            .contains("refused the PIN; keybound does not retry")
            && refused.to_string().contains("send keybound SIGHUP"),
        "{refused}"
    );
    let again = signer.sign(b"x").unwrap_err();
    assert_eq!(again.kind(), ErrorKind::Auth);
    assert!(
        again.to_string().contains(&format!(
            "already refused the PIN that file:{} gives",
            file.display()
        )),
        "{again}"
    );
    assert!(!again.to_string().contains("Wrong-PIN"), "{again}");

    write(USER_PIN);
    signer.sign(b"fixed").unwrap();
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
    ambiguous.uri = format!("pkcs11:token={}", token.label).into();
    expect(ambiguous, ErrorKind::Config, "2 private keys match");

    let mut wrong_pin = token.config("k");
    wrong_pin.pin = Some(PinSource::Value(Zeroizing::new("9999".into())));
    expect(
        wrong_pin.clone(),
        ErrorKind::Auth,
        "does not retry a wrong PIN",
    );
    // The same PIN again is refused here, before any login (the token would say "refused the
    // PIN" again, and count it); the right one still opens the key.
    expect(
        wrong_pin,
        ErrorKind::Auth,
        "already refused the PIN that pin-value:[REDACTED] gives; keybound does not present a refused value again",
    );
    Pkcs11Signer::open(&token.config("k")).unwrap();

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

#[test]
fn a_token_removed_mid_run_is_a_clear_transient_error() {
    let token = TestToken::new("gone");
    let signer = generate(&token.config("k"), Algorithm::EcdsaP256Sha256, false).unwrap();
    signer.sign(b"before").unwrap();

    // The token's files disappear (a pulled token, a store unmounted) between two signatures.
    let dir = token.dir();
    let away = dir.with_extension("away");
    std::fs::rename(&dir, &away).unwrap();
    let during = signer.sign(b"during");
    // Put the files back for the other tests of this process. (SoftHSM scans its token directory
    // only when the module initialises, so this process would not see the token again; a
    // restarted keybound, or a hardware token put back, would.)
    std::fs::rename(&away, &dir).unwrap();
    let error = during.expect_err("a token without its files must not sign");
    let message = error.to_string();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{message}");
    assert!(message.contains(&token.label), "{message}");
    assert!(message.contains("is gone"), "{message}");
    assert!(
        !message.contains('\n') && !message.contains(USER_PIN),
        "{message}"
    );
}
