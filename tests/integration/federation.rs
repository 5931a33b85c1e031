//! `include_federated_trust_bundles` on a `workload-identity-x509` output: a dev cluster with a
//! `spiffe_federation` whose bundle holds a CA openssl made; with the key on, `svid_bundle.pem`
//! lets `openssl verify` accept a certificate that CA signed (and still the SVID); with it off,
//! the bundle holds the local SPIFFE CA only and openssl refuses that certificate.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use keybound_devcluster::spiffe_federations;
use keybound_teleport::suite::Suite;

use crate::oneshot::{ok, oneshot};
use crate::support::{stdout, tool};
use crate::workload_identity::cluster_with;

fn openssl(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(tool("openssl"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn must(dir: &Path, args: &[&str]) -> String {
    let output = openssl(dir, args);
    assert!(
        output.status.success(),
        "openssl {args:?}: {}{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output)
}

/// A CA of the trust domain `partner.example` and a workload certificate it signed, made by
/// openssl in `dir`; returns the SPIFFE bundle (JWKS) holding the CA.
fn partner_ca(dir: &Path) -> String {
    must(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ca.key",
        ],
    );
    must(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/O=partner.example",
            "-days",
            "1",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-addext",
            "subjectAltName=URI:spiffe://partner.example",
            "-out",
            "ca.pem",
        ],
    );
    must(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "peer.key",
        ],
    );
    must(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "peer.key",
            "-subj",
            "/O=partner.example",
            "-out",
            "peer.csr",
        ],
    );
    std::fs::write(
        dir.join("peer.ext"),
        "subjectAltName=URI:spiffe://partner.example/peer\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    must(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "peer.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "peer.ext",
            "-out",
            "peer.pem",
        ],
    );
    let der = openssl(dir, &["x509", "-in", "ca.pem", "-outform", "DER"]).stdout;
    let x5c = base64::engine::general_purpose::STANDARD.encode(der);
    format!(
        r#"{{"keys": [{{"use": "x509-svid", "kty": "EC", "crv": "P-256", "x5c": ["{x5c}"]}}], "spiffe_refresh_hint": 300}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_bundles_join_svid_bundle_only_when_asked() {
    let scratch = tempfile::tempdir().unwrap();
    let bundle = partner_ca(scratch.path());
    let federation = spiffe_federations::from_value(
        serde_yaml::from_str(&format!(
            "kind: spiffe_federation\nversion: v1\nmetadata: {{name: partner.example}}\nspec: {{bundle_source: {{https_web: {{bundle_endpoint_url: 'https://partner.example/bundle'}}}}}}\nstatus: {{current_bundle: '{bundle}'}}\n"
        ))
        .unwrap(),
    )
    .unwrap();
    let env = cluster_with(Suite::BalancedV1, true, move |c| {
        c.spiffe_federations = vec![federation];
    })
    .await;
    let cfg = env.proxy_config(&[]);
    let mut yaml = std::fs::read_to_string(&cfg).unwrap();
    for (dir, include) in [("fed", true), ("local", false)] {
        yaml.push_str(&format!(
            "  - type: workload-identity-x509\n    destination:\n      type: directory\n      path: {}\n    selector: {{name: svc2}}\n    include_federated_trust_bundles: {include}\n",
            env.path(dir).display()
        ));
    }
    std::fs::write(&cfg, yaml).unwrap();
    ok(&oneshot(&cfg, &[]).await);

    let peer = scratch.path().join("peer.pem");
    let verify = |dir: &str, cert: &Path| {
        Command::new(tool("openssl"))
            .arg("verify")
            .arg("-CAfile")
            .arg(env.path(dir).join("svid_bundle.pem"))
            .arg(cert)
            .output()
            .unwrap()
    };
    for dir in ["fed", "local"] {
        let own = verify(dir, &env.path(dir).join("svid.pem"));
        assert!(own.status.success(), "{dir}: {}", stdout(&own));
    }
    let with = verify("fed", &peer);
    assert!(
        with.status.success() && stdout(&with).trim().ends_with(": OK"),
        "{}{}",
        stdout(&with),
        String::from_utf8_lossy(&with.stderr)
    );
    let without = verify("local", &peer);
    assert!(!without.status.success(), "{}", stdout(&without));
    let local = std::fs::read_to_string(env.path("local").join("svid_bundle.pem")).unwrap();
    let fed = std::fs::read_to_string(env.path("fed").join("svid_bundle.pem")).unwrap();
    assert!(fed.starts_with(&local) && fed.len() > local.len());
}
