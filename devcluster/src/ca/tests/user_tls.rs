//! A user's X.509 certificate: verified by openssl, its subject read back in Go's order.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::super::template::{unix_seconds, unix_seconds_ceil};
use super::super::{ClusterCa, bot_resource_name, oid};
use super::{
    CLUSTER, INSTANCE, TOKEN, in_one_hour, name_attributes, p256_subject, pem, request, run,
    run_ok, s, write,
};

#[test]
fn bot_resource_name_is_teleports() {
    assert_eq!(bot_resource_name("my bot"), "bot-my-bot");
    assert_eq!(bot_resource_name("ci"), "bot-ci");
}

#[test]
fn bot_tls_cert_verifies_with_openssl_and_carries_the_teleport_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    assert_eq!(ca.cluster_name(), CLUSTER);
    let (_, subject) = p256_subject();
    let certs = ca.issue_bot(&request(&subject, in_one_hour())).unwrap();

    // The join's first TLS CA is the user CA, and it signed the bot certificate.
    let cas = ca.tls_ca_ders();
    assert_eq!(cas.len(), 2);
    assert_eq!(cas[0], ca.user_ca_der().to_vec());
    assert_eq!(cas[1], ca.host_ca_der().to_vec());
    assert_eq!(pem("CERTIFICATE", &cas[1]), ca.host_ca_pem());
    let user_ca = write(dir.path(), "user.pem", pem("CERTIFICATE", &cas[0]));
    let host_ca = write(dir.path(), "host.pem", ca.host_ca_pem());
    let bot = write(
        dir.path(),
        "bot.pem",
        pem("CERTIFICATE", &certs.tls_cert_der),
    );
    let out = run_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            s(&user_ca),
            "-purpose",
            "sslclient",
            s(&bot),
        ],
    );
    assert!(out.contains(": OK"), "{out}");
    let (ok, out) = run("openssl", &["verify", "-CAfile", s(&host_ca), s(&bot)]);
    assert!(!ok, "the host CA must not verify a bot certificate:\n{out}");

    // Subject, in Go's RDN order, values as Teleport writes them.
    let subject_lines = run_ok(
        "openssl",
        &[
            "x509",
            "-in",
            s(&bot),
            "-noout",
            "-subject",
            "-nameopt",
            "sep_multiline,oid,utf8",
        ],
    );
    let lines: Vec<&str> = subject_lines.lines().skip(1).map(str::trim).collect();
    assert_eq!(
        lines,
        [
            "2.5.4.7=-teleport-internal-join",
            "2.5.4.9=dev.example.test",
            "2.5.4.17={}",
            "2.5.4.10=bot-my-bot",
            "2.5.4.3=bot-my-bot",
            "1.3.9999.1.7=dev.example.test",
            "1.3.9999.1.9=192.0.2.10",
            "1.3.9999.1.14=1",
            "1.3.9999.2.18=my bot",
            &format!("1.3.9999.2.20={INSTANCE}"),
            r#"1.3.9999.2.21={"meta":{"join_token_name":"bot-token","join_method":"bound_keypair"}}"#,
        ]
    );

    let text = run_ok("openssl", &["x509", "-in", s(&bot), "-noout", "-text"]);
    for expected in [
        "Signature Algorithm: ecdsa-with-SHA256",
        "Issuer: O = dev.example.test, CN = dev.example.test, serialNumber = ",
        "Digital Signature, Key Encipherment",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "CA:FALSE",
        "X509v3 Authority Key Identifier",
        "NIST CURVE: P-256",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    for absent in ["Subject Alternative Name", "1.3.9999.1.13", "CA:TRUE"] {
        assert!(!text.contains(absent), "unexpected {absent:?} in:\n{text}");
    }
}

/// The user CA's certificate: a self-signed CA, O = CN = the cluster's name.
#[test]
fn user_ca_cert_is_self_signed_and_named_after_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let user_ca = write(dir.path(), "user.pem", ca.user_ca_pem());
    let ca_text = run_ok("openssl", &["x509", "-in", s(&user_ca), "-noout", "-text"]);
    for expected in [
        "Subject: O = dev.example.test, CN = dev.example.test, serialNumber = ",
        "CA:TRUE",
        "Certificate Sign",
        "X509v3 Subject Key Identifier",
    ] {
        assert!(
            ca_text.contains(expected),
            "missing {expected:?} in:\n{ca_text}"
        );
    }
    let out = run_ok("openssl", &["verify", "-CAfile", s(&user_ca), s(&user_ca)]);
    assert!(out.contains(": OK"), "{out}");
}

#[test]
fn x509_cert_parse_back_reads_the_teleport_oids() {
    use x509_cert::der::Decode as _;
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let (_, subject) = p256_subject();
    let not_after = in_one_hour();
    let before = unix_seconds(SystemTime::now()).unwrap();
    let certs = ca.issue_bot(&request(&subject, not_after)).unwrap();
    let cert = x509_cert::Certificate::from_der(&certs.tls_cert_der).unwrap();
    let tbs = &cert.tbs_certificate;

    let attrs: BTreeMap<String, String> = name_attributes(&tbs.subject).into_iter().collect();
    assert_eq!(attrs["2.5.4.3"], "bot-my-bot");
    assert_eq!(attrs["2.5.4.10"], "bot-my-bot");
    assert_eq!(attrs[&oid::TELEPORT_CLUSTER.to_string()], CLUSTER);
    assert_eq!(attrs[&oid::LOGIN_IP.to_string()], "192.0.2.10");
    assert_eq!(attrs[&oid::GENERATION.to_string()], "1");
    assert_eq!(attrs[&oid::BOT_NAME.to_string()], "my bot");
    assert_eq!(attrs[&oid::BOT_INSTANCE_ID.to_string()], INSTANCE);
    let join: serde_json::Value =
        serde_json::from_str(&attrs[&oid::JOIN_ATTRIBUTES.to_string()]).unwrap();
    assert_eq!(join["meta"]["join_token_name"], TOKEN);
    assert_eq!(join["meta"]["join_method"], "bound_keypair");
    assert!(!attrs.contains_key(&oid::RENEWABLE.to_string()));

    // tbot takes the cluster name from the issuer's O.
    let issuer = name_attributes(&tbs.issuer);
    assert!(issuer.contains(&("2.5.4.10".to_owned(), CLUSTER.to_owned())));

    // The subject key is the one sent, byte for byte.
    let spki = x509_cert::der::Encode::to_der(&tbs.subject_public_key_info).unwrap();
    assert_eq!(spki, subject.spki);

    // Validity: NotBefore = now - 1 min, NotAfter = the request.
    let nb = tbs.validity.not_before.to_unix_duration().as_secs();
    let na = tbs.validity.not_after.to_unix_duration().as_secs();
    assert!(
        nb + 60 >= before && nb + 60 <= before + 5,
        "not_before {nb}, now {before}"
    );
    assert_eq!(na, unix_seconds_ceil(not_after).unwrap());
    // Random positive serial of at most 128 bits (plus DER's sign byte).
    let serial = tbs.serial_number.as_bytes();
    assert!(serial.len() <= 17 && serial[0] & 0x80 == 0);

    // Generation 0 and no login IP leave their attributes out.
    let mut req = request(&subject, not_after);
    req.generation = 0;
    req.login_ip = None;
    let certs = ca.issue_bot(&req).unwrap();
    let cert = x509_cert::Certificate::from_der(&certs.tls_cert_der).unwrap();
    let oids_present: Vec<String> = name_attributes(&cert.tbs_certificate.subject)
        .into_iter()
        .map(|(oid, _)| oid)
        .collect();
    assert!(
        !oids_present
            .iter()
            .any(|o| *o == oid::GENERATION.to_string() || *o == oid::LOGIN_IP.to_string())
    );
    assert!(
        oids_present
            .iter()
            .any(|o| *o == oid::BOT_INSTANCE_ID.to_string())
    );
}
