//! The TPM signer against a real swtpm, and against tpm2-tools, tpm2-openssl and openssl.

use std::path::Path;
use std::process::Command;

use keybound_signer::config::TpmKey;
use keybound_signer::{Algorithm, ErrorKind, PinSource, PublicKey, Signer, testkit};
use keybound_signer_tpm::testing::{Swtpm, run_ok};
use keybound_signer_tpm::{TpmSigner, generate};
use zeroize::Zeroizing;

const HANDLE: u32 = 0x8100_0100;

/// tpm2-tools leave objects loaded, and a TPM without a resource manager has three slots.
fn flush(tpm: &Swtpm) {
    run_ok(tpm.tool("tpm2_flushcontext").arg("-t"));
}

/// The standard storage primary (keybound's template), made by tpm2-tools into `context`.
fn storage_primary(tpm: &Swtpm, context: &Path) {
    run_ok(
        tpm.tool("tpm2_createprimary")
            .args([
                "-Q",
                "-C",
                "o",
                "-g",
                "sha256",
                "-G",
                "ecc256:null:aes128cfb",
            ])
            .args([
                "-a",
                "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt|noda",
                "-c",
            ])
            .arg(context),
    );
    flush(tpm);
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

#[test]
fn handle_and_file_keys_pass_the_conformance_suite_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut tpm = Swtpm::start();
    let persisted = generate(
        &tpm.config(TpmKey::Handle(HANDLE)),
        Algorithm::EcdsaP256Sha256,
        false,
    )
    .unwrap();
    assert!(persisted.pem.is_none());
    testkit::run_all(&persisted.signer);
    assert!(
        persisted.signer.protection().is_hardware(),
        "{}",
        persisted.signer.protection()
    );
    assert!(
        persisted
            .signer
            .protection()
            .to_string()
            .contains("sensitiveDataOrigin")
    );

    let file = dir.path().join("key.pem");
    let wrapped = generate(
        &tpm.config(TpmKey::File(file.clone())),
        Algorithm::EcdsaP256Sha256,
        false,
    )
    .unwrap();
    let pem = wrapped.pem.clone().unwrap();
    assert!(pem.starts_with("-----BEGIN TSS2 PRIVATE KEY-----"));
    std::fs::write(&file, pem.as_bytes()).unwrap();
    testkit::run_all(&wrapped.signer);

    let (a, b) = (
        persisted.signer.public_key().clone(),
        wrapped.signer.public_key().clone(),
    );
    drop((persisted, wrapped));
    tpm.restart();
    let again = TpmSigner::open(&tpm.config(TpmKey::Handle(HANDLE))).unwrap();
    assert_eq!(again.public_key(), &a);
    testkit::sign_verifies(&again);
    let again = TpmSigner::open(&tpm.config(TpmKey::File(file))).unwrap();
    assert_eq!(again.public_key(), &b);
    testkit::sign_verifies(&again);
}

#[test]
fn keys_made_by_tpm2_tools_work() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start();
    let d = |n: &str| dir.path().join(n);
    storage_primary(&tpm, &d("prim.ctx"));
    run_ok(
        tpm.tool("tpm2_create")
            .args(["-Q", "-C"])
            .arg(d("prim.ctx"))
            .args([
                "-g",
                "sha256",
                "-G",
                "ecc256:ecdsa-sha256",
                "-a",
                "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
                "-u",
            ])
            .arg(d("k.pub"))
            .arg("-r")
            .arg(d("k.priv")),
    );
    flush(&tpm);
    // A TSS2 PEM written by tpm2-tools loads in keybound.
    run_ok(
        tpm.tool("tpm2_encodeobject")
            .arg("-C")
            .arg(d("prim.ctx"))
            .arg("-u")
            .arg(d("k.pub"))
            .arg("-r")
            .arg(d("k.priv"))
            .arg("-o")
            .arg(d("theirs.pem")),
    );
    flush(&tpm);
    let from_file = TpmSigner::open(&tpm.config(TpmKey::File(d("theirs.pem")))).unwrap();
    testkit::run_all(&from_file);
    // The same key persisted by tpm2-tools, used through its handle.
    run_ok(
        tpm.tool("tpm2_load")
            .args(["-Q", "-C"])
            .arg(d("prim.ctx"))
            .arg("-u")
            .arg(d("k.pub"))
            .arg("-r")
            .arg(d("k.priv"))
            .arg("-c")
            .arg(d("k.ctx")),
    );
    flush(&tpm);
    run_ok(
        tpm.tool("tpm2_evictcontrol")
            .args(["-Q", "-C", "o", "-c"])
            .arg(d("k.ctx"))
            .arg("0x81000120"),
    );
    flush(&tpm);
    let from_handle = TpmSigner::open(&tpm.config(TpmKey::Handle(0x8100_0120))).unwrap();
    assert_eq!(from_handle.public_key(), from_file.public_key());
    testkit::sign_verifies(&from_handle);
}

/// A key made outside the TPM and imported (`tpm2_import`, with and without a claimed
/// sensitiveDataOrigin), as a TSS2 PEM and persisted: it signs, but `require_hardware_key`
/// refuses it with one line that says it was imported. The TPM itself refuses to give an
/// imported key fixedTPM, so no import passes for a generated key.
#[test]
fn imported_keys_are_refused_when_a_hardware_key_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start();
    let d = |n: &str| dir.path().join(n);
    storage_primary(&tpm, &d("prim.ctx"));
    run_ok(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(d("outside.pem")),
    );
    let import = |attributes: &str, name: &str| {
        let mut cmd = tpm.tool("tpm2_import");
        cmd.args(["-Q", "-C"])
            .arg(d("prim.ctx"))
            .args(["-G", "ecc", "-i"])
            .arg(d("outside.pem"))
            .args(["-a", attributes, "-u"])
            .arg(d(&format!("{name}.pub")))
            .arg("-r")
            .arg(d(&format!("{name}.priv")));
        cmd
    };
    let refused = import("sign|userwithauth|fixedtpm|fixedparent", "fixed")
        .output()
        .unwrap();
    assert!(!refused.status.success(), "the TPM gave an import fixedTPM");
    flush(&tpm);

    for (attributes, name, handle) in [
        ("sign|userwithauth", "plain", 0x8100_0130u32),
        (
            "sign|userwithauth|sensitivedataorigin",
            "claimed",
            0x8100_0131,
        ),
    ] {
        run_ok(&mut import(attributes, name));
        flush(&tpm);
        run_ok(
            tpm.tool("tpm2_encodeobject")
                .arg("-C")
                .arg(d("prim.ctx"))
                .arg("-u")
                .arg(d(&format!("{name}.pub")))
                .arg("-r")
                .arg(d(&format!("{name}.priv")))
                .arg("-o")
                .arg(d(&format!("{name}.tss2.pem"))),
        );
        flush(&tpm);
        run_ok(
            tpm.tool("tpm2_load")
                .args(["-Q", "-C"])
                .arg(d("prim.ctx"))
                .arg("-u")
                .arg(d(&format!("{name}.pub")))
                .arg("-r")
                .arg(d(&format!("{name}.priv")))
                .arg("-c")
                .arg(d(&format!("{name}.ctx"))),
        );
        flush(&tpm);
        run_ok(
            tpm.tool("tpm2_evictcontrol")
                .args(["-Q", "-C", "o", "-c"])
                .arg(d(&format!("{name}.ctx")))
                .arg(format!("0x{handle:08x}")),
        );
        flush(&tpm);
        for key in [
            TpmKey::File(d(&format!("{name}.tss2.pem"))),
            TpmKey::Handle(handle),
        ] {
            let mut config = tpm.config(key.clone());
            let signer = TpmSigner::open(&config).unwrap();
            testkit::sign_verifies(&signer);
            let protection = signer.protection();
            assert!(!protection.is_hardware(), "{name} {key:?}: {protection}");
            assert!(protection.to_string().contains("imported"), "{protection}");
            config.require_hardware_key = true;
            let error = TpmSigner::open(&config).unwrap_err();
            let message = error.to_string();
            assert_eq!(error.kind(), ErrorKind::Config, "{message}");
            assert!(!message.contains('\n'), "{message}");
            assert!(
                message.contains("imported from outside")
                    && message
                        .contains("--require-hardware-key asks for a key generated in the TPM"),
                "{name} {key:?}: {message}"
            );
        }
    }
}

#[test]
fn tpm2_sign_and_tpm2_openssl_use_keys_keybound_made() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start();
    let d = |n: &str| dir.path().join(n);
    let signer = generate(
        &tpm.config(TpmKey::Handle(HANDLE)),
        Algorithm::EcdsaP256Sha256,
        false,
    )
    .unwrap()
    .signer;
    let public = write_pem(dir.path(), "public.pem", &signer.public_key().to_pem());
    std::fs::write(d("message"), b"sign me, TPM").unwrap();
    run_ok(
        tpm.tool("tpm2_sign")
            .args([
                "-c",
                &format!("0x{HANDLE:08x}"),
                "-g",
                "sha256",
                "-f",
                "plain",
                "-o",
            ])
            .arg(d("sig.der"))
            .arg(d("message")),
    );
    let verified = run_ok(
        tpm.tool("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&public)
            .arg("-signature")
            .arg(d("sig.der"))
            .arg(d("message")),
    );
    assert!(String::from_utf8_lossy(&verified.stdout).contains("Verified OK"));

    // A TSS2 PEM keybound wrote loads in OpenSSL's tpm2 provider, with the same public key.
    let file = d("ours.pem");
    let generated = generate(
        &tpm.config(TpmKey::File(file.clone())),
        Algorithm::EcdsaP256Sha256,
        false,
    )
    .unwrap();
    std::fs::write(&file, generated.pem.unwrap().as_bytes()).unwrap();
    let exported = run_ok(
        tpm.tool("openssl")
            .args([
                "pkey",
                "-provider",
                "tpm2",
                "-provider",
                "default",
                "-pubout",
                "-in",
            ])
            .arg(&file),
    );
    let theirs = String::from_utf8(exported.stdout).unwrap();
    assert_eq!(theirs, generated.signer.public_key().to_pem());
    let _ = PublicKey::from_spki_der(generated.signer.public_key().spki_der()).unwrap();
}

#[test]
fn each_failure_has_its_own_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start();
    let expect =
        |result: Result<TpmSigner, keybound_signer::Error>, kind: ErrorKind, text: &str| {
            let error = result.unwrap_err();
            let message = error.to_string();
            assert_eq!(error.kind(), kind, "{message}");
            assert!(message.contains(text), "{text:?} not in {message:?}");
            assert!(!message.contains('\n'), "{message}");
        };
    expect(
        TpmSigner::open(&tpm.config(TpmKey::Handle(0x8100_0777))),
        ErrorKind::KeyNotFound,
        "no key at persistent handle 0x81000777",
    );
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut unreachable = tpm.config(TpmKey::Handle(HANDLE));
    unreachable.tcti = Some(format!("swtpm:host=127.0.0.1,port={port}"));
    expect(
        TpmSigner::open(&unreachable),
        ErrorKind::Unavailable,
        &format!("cannot reach the TPM at swtpm:host=127.0.0.1,port={port}"),
    );
    let mut socket = tpm.config(TpmKey::Handle(HANDLE));
    socket.tcti = Some("swtpm:path=/run/swtpm.sock".into());
    expect(
        TpmSigner::open(&socket),
        ErrorKind::Config,
        "cannot reach a TPM over a UNIX socket",
    );
    expect(
        generate(
            &tpm.config(TpmKey::Handle(HANDLE)),
            Algorithm::Ed25519,
            false,
        )
        .map(|g| g.signer),
        ErrorKind::Unsupported,
        "TPMs do not make Ed25519 keys",
    );
    expect(
        TpmSigner::open(&tpm.config(TpmKey::Handle(0x4000_0001))),
        ErrorKind::Config,
        "is not a persistent handle",
    );

    // An occupied handle is replaced only with overwrite.
    let first = generate(
        &tpm.config(TpmKey::Handle(HANDLE)),
        Algorithm::EcdsaP256Sha256,
        false,
    )
    .unwrap()
    .signer
    .public_key()
    .clone();
    expect(
        generate(
            &tpm.config(TpmKey::Handle(HANDLE)),
            Algorithm::EcdsaP256Sha256,
            false,
        )
        .map(|g| g.signer),
        ErrorKind::Config,
        "already holds a key; keybound never replaces one without --overwrite",
    );
    let second = generate(
        &tpm.config(TpmKey::Handle(HANDLE)),
        Algorithm::EcdsaP256Sha256,
        true,
    )
    .unwrap()
    .signer
    .public_key()
    .clone();
    assert_ne!(first, second);

    // A key file from another TPM cannot be unwrapped here.
    let other = Swtpm::start();
    let file = dir.path().join("elsewhere.pem");
    let made = generate(
        &other.config(TpmKey::File(file.clone())),
        Algorithm::EcdsaP256Sha256,
        false,
    )
    .unwrap();
    std::fs::write(&file, made.pem.unwrap().as_bytes()).unwrap();
    expect(
        TpmSigner::open(&tpm.config(TpmKey::File(file))),
        ErrorKind::InvalidKey,
        "belongs to another TPM or parent",
    );
    let not_tss2 = write_pem(
        dir.path(),
        "plain.pem",
        "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
    );
    expect(
        TpmSigner::open(&tpm.config(TpmKey::File(not_tss2))),
        ErrorKind::InvalidKey,
        "not a \"TSS2 PRIVATE KEY\"",
    );
}

/// `TPM2_PT_LOCKOUT_COUNTER`, as tpm2-tools read it.
fn lockout_counter(tpm: &Swtpm) -> String {
    let out = String::from_utf8(run_ok(tpm.tool("tpm2_getcap").arg("properties-variable")).stdout)
        .unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix("TPM2_PT_LOCKOUT_COUNTER:"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn a_wrong_auth_value_is_presented_once_and_lockout_is_explained() {
    let tpm = Swtpm::start();
    let mut config = tpm.config(TpmKey::Handle(HANDLE));
    config.auth = Some(PinSource::Value(Zeroizing::new("right-auth-4711".into())));
    let made = generate(&config, Algorithm::EcdsaP256Sha256, false).unwrap();
    testkit::sign_verifies(&made.signer);
    drop(made);
    // Two failures before lockout, so the test sees both messages.
    run_ok(
        tpm.tool("tpm2_dictionarylockout")
            .args(["-s", "-n", "2", "-t", "600", "-l", "600"]),
    );

    config.auth = Some(PinSource::Value(Zeroizing::new("wrong-auth".into())));
    let wrong = TpmSigner::open(&config).unwrap();
    let error = wrong.sign(b"x").unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Auth);
    assert!(error.to_string().contains("does not retry"), "{error}");
    assert!(!error.to_string().contains("wrong-auth"));
    assert_eq!(lockout_counter(&tpm), "0x1", "exactly one attempt was made");

    // The same value again, from the same signer or a fresh one: refused here, not sent.
    let again = wrong.sign(b"x").unwrap_err();
    let reopened = TpmSigner::open(&config).unwrap_err();
    for error in [again, reopened] {
        assert_eq!(error.kind(), ErrorKind::Auth);
        let message = error.to_string();
        assert!(
            message.contains("already refused the authorization value")
                && message.contains("does not present a refused value again"),
            "{message}"
        );
        assert!(!message.contains("wrong-auth"), "{message}");
    }
    assert_eq!(
        lockout_counter(&tpm),
        "0x1",
        "the refused value was not sent again"
    );

    // Another wrong value is sent once and locks the TPM out (limit 2); a third finds it locked.
    config.auth = Some(PinSource::Value(Zeroizing::new("wrong-auth-2".into())));
    TpmSigner::open(&config).unwrap().sign(b"x").unwrap_err();
    assert_eq!(lockout_counter(&tpm), "0x2");
    config.auth = Some(PinSource::Value(Zeroizing::new("wrong-auth-3".into())));
    let last = TpmSigner::open(&config).unwrap().sign(b"x").unwrap_err();
    assert_eq!(last.kind(), ErrorKind::Auth);
    assert!(
        last.to_string()
            .contains("dictionary-attack lockout (inLockout=true"),
        "{last}"
    );
}

#[test]
fn a_tpm_killed_mid_sign_is_a_clear_transient_error_and_the_signer_recovers() {
    let mut tpm = Swtpm::start();
    let signer = generate(
        &tpm.config(TpmKey::Handle(HANDLE)),
        Algorithm::EcdsaP256Sha256,
        false,
    )
    .unwrap()
    .signer;
    signer.sign(b"before").unwrap();

    // Freeze swtpm, start a signature (it blocks on the frozen TPM), then kill swtpm under it.
    let pid = tpm.pid().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let signer = std::sync::Arc::new(signer);
    let (tx, rx) = std::sync::mpsc::channel();
    let signing = signer.clone();
    std::thread::spawn(move || tx.send(signing.sign(b"during")).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(300));
    tpm.kill();
    let error = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the signature must end once the TPM is gone")
        .unwrap_err();
    let message = error.to_string();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{message}");
    assert!(message.contains("the TPM at swtpm:"), "{message}");
    assert!(!message.contains('\n'), "{message}");

    // The TPM comes back (a restarted swtpm or resource manager): the same signer signs again,
    // with the same key.
    tpm.restart();
    let signature = signer.sign(b"after").unwrap();
    signer
        .public_key()
        .verify(b"after", signature.as_bytes())
        .unwrap();
}
