//! The Proxy's TLS certificate: verified by openssl, and used by rustls in a mutual-TLS
//! handshake with a bot's certificate.

use std::path::Path;
use std::sync::Arc;

use p256::pkcs8::EncodePrivateKey as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use super::super::ClusterCa;
use super::{CLUSTER, in_one_hour, p256_subject, pem, request, run, run_ok, s, write};

#[test]
fn server_cert_verifies_against_the_host_ca_with_the_sans() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let names = [
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let (chain, key) = ca.server_cert(&names).unwrap();
    assert_eq!(chain.len(), 1);
    assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
    let host_ca = write(dir.path(), "host.pem", ca.host_ca_pem());
    let user_ca = write(dir.path(), "user.pem", ca.user_ca_pem());
    let server = write(dir.path(), "server.pem", pem("CERTIFICATE", &chain[0]));
    let out = run_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            s(&host_ca),
            "-purpose",
            "sslserver",
            s(&server),
        ],
    );
    assert!(out.contains(": OK"), "{out}");
    let (ok, out) = run("openssl", &["verify", "-CAfile", s(&user_ca), s(&server)]);
    assert!(
        !ok,
        "the user CA must not verify the proxy certificate:\n{out}"
    );
    let sans = subject_alt_names(&server);
    assert!(
        sans.contains(
            "DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, \
             DNS:teleport.cluster.local, DNS:*.teleport.cluster.local"
        ),
        "{sans}"
    );
    let (key_ok, out) = {
        let key_path = write(
            dir.path(),
            "server.key",
            pem("PRIVATE KEY", key.secret_der()),
        );
        let cert_pub = run_ok("openssl", &["x509", "-in", s(&server), "-noout", "-pubkey"]);
        let key_pub = run_ok("openssl", &["pkey", "-in", s(&key_path), "-pubout"]);
        (cert_pub == key_pub, format!("{cert_pub}\n{key_pub}"))
    };
    assert!(key_ok, "the key does not match the certificate:\n{out}");

    // Names already in the fixed set are not repeated.
    let (chain, _) = ca
        .server_cert(&["teleport.cluster.local".to_owned()])
        .unwrap();
    let server = write(dir.path(), "server2.pem", pem("CERTIFICATE", &chain[0]));
    let sans = subject_alt_names(&server);
    assert_eq!(
        sans.matches("DNS:teleport.cluster.local").count(),
        1,
        "{sans}"
    );
}

/// The subjectAltName extension of a PEM certificate, as openssl prints it.
fn subject_alt_names(cert: &Path) -> String {
    run_ok(
        "openssl",
        &["x509", "-in", s(cert), "-noout", "-ext", "subjectAltName"],
    )
}

/// Drives a TLS handshake between in-memory rustls endpoints.
fn handshake(
    client: rustls::ClientConfig,
    server: rustls::ServerConfig,
    name: &str,
) -> Result<(), rustls::Error> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(client), name)?;
    let mut server = rustls::ServerConnection::new(Arc::new(server))?;
    for _ in 0..20 {
        let mut to_server = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut to_server).unwrap();
        }
        let mut input = to_server.as_slice();
        while !input.is_empty() {
            server.read_tls(&mut input).unwrap();
            server.process_new_packets()?;
        }
        let mut to_client = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut to_client).unwrap();
        }
        let mut input = to_client.as_slice();
        while !input.is_empty() {
            client.read_tls(&mut input).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            return Ok(());
        }
    }
    panic!("the handshake did not finish");
}

#[test]
fn rustls_mutual_tls_with_the_proxy_and_bot_certificates() {
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let (secret, subject) = p256_subject();
    let certs = ca.issue_bot(&request(&subject, in_one_hour())).unwrap();
    let (chain, key) = ca.server_cert(&["localhost".to_owned()]).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let roots = |der: CertificateDer<'static>| {
        let mut store = rustls::RootCertStore::empty();
        store.add(der).unwrap();
        Arc::new(store)
    };
    let server_config = || {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots(ca.user_ca_der()),
            provider.clone(),
        )
        .build()
        .unwrap();
        rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .unwrap()
    };
    let client_config = |trusted: CertificateDer<'static>| {
        let bot_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            secret.to_pkcs8_der().unwrap().as_bytes().to_vec(),
        ));
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(trusted))
            .with_client_auth_cert(
                vec![CertificateDer::from(certs.tls_cert_der.clone())],
                bot_key,
            )
            .unwrap()
    };

    for name in [
        "localhost",
        "teleport.cluster.local",
        "auth.teleport.cluster.local",
    ] {
        handshake(client_config(ca.host_ca_der()), server_config(), name)
            .unwrap_or_else(|err| panic!("{name}: {err}"));
    }
    // Trusting the user CA for the server, or asking for a name not in the SANs, fails.
    assert!(
        handshake(
            client_config(ca.user_ca_der()),
            server_config(),
            "localhost"
        )
        .is_err()
    );
    assert!(
        handshake(
            client_config(ca.host_ca_der()),
            server_config(),
            "example.com"
        )
        .is_err()
    );
}
