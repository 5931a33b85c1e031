//! The public CA export, read by OpenSSH.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::super::ClusterCa;
use super::super::export::go_query_escape;
use super::{CLUSTER, run_ok, s, ssh_fingerprint, write};

#[test]
fn export_serves_the_public_authorities() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    assert_eq!(ca.export("tls").unwrap(), ca.host_ca_pem());
    assert_eq!(ca.export("tls-host").unwrap(), ca.host_ca_pem());
    assert_eq!(ca.export("tls-user").unwrap(), ca.user_ca_pem());
    assert_eq!(ca.export("windows"), None);

    let wires = ca.ssh_ca_wires();
    let user = ca.export("user").unwrap();
    assert_eq!(
        user,
        format!(
            "cert-authority ssh-ed25519 {} clustername={CLUSTER}&type=user\n",
            B64.encode(&wires[0])
        )
    );
    let host = ca.export("host").unwrap();
    assert_eq!(
        host,
        format!(
            "@cert-authority {CLUSTER},*.{CLUSTER} ssh-ed25519 {} type=host\n",
            B64.encode(&wires[1])
        )
    );
    assert_eq!(ca.export("").unwrap(), format!("{host}{user}"));
    // OpenSSH reads both lines (authorized_keys options, known_hosts marker).
    let path = write(dir.path(), "authorized_keys", &user);
    let out = run_ok("ssh-keygen", &["-l", "-f", s(&path)]);
    let user_fp = ssh_fingerprint(dir.path(), "user_ca.pub", &wires[0]);
    assert!(out.contains(&user_fp), "{out}");
    let path = write(dir.path(), "known_hosts", &host);
    let out = run_ok("ssh-keygen", &["-F", CLUSTER, "-f", s(&path)]);
    assert!(out.contains("@cert-authority"), "{out}");
    assert_eq!(go_query_escape("a b/c.d-e_f~"), "a+b%2Fc.d-e_f~");
}
