//! Key attestation on swtpm manufactured with EK certificates: what `TpmSigner::attest`
//! returns, checked with openssl and tpm2-tools, and the credential challenge answered with
//! `activate_credential` (the credential made by `tpm2_makecredential -T none`, no TPM).

use std::path::Path;
use std::process::Command;

use keybound_signer::config::TpmKey;
use keybound_signer::{Algorithm, ErrorKind};
use keybound_signer_tpm::attest::{RSA_EK_CERTIFICATE_INDEX, activate_credential};
use keybound_signer_tpm::generate;
use keybound_signer_tpm::testing::{Manufactured, Swtpm, run_ok};
use sha2::Digest as _;

const HANDLE: u32 = 0x8100_0100;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn key_on(tpm: &Swtpm) -> keybound_signer_tpm::TpmSigner {
    generate(
        &tpm.config(TpmKey::Handle(HANDLE)),
        Algorithm::EcdsaP256Sha256,
        false,
    )
    .expect("generate")
    .signer
}

/// The attestation's parts check out with tools keybound did not write: the EK certificates
/// chain to swtpm's local CA, the AK's signature over the attestation verifies with openssl,
/// and tpm2_print reads the public areas.
#[test]
fn the_attestation_checks_out_with_openssl_and_tpm2_tools() {
    let made = Manufactured::new();
    let tpm = made.start();
    let signer = key_on(&tpm);
    let qualifying = sha2::Sha256::digest(b"statement");
    let att = signer.attest(&qualifying).expect("attest");
    let dir = tempfile::tempdir().unwrap();

    let kinds: Vec<_> = att.ek_certificates.iter().map(|c| c.nv_index).collect();
    assert_eq!(
        kinds,
        [RSA_EK_CERTIFICATE_INDEX, 0x01c0_0016],
        "RSA and ECC P-384"
    );
    for cert in &att.ek_certificates {
        let path = write(
            dir.path(),
            &format!("ek-{:x}.der", cert.nv_index),
            &cert.der,
        );
        let out = run_ok(
            Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(made.root_ca())
                .arg("-untrusted")
                .arg(made.intermediate())
                .arg(&path)
                .env("OPENSSL_CONF", "/dev/null"),
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": OK"));
    }

    // The AK's public key, as tpm2_print gives it, verifies the signature over the attestation.
    let ak_pub = write(dir.path(), "ak.pub", &att.ak_public);
    let out = run_ok(
        Command::new("tpm2_print")
            .args(["-t", "TPM2B_PUBLIC"])
            .arg(&ak_pub),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign"),
        "{text}"
    );
    let ak_pem = dir.path().join("ak.pem");
    run_ok(
        Command::new("tpm2_print")
            .args(["-t", "TPM2B_PUBLIC", "-f", "pem"])
            .arg(&ak_pub)
            .stdout(std::fs::File::create(&ak_pem).unwrap()),
    );
    let attest = write(dir.path(), "certify.attest", &att.attest);
    let sig = p256::ecdsa::Signature::from_scalars(att.signature_r, att.signature_s).unwrap();
    let sig_path = write(dir.path(), "certify.sig", sig.to_der().as_bytes());
    let out = run_ok(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&ak_pem)
            .arg("-signature")
            .arg(&sig_path)
            .arg(&attest),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Verified OK"));
    // The extraData is the qualifying data: magic, type, qualifiedSigner, then extraData.
    let signer_len = usize::from(u16::from_be_bytes([att.attest[6], att.attest[7]]));
    let at = 8 + signer_len;
    assert_eq!(&att.attest[..6], &[0xff, 0x54, 0x43, 0x47, 0x80, 0x17]);
    assert_eq!(&att.attest[at..at + 2], &[0, 32]);
    assert_eq!(&att.attest[at + 2..at + 34], &qualifying[..]);
}

/// The credential challenge: made offline by tpm2_makecredential for the RSA EK and the AK's
/// name, answered by the TPM that holds both, and refused by another TPM.
#[test]
fn the_credential_is_recovered_only_by_the_tpm_that_holds_the_ek() {
    let made = Manufactured::new();
    let tpm = made.start();
    let signer = key_on(&tpm);
    let att = signer.attest(&[7; 32]).expect("attest");
    drop(signer);
    let dir = tempfile::tempdir().unwrap();
    let rsa = att
        .ek_certificates
        .iter()
        .find(|c| c.nv_index == RSA_EK_CERTIFICATE_INDEX)
        .unwrap();
    let ek_der = write(dir.path(), "ek.der", &rsa.der);
    let ek_pem = dir.path().join("ek.pem");
    run_ok(
        Command::new("openssl")
            .args(["x509", "-inform", "der", "-pubkey", "-noout", "-in"])
            .arg(&ek_der)
            .stdout(std::fs::File::create(&ek_pem).unwrap()),
    );
    let name = {
        let mut n = vec![0x00, 0x0b];
        n.extend(sha2::Sha256::digest(&att.ak_public[2..]));
        n.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let secret = write(
        dir.path(),
        "secret.bin",
        b"0123456789abcdef0123456789abcdef",
    );
    let cred = dir.path().join("cred.out");
    run_ok(
        Command::new("tpm2_makecredential")
            .args(["-T", "none", "-G", "rsa", "-u"])
            .arg(&ek_pem)
            .arg("-s")
            .arg(&secret)
            .args(["-n", &name, "-o"])
            .arg(&cred),
    );
    // tpm2-tools' file: magic BADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
    let file = std::fs::read(&cred).unwrap();
    let blob_len = usize::from(u16::from_be_bytes([file[8], file[9]]));
    let blob = &file[10..10 + blob_len];
    let secret_at = 10 + blob_len;
    let encrypted = &file[secret_at + 2..];

    let config = tpm.config(TpmKey::Handle(HANDLE));
    let recovered =
        activate_credential(&config, (&att.ak_public, &att.ak_private), blob, encrypted)
            .expect("activate");
    assert_eq!(recovered.as_slice(), b"0123456789abcdef0123456789abcdef");

    let other = Manufactured::new().start();
    let error = activate_credential(
        &other.config(TpmKey::Handle(HANDLE)),
        (&att.ak_public, &att.ak_private),
        blob,
        encrypted,
    )
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::KeyNotFound, "{error}");
    assert!(error.to_string().contains("another TPM"), "{error}");
}

/// A TPM without EK certificates gives no evidence, and says why.
#[test]
fn a_tpm_without_ek_certificates_is_refused() {
    let tpm = Swtpm::start();
    let signer = key_on(&tpm);
    let error = signer.attest(&[0; 32]).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsupported);
    assert!(
        error
            .to_string()
            .contains("no RSA 2048 EK certificate at NV index 0x01c00002 (EK certificates: none)"),
        "{error}"
    );
}
