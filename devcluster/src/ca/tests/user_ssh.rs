//! A user's SSH certificate, read back by ssh-keygen.

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::super::ClusterCa;
use super::super::template::{unix_seconds, unix_seconds_ceil};
use super::{
    CLUSTER, INSTANCE, in_one_hour, p256_subject, request, run, run_ok, s, ssh_fingerprint,
    ssh_string_hex, ssh_wire, utc, write,
};

#[test]
fn bot_ssh_cert_reads_back_with_ssh_keygen() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let (_, subject) = p256_subject();
    let not_after = in_one_hour();
    let certs = ca.issue_bot(&request(&subject, not_after)).unwrap();
    let cert = ssh_key::Certificate::from_bytes(&certs.ssh_cert_wire).unwrap();
    let path = write(dir.path(), "bot-cert.pub", cert.to_openssh().unwrap());

    // ssh-keygen verifies the CA signature while loading the certificate.
    let out = run_ok("ssh-keygen", &["-L", "-f", s(&path)]);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    let after = unix_seconds(SystemTime::now()).unwrap() - 60;
    let valid_after = cert.valid_after();
    assert!(valid_after <= after && valid_after + 5 >= after);
    let user_ca_fp = ssh_fingerprint(dir.path(), "user_ca.pub", &ca.ssh_ca_wires()[0]);
    let subject_fp = ssh_fingerprint(dir.path(), "subject.pub", &subject.wire);
    for expected in [
        "Type: ecdsa-sha2-nistp256-cert-v01@openssh.com user certificate".to_owned(),
        format!("Public key: ECDSA-CERT {subject_fp}"),
        format!("Signing CA: ED25519 {user_ca_fp} (using ssh-ed25519)"),
        r#"Key ID: "bot-my-bot""#.to_owned(),
        format!(
            "Valid: from {} to {}",
            utc(valid_after),
            utc(unix_seconds_ceil(not_after).unwrap())
        ),
        "Critical Options: (none)".to_owned(),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "missing {expected:?} in:\n{out}"
        );
    }
    let principals = lines.iter().position(|l| *l == "Principals:").unwrap();
    assert_eq!(lines[principals + 1], "-teleport-internal-join");
    assert_eq!(lines[principals + 2], "Critical Options: (none)");

    // Extensions, sorted by name as OpenSSH requires; values are SSH strings.
    let ext_start = lines.iter().position(|l| *l == "Extensions:").unwrap();
    let extensions: Vec<String> = lines[ext_start + 1..]
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| l.to_string())
        .collect();
    let with_value = |name: &str, value: &str| {
        let hex = ssh_string_hex(value);
        format!("{name} UNKNOWN OPTION: {hex} (len {})", hex.len() / 2)
    };
    assert_eq!(
        extensions,
        [
            with_value("bot-instance-id@goteleport.com", INSTANCE),
            with_value("bot-name@goteleport.com", "my bot"),
            with_value("generation", "1"),
            with_value("login-ip", "192.0.2.10"),
            "permit-pty".to_owned(),
            with_value("teleport-roles", r#"{"roles":["bot-my-bot"]}"#),
            with_value("teleport-route-to-cluster", CLUSTER),
            with_value("teleport-traits", "{}"),
        ]
    );
}

#[test]
fn ssh_keygen_refuses_a_bot_ssh_cert_with_a_damaged_signature() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let (_, subject) = p256_subject();
    let certs = ca.issue_bot(&request(&subject, in_one_hour())).unwrap();
    let mut damaged = certs.ssh_cert_wire;
    let last = damaged.len() - 1;
    damaged[last] ^= 0x01;
    let damaged_path = write(
        dir.path(),
        "damaged-cert.pub",
        format!(
            "ecdsa-sha2-nistp256-cert-v01@openssh.com {}\n",
            B64.encode(&damaged)
        ),
    );
    let (ok, out) = run("ssh-keygen", &["-L", "-f", s(&damaged_path)]);
    assert!(!ok, "a damaged certificate was accepted:\n{out}");
}

#[test]
fn bot_ssh_cert_leaves_out_generation_0_and_a_missing_login_ip() {
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let (_, subject) = p256_subject();
    let mut req = request(&subject, in_one_hour());
    req.generation = 0;
    req.login_ip = None;
    let certs = ca.issue_bot(&req).unwrap();
    let cert = ssh_key::Certificate::from_bytes(&certs.ssh_cert_wire).unwrap();
    let names: Vec<&str> = cert.extensions().keys().map(String::as_str).collect();
    assert!(
        !names.contains(&"generation") && !names.contains(&"login-ip"),
        "{names:?}"
    );
    assert!(cert.critical_options().is_empty());
}

#[test]
fn ssh_ca_wires_are_user_then_host() {
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let (_, subject) = p256_subject();
    let certs = ca.issue_bot(&request(&subject, in_one_hour())).unwrap();
    let cert = ssh_key::Certificate::from_bytes(&certs.ssh_cert_wire).unwrap();
    let wires = ca.ssh_ca_wires();
    assert_eq!(wires.len(), 2);
    assert_ne!(wires[0], wires[1]);
    let signer = ssh_key::PublicKey::from(cert.signature_key().clone());
    assert_eq!(signer.to_bytes().unwrap(), wires[0]);
    assert!(wires[0].starts_with(&ssh_wire(&[b"ssh-ed25519"])));
}
