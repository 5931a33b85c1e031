//! Keys from other tools load with the public key those tools derive, and keybound's JWS verify
//! with PyJWT.

use std::io::Write as _;
use std::process::{Command, Stdio};

use base64::Engine as _;
use keybound_signer::config::FileConfig;
use keybound_signer::{Algorithm, PublicKey, Signer, jws};
use keybound_signer_soft::SoftSigner;

use crate::support::{openssl_key, python_public_key, run_ok, stdout, tool};

#[test]
fn openssl_keys_give_the_authorized_keys_line_of_other_implementations() {
    let dir = tempfile::tempdir().unwrap();
    for (name, algorithm) in [
        ("ed25519", Algorithm::Ed25519),
        ("P-256", Algorithm::EcdsaP256Sha256),
    ] {
        let path = openssl_key(dir.path(), name, name);
        let signer = SoftSigner::open_file(&FileConfig::new(&path)).unwrap();
        assert_eq!(signer.algorithm(), algorithm);
        let ours = signer.public_key().to_openssh();
        assert_eq!(
            ours,
            python_public_key(&path),
            "{name}: Python cryptography disagrees"
        );

        // The env form of the same file gives the same key and key ID.
        let pem = std::fs::read(&path).unwrap();
        let value = base64::engine::general_purpose::STANDARD.encode(&pem);
        let from_env = SoftSigner::from_env_value("TBOT_BOUND_KEYPAIR_STATIC_KEY", &value).unwrap();
        assert_eq!(from_env.public_key(), signer.public_key());
        assert_eq!(from_env.public_key().key_id(), signer.public_key().key_id());
        assert_eq!(from_env.public_key().to_openssh(), ours);

        // OpenSSH 9.2 reads PKCS#8 P-256 keys (not Ed25519 ones), so ask it too where it can.
        if algorithm == Algorithm::EcdsaP256Sha256 {
            let output = run_ok(
                Command::new(tool("ssh-keygen"))
                    .arg("-y")
                    .arg("-f")
                    .arg(&path),
            );
            assert_eq!(stdout(&output).trim(), ours, "ssh-keygen -y disagrees");
        }
    }
}

#[test]
fn ssh_keygen_fingerprints_match() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["ed25519", "P-256"] {
        let path = openssl_key(dir.path(), name, name);
        let signer = SoftSigner::open_file(&FileConfig::new(&path)).unwrap();
        let pub_path = dir.path().join(format!("{name}.pub"));
        std::fs::write(&pub_path, format!("{}\n", signer.public_key().to_openssh())).unwrap();
        let output = run_ok(
            Command::new(tool("ssh-keygen"))
                .arg("-l")
                .arg("-E")
                .arg("sha256")
                .arg("-f")
                .arg(&pub_path),
        );
        let line = stdout(&output);
        let fingerprint = line.split_whitespace().nth(1).unwrap();
        assert_eq!(fingerprint, signer.public_key().fingerprint());
    }
}

/// Signs a challenge-shaped document with each backend and algorithm and has PyJWT verify it
/// against the public key PEM keybound renders.
#[test]
fn compact_jws_verifies_with_pyjwt() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["ed25519", "P-256"] {
        let path = openssl_key(dir.path(), name, name);
        let pem = std::fs::read(&path).unwrap();
        let from_file = SoftSigner::open_file(&FileConfig::new(&path)).unwrap();
        let from_env = SoftSigner::from_env_value(
            "TBOT_BOUND_KEYPAIR_STATIC_KEY",
            &base64::engine::general_purpose::STANDARD.encode(&pem),
        )
        .unwrap();
        for signer in [&from_file, &from_env] {
            let key = signer.public_key();
            let nonce = format!("{}-{}", signer.backend(), name);
            let challenge = format!(
                r#"{{"iss":"example.com","sub":"{}","aud":"example.com","exp":1760000060,"nbf":1759999990,"iat":1760000000,"nonce":"{nonce}"}}"#,
                key.key_id()
            );
            let token = jws::compact(signer, challenge.as_bytes()).unwrap();
            let signature = token.rsplit('.').next().unwrap();
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(signature)
                .unwrap();
            assert_eq!(raw.len(), 64, "JWS signatures are 64 raw bytes, never DER");

            let pem_path = dir.path().join("pub.pem");
            std::fs::write(&pem_path, key.to_pem()).unwrap();
            let verified = pyjwt_verify(&pem_path, &token);
            assert_eq!(
                verified,
                format!("{} {nonce}", signer.algorithm().jws_alg())
            );

            // PyJWT must refuse a signature over a different payload.
            let mut parts: Vec<&str> = token.split('.').collect();
            let other = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(challenge.replace("example.com", "evil.example"));
            parts[1] = &other;
            assert!(
                pyjwt_verify_fails(&pem_path, &parts.join(".")),
                "tampered JWS verified"
            );
            // keybound's PEM is what the key parses back to.
            assert_eq!(&PublicKey::from_spki_der(key.spki_der()).unwrap(), key);
        }
    }
}

fn pyjwt(pem: &std::path::Path, token: &str) -> std::process::Output {
    let mut child = Command::new(tool("python3"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/tools/verify_jws.py"
        ))
        .arg(pem)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn pyjwt_verify(pem: &std::path::Path, token: &str) -> String {
    let output = pyjwt(pem, token);
    assert!(
        output.status.success(),
        "PyJWT refused: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output).trim().to_owned()
}

fn pyjwt_verify_fails(pem: &std::path::Path, token: &str) -> bool {
    let output = pyjwt(pem, token);
    !output.status.success()
        && String::from_utf8_lossy(&output.stderr).contains("InvalidSignatureError")
}
