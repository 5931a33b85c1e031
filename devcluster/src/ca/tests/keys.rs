//! Subject keys of every type are certified; mismatched or unusable ones are refused.

use std::time::{Duration, SystemTime};

use super::super::ClusterCa;
use super::{
    CLUSTER, Subject, ed25519_subject, in_one_hour, p256_subject, pem, request, rsa_subject,
    run_ok, s, ssh_fingerprint, write,
};

#[test]
fn ed25519_and_rsa_subject_keys_are_certified() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let user_ca = write(dir.path(), "user.pem", ca.user_ca_pem());
    let cases = [
        (
            "ed25519",
            ed25519_subject(),
            "ssh-ed25519-cert-v01@openssh.com",
            "ED25519-CERT",
        ),
        (
            "rsa",
            rsa_subject(dir.path()),
            "ssh-rsa-cert-v01@openssh.com",
            "RSA-CERT",
        ),
    ];
    for (name, subject, cert_type, fp_kind) in cases {
        let certs = ca.issue_bot(&request(&subject, in_one_hour())).unwrap();
        let bot = write(
            dir.path(),
            &format!("{name}.pem"),
            pem("CERTIFICATE", &certs.tls_cert_der),
        );
        let out = run_ok("openssl", &["verify", "-CAfile", s(&user_ca), s(&bot)]);
        assert!(out.contains(": OK"), "{name}: {out}");
        let pubkey = run_ok("openssl", &["x509", "-in", s(&bot), "-noout", "-pubkey"]);
        assert_eq!(pubkey, pem("PUBLIC KEY", &subject.spki), "{name}");

        let cert = ssh_key::Certificate::from_bytes(&certs.ssh_cert_wire).unwrap();
        let path = write(
            dir.path(),
            &format!("{name}-cert.pub"),
            cert.to_openssh().unwrap(),
        );
        let out = run_ok("ssh-keygen", &["-L", "-f", s(&path)]);
        let fp = ssh_fingerprint(dir.path(), &format!("{name}.pub"), &subject.wire);
        assert!(
            out.contains(&format!("Type: {cert_type} user certificate")),
            "{out}"
        );
        assert!(
            out.contains(&format!("Public key: {fp_kind} {fp}")),
            "{out}"
        );
    }
}

#[test]
fn mismatched_or_unusable_keys_are_refused() {
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let (_, p256_a) = p256_subject();
    let (_, p256_b) = p256_subject();
    let ed = ed25519_subject();
    let refused = |spki: &[u8], wire: &[u8]| {
        let subject = Subject {
            spki: spki.to_vec(),
            wire: wire.to_vec(),
        };
        format!(
            "{:#}",
            ca.issue_bot(&request(&subject, in_one_hour())).unwrap_err()
        )
    };
    let err = refused(&p256_a.spki, &ed.wire);
    assert!(err.contains("not the same key"), "{err}");
    assert!(
        err.contains("ECDSA P-256") && err.contains("Ed25519"),
        "{err}"
    );
    let err = refused(&p256_a.spki, &p256_b.wire);
    assert!(err.contains("not the same key"), "{err}");
    let err = refused(&ed.spki, &p256_a.wire);
    assert!(err.contains("not the same key"), "{err}");
    let err = refused(b"not DER", &p256_a.wire);
    assert!(err.contains("SubjectPublicKeyInfo"), "{err}");
    let err = refused(&p256_a.spki, b"not SSH");
    assert!(err.contains("SSH public key"), "{err}");

    // An expiry in the past is refused too.
    let err = ca
        .issue_bot(&request(
            &p256_a,
            SystemTime::now() - Duration::from_secs(5),
        ))
        .unwrap_err();
    assert!(format!("{err:#}").contains("not in the future"), "{err:#}");
}
