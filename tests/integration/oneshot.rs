//! The setup the output and rejoin tests share: a static key in a file, a dev cluster for it, a
//! tbot.yaml with directory outputs, and `keybound start --oneshot` run as a user runs it.

use std::path::{Path, PathBuf};
use std::process::Output;

use keybound_devcluster::DevCluster;
use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;
use x509_cert::der::Decode as _;

use crate::cluster::{ca_file, cluster_for};
use crate::support::{keybound, stdout};

/// A static key in a file, a dev cluster with the bot `robot` (role `access`, plus whatever
/// `tweak` adds), and its CA bundle.
pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) key: PathBuf,
    pub(crate) public: keybound_signer::PublicKey,
    pub(crate) cluster: DevCluster,
    pub(crate) ca: PathBuf,
}

pub(crate) async fn env(tweak: impl FnOnce(&mut keybound_devcluster::DevClusterConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let key = crate::cluster::key_file(dir.path(), &signer);
    let cluster = cluster_for(signer.public_key(), tweak).await;
    let ca = ca_file(&cluster, dir.path());
    Env {
        dir,
        key,
        public: signer.public_key().clone(),
        cluster,
        ca,
    }
}

impl Env {
    /// A tbot.yaml: `cluster` is `proxy_server: ...` or `auth_server: ...`; each output is a
    /// directory under the scratch dir with optional roles; storage in `storage/`.
    pub(crate) fn config(&self, cluster: &str, top: &str, outputs: &[(&str, &[&str])]) -> PathBuf {
        let mut yaml = format!(
            "version: v2\n{cluster}\nonboarding:\n  join_method: bound_keypair\n  token: t\n  ca_path: {}\n  bound_keypair:\n    static_private_key_path: {}\nstorage:\n  type: directory\n  path: {}\n{top}services:\n",
            self.ca.display(),
            self.key.display(),
            self.path("storage").display()
        );
        for (name, roles) in outputs {
            yaml.push_str(&format!(
                "  - type: identity\n    destination:\n      type: directory\n      path: {}\n",
                self.path(name).display()
            ));
            if !roles.is_empty() {
                yaml.push_str(&format!("    roles: [{}]\n", roles.join(", ")));
            }
        }
        let path = self.path("tbot.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    pub(crate) fn proxy_config(&self, outputs: &[(&str, &[&str])]) -> PathBuf {
        self.config(
            &format!("proxy_server: {}", self.cluster.proxy_addr()),
            "",
            outputs,
        )
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// `keybound start --oneshot -c cfg ...`, off the runtime serving the dev cluster.
pub(crate) async fn oneshot(cfg: &Path, extra: &[&str]) -> Output {
    let mut cmd = keybound();
    cmd.args(["start", "--oneshot", "-c"]).arg(cfg).args(extra);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

pub(crate) fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(output)
}

pub(crate) fn failed(output: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// The subject of a PEM certificate: every (dotted OID, value).
pub(crate) fn subject(pem_path: &Path) -> Vec<(String, String)> {
    let pem = std::fs::read(pem_path).unwrap();
    let (_, der) = pem_rfc7468::decode_vec(&pem).unwrap();
    let cert = x509_cert::Certificate::from_der(&der).unwrap();
    cert.tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .map(|atv| {
            (
                atv.oid.to_string(),
                String::from_utf8_lossy(atv.value.value()).into_owned(),
            )
        })
        .collect()
}

pub(crate) fn values<'a>(attrs: &'a [(String, String)], oid: &str) -> Vec<&'a str> {
    attrs
        .iter()
        .filter(|(o, _)| o == oid)
        .map(|(_, v)| v.as_str())
        .collect()
}
