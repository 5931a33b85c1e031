//! swtpm for tests: one TPM per test, on random TCP ports, killed and reaped on drop.
//!
//! Ports are even numbers in 20000..=31998 (the control port is the next one), below Linux's
//! ephemeral range so the TCTI's per-command client sockets never take them, and never 2321, so a
//! misconfigured TCTI fails instead of reaching someone's default TPM. libtss2's own logging is
//! silenced by `TSS2_LOG=all+NONE`, which the workspace's `.cargo/config.toml` sets.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use keybound_signer::config::{TpmConfig, TpmKey};

/// A running swtpm with its own state directory.
pub struct Swtpm {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

fn random_even_port() -> u16 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    20000 + 2 * (hasher.finish() % 6000) as u16
}

fn spawn(dir: &Path, port: u16) -> Child {
    Command::new("swtpm")
        .args([
            "socket",
            "--tpm2",
            "--flags",
            "not-need-init,startup-clear",
            "--tpmstate",
        ])
        .arg(format!("dir={}", dir.display()))
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .arg("--log")
        .arg(format!("file={}", dir.join("swtpm.log").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("swtpm is missing: apt-get install swtpm swtpm-tools (make deps does)")
}

/// Waits until both ports answer; `false` if the process exited (its port was taken).
fn ready(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if child.try_wait().expect("poll swtpm").is_some() {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok()
            && TcpStream::connect(("127.0.0.1", port + 1)).is_ok()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("swtpm on port {port} did not become ready in 5 s");
}

impl Swtpm {
    /// Starts a fresh TPM.
    pub fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"))
    }

    /// Starts a TPM on the state directory `dir`.
    fn start_in(dir: tempfile::TempDir) -> Self {
        for _ in 0..20 {
            let port = random_even_port();
            let mut child = spawn(dir.path(), port);
            if ready(&mut child, port) {
                return Self {
                    child: Some(child),
                    port,
                    dir,
                };
            }
        }
        panic!("could not start swtpm after 20 attempts");
    }

    /// A tpm2-tools or openssl command aimed at this TPM (`TPM2TOOLS_TCTI`, `TPM2OPENSSL_TCTI`),
    /// libtss2's log quiet; a tool not on `PATH` fails the test with what to install.
    pub fn tool(&self, name: &str) -> Command {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|d| d.join(name).is_file());
        assert!(
            found,
            "{name} is missing: apt-get install tpm2-tools openssl tpm2-openssl (make deps does)"
        );
        let mut cmd = Command::new(name);
        cmd.env("TPM2TOOLS_TCTI", self.tcti())
            .env("TPM2OPENSSL_TCTI", self.tcti())
            .env("TSS2_LOG", "all+NONE");
        cmd
    }

    /// The TCTI string for this TPM.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// A config for `key` on this TPM.
    pub fn config(&self, key: TpmKey) -> TpmConfig {
        let mut config = TpmConfig::new(key);
        config.tcti = Some(self.tcti());
        config
    }

    /// A direct tss-esapi signer on the key at `handle`: the floor keybound's signer is measured
    /// against.
    pub fn raw_signer(&self, handle: u32) -> RawSigner {
        use std::str::FromStr as _;
        use tss_esapi::handles::{KeyHandle, PersistentTpmHandle, TpmHandle};
        use tss_esapi::interface_types::session_handles::AuthSession;
        let mut ctx = tss_esapi::Context::new(
            tss_esapi::tcti_ldr::TctiNameConf::from_str(&self.tcti()).expect("tcti"),
        )
        .expect("connect");
        let handle = PersistentTpmHandle::new(handle).expect("handle");
        let key = ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(handle)))
            .expect("key");
        ctx.set_sessions((Some(AuthSession::Password), None, None));
        RawSigner {
            ctx,
            key: KeyHandle::from(key),
        }
    }

    /// Where the TPM keeps its state.
    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Shuts the TPM down in an orderly way (`swtpm_ioctl -s`, which does not count against
    /// dictionary-attack protection as a kill does) and starts it again on the same state and
    /// port, as a reboot would.
    pub fn restart(&mut self) {
        self.stop();
        let mut child = spawn(self.dir.path(), self.port);
        assert!(
            ready(&mut child, self.port),
            "swtpm did not come back on port {}",
            self.port
        );
        self.child = Some(child);
    }

    /// Stops the TPM in an orderly way.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("swtpm_ioctl")
                .args(["--tcp", &format!("127.0.0.1:{}", self.port + 1), "-s"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The swtpm process's id, while it runs (to stop it with a signal).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the TPM without warning (what a crash or power loss does).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TPM as a manufacturer ships it: `swtpm_setup --create-ek-cert` made its RSA and ECC
/// endorsement keys and had `swtpm_localca` certify them (NV indices 0x01c00002 and
/// 0x01c00016), under a local root and intermediate of its own. Each [`Manufactured`] is
/// another TPM, with its own EKs and its own CA; [`start`](Self::start) runs a copy of it.
pub struct Manufactured {
    dir: tempfile::TempDir,
}

impl Manufactured {
    /// Manufactures a TPM (about 1.4 s: swtpm_setup runs a TPM and creates the keys). Its CA
    /// lives in its own directory: nothing under /var/lib/swtpm-localca is touched.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = dir.path().join("ca");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&ca).expect("ca dir");
        std::fs::create_dir_all(&state).expect("state dir");
        let localca = dir.path().join("swtpm-localca.conf");
        std::fs::write(
            &localca,
            format!(
                "statedir = {0}\nsigningkey = {0}/signkey.pem\nissuercert = {0}/issuercert.pem\ncertserial = {0}/certserial\n",
                ca.display()
            ),
        )
        .expect("localca config");
        let options = dir.path().join("swtpm-localca.options");
        std::fs::write(
            &options,
            "--platform-manufacturer keybound\n--platform-version 2.1\n--platform-model test\n",
        )
        .expect("localca options");
        let setup = dir.path().join("swtpm_setup.conf");
        std::fs::write(
            &setup,
            format!(
                "create_certs_tool = swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\nactive_pcr_banks = sha256\n",
                localca.display(),
                options.display()
            ),
        )
        .expect("swtpm_setup config");
        let output = Command::new("swtpm_setup")
            .args(["--tpm2", "--create-ek-cert", "--overwrite", "--tpmstate"])
            .arg(&state)
            .arg("--config")
            .arg(&setup)
            .stdin(Stdio::null())
            .output()
            .expect("swtpm_setup is missing: apt-get install swtpm-tools (make deps does)");
        assert!(
            output.status.success(),
            "swtpm_setup failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Self { dir }
    }

    /// The local root CA that (through [`intermediate`](Self::intermediate)) signed the EK
    /// certificates, PEM.
    pub fn root_ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca/swtpm-localca-rootca-cert.pem")
    }

    /// The intermediate CA that signed the EK certificates, PEM.
    pub fn intermediate(&self) -> std::path::PathBuf {
        self.dir.path().join("ca/issuercert.pem")
    }

    /// Starts this TPM: a copy of its state, so each start begins where manufacturing left it.
    pub fn start(&self) -> Swtpm {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy(
            self.dir.path().join("state/tpm2-00.permall"),
            dir.path().join("tpm2-00.permall"),
        )
        .expect("copy the TPM state");
        Swtpm::start_in(dir)
    }
}

impl Default for Manufactured {
    fn default() -> Self {
        Self::new()
    }
}

/// A bare tss-esapi signing loop (see [`Swtpm::raw_signer`]).
pub struct RawSigner {
    ctx: tss_esapi::Context,
    key: tss_esapi::handles::KeyHandle,
}

impl RawSigner {
    /// SHA-256 on the host and `TPM2_Sign`, nothing else.
    pub fn sign(&mut self, message: &[u8]) -> tss_esapi::structures::Signature {
        use sha2::Digest as _;
        use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
        use tss_esapi::interface_types::algorithm::HashingAlgorithm;
        use tss_esapi::structures::{Digest, HashScheme, HashcheckTicket, SignatureScheme};
        let digest = Digest::try_from(sha2::Sha256::digest(message).to_vec()).expect("digest");
        let ticket = HashcheckTicket::try_from(tss_esapi::tss2_esys::TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .expect("ticket");
        self.ctx
            .sign(
                self.key,
                digest,
                SignatureScheme::EcDsa {
                    hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
                },
                ticket,
            )
            .expect("sign")
    }
}

/// Runs `cmd` (libtss2's log quiet), which must succeed; its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let output = cmd.env("TSS2_LOG", "all+NONE").output().expect("spawn");
    assert!(
        output.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
