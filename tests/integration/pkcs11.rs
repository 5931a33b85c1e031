//! keybound with its key in SoftHSM, run as a user runs it: `keypair create --signer pkcs11`,
//! `signer list`, and a full join with `start --oneshot`. Each test has its own SoftHSM token
//! store (softhsm-fixtures/init-token.sh), handed to each child process in SOFTHSM2_CONF.

use std::path::{Path, PathBuf};
use std::process::Command;

use keybound_signer::PublicKey;

use crate::cluster::{ca_file, cluster_for};
use crate::doctor::{doctor_on, run, single_failure};
use crate::support::{
    assert_no_secret, assert_output_verifies, keybound, openssl_key, run_err, run_ok, stdout, tool,
};

pub(crate) const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The user PIN of every test token: distinctive, so a leak cannot hide among random digits.
pub(crate) const PIN: &str = "Pin-For-Tests-7c41";

/// A private SoftHSM store with one token; the user PIN is in `HSM_PIN` of each command.
pub(crate) struct Hsm {
    _dir: tempfile::TempDir,
    pub(crate) conf: PathBuf,
    token: String,
}

impl Hsm {
    pub(crate) fn new(token: &str) -> Self {
        assert!(
            Path::new(MODULE).exists(),
            "SoftHSM is missing: apt-get install softhsm2"
        );
        let dir = tempfile::tempdir().unwrap();
        let output = run_ok(
            Command::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/softhsm-fixtures/init-token.sh"
            ))
            .arg(dir.path())
            .arg(token)
            .args([PIN, "12345678"]),
        );
        let line = stdout(&output);
        assert!(line.starts_with("export SOFTHSM2_CONF="), "{line}");
        Self {
            conf: dir.path().join("softhsm2.conf"),
            token: token.to_owned(),
            _dir: dir,
        }
    }

    pub(crate) fn keybound(&self) -> Command {
        let mut cmd = keybound();
        cmd.env("SOFTHSM2_CONF", &self.conf).env("HSM_PIN", PIN);
        cmd
    }

    /// OpenSC's pkcs11-tool on this store and token, logged in.
    pub(crate) fn pkcs11_tool(&self) -> Command {
        let mut cmd = Command::new(tool("pkcs11-tool"));
        cmd.env("SOFTHSM2_CONF", &self.conf).args([
            "--module",
            MODULE,
            "--token-label",
            &self.token,
            "--login",
            "--pin",
            PIN,
        ]);
        cmd
    }

    pub(crate) fn uri(&self, object: &str) -> String {
        format!("pkcs11:token={};object={object}", self.token)
    }

    /// Makes the key `object` in the token with `keybound keypair create` and returns its public
    /// key.
    pub(crate) fn create_key(&self, object: &str, algorithm: &str) -> PublicKey {
        let created = run_ok(
            self.keybound()
                .args(["keypair", "create", "--static", "--format", "json"])
                .args(["--algorithm", algorithm])
                .args(self.signer_args(object)),
        );
        let doc: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
        PublicKey::from_openssh(doc["public_key"].as_str().unwrap()).unwrap()
    }

    pub(crate) fn signer_args(&self, object: &str) -> Vec<String> {
        vec![
            "--signer".into(),
            "pkcs11".into(),
            "--pkcs11-uri".into(),
            self.uri(object),
            "--pkcs11-module".into(),
            MODULE.into(),
            "--pin-source".into(),
            "env:HSM_PIN".into(),
        ]
    }
}

#[test]
fn keypair_create_makes_the_key_in_the_token_and_show_and_list_find_it() {
    let hsm = Hsm::new("ci-token");
    let output = run_ok(
        hsm.keybound()
            .args(["keypair", "create", "--static", "--algorithm", "ed25519"])
            .args(hsm.signer_args("bound")),
    );
    let text = stdout(&output);
    let public = text
        .lines()
        .find(|l| l.starts_with('\t'))
        .unwrap()
        .trim()
        .to_owned();
    PublicKey::from_openssh(&public).unwrap();
    assert!(
        text.contains(
            "The key was made inside the token and cannot leave it: pkcs11:token=ci-token"
        ),
        "{text}"
    );
    assert!(text.contains("\t    signer: pkcs11\n"), "{text}");
    assert!(text.contains("\t    pin_source: env:HSM_PIN\n"), "{text}");
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains(PIN),
        "{text}"
    );

    // Again without --overwrite: refused, nothing replaced.
    let error = run_err(
        hsm.keybound()
            .args(["keypair", "create", "--static", "--algorithm", "ed25519"])
            .args(hsm.signer_args("bound")),
    );
    assert!(
        error.contains("never replaces a key without --overwrite"),
        "{error}"
    );

    let shown = run_ok(
        hsm.keybound()
            .args(["keypair", "show", "--format", "json"])
            .args(hsm.signer_args("bound")),
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["public_key"], public.as_str());
    assert_eq!(shown["signer"], "pkcs11");
    assert!(
        shown["protection"]
            .as_str()
            .unwrap()
            .starts_with("non-exportable"),
        "{shown}"
    );

    let listed = stdout(&run_ok(hsm.keybound().args([
        "signer",
        "list",
        "--pkcs11-module",
        MODULE,
        "--pin-source",
        "env:HSM_PIN",
    ])));
    assert!(listed.contains("pkcs11:token=ci-token"), "{listed}");
    let key_uri = listed
        .lines()
        .find(|l| l.contains("object=bound"))
        .expect("the key's line")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    // The listed URI is ready to paste.
    let again = run_ok(
        hsm.keybound()
            .args([
                "keypair",
                "show",
                "--signer",
                "pkcs11",
                "--pkcs11-module",
                MODULE,
                "--pin-source",
                "env:HSM_PIN",
                "--pkcs11-uri",
            ])
            .arg(&key_uri),
    );
    assert!(stdout(&again).contains(&public));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_join_with_the_key_in_softhsm() {
    let hsm = Hsm::new("join-token");
    let created = run_ok(
        hsm.keybound()
            .args([
                "keypair",
                "create",
                "--static",
                "--algorithm",
                "ecdsa-p256",
                "--format",
                "json",
            ])
            .args(hsm.signer_args("bound")),
    );
    let doc: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert!(doc.get("private_key").is_none(), "{doc}");
    let key = PublicKey::from_openssh(doc["public_key"].as_str().unwrap()).unwrap();
    let uri = doc["pkcs11_uri"].as_str().unwrap().to_owned();

    let cluster = cluster_for(&key, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(&cluster, dir.path());
    let out = dir.path().join("out");
    let cfg = dir.path().join("tbot.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v2\nproxy_server: {}\nonboarding:\n  join_method: bound_keypair\n  token: t\n  ca_path: {}\n  bound_keypair:\n    signer: pkcs11\n    pkcs11_uri: \"{uri}\"\n    pkcs11_module: {MODULE}\n    pin_source: env:HSM_PIN\n    require_hardware_key: true\nstorage:\n  type: memory\nservices:\n  - type: identity\n    destination:\n      type: directory\n      path: {}\n",
            cluster.proxy_addr(),
            ca.display(),
            out.display()
        ),
    )
    .unwrap();
    // At the most verbose level every library logs at, the PIN still shows nowhere.
    let mut cmd = hsm.keybound();
    cmd.env("RUST_LOG", "trace")
        .args(["--debug", "start", "--oneshot", "-c"])
        .arg(&cfg);
    let output = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let summary = stdout(&output);
    assert!(
        summary.contains("signer pkcs11 pkcs11:token=join-token"),
        "{summary}"
    );
    assert!(
        summary.contains("key storage:   non-exportable (CKA_SENSITIVE, not CKA_EXTRACTABLE"),
        "{summary}"
    );
    assert!(!stderr.contains(PIN) && !summary.contains(PIN));
    assert_output_verifies(&out);
    assert_eq!(cluster.cluster.joins_completed(), 1);

    // A wrong PIN: a configuration error (78), said once, never retried.
    let mut cmd = hsm.keybound();
    cmd.env("HSM_PIN", "Wrong-PIN-9f3a")
        .env("RUST_LOG", "trace")
        .args(["--debug", "start", "--oneshot", "-c"])
        .arg(&cfg);
    let output = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refused the PIN; keybound does not retry a wrong PIN"),
        "{stderr}"
    );
    assert!(!stderr.contains("Wrong-PIN-9f3a"), "{stderr}");
    assert!(!stdout(&output).contains("Wrong-PIN-9f3a"));
}

#[test]
fn pin_value_in_a_uri_works_with_a_warning_and_bad_settings_are_named() {
    let hsm = Hsm::new("warn-token");
    run_ok(
        hsm.keybound()
            .args(["keypair", "create", "--static", "--algorithm", "ed25519"])
            .args(hsm.signer_args("k")),
    );
    let output = run_ok(
        hsm.keybound()
            .args([
                "keypair",
                "show",
                "--signer",
                "pkcs11",
                "--pkcs11-module",
                MODULE,
                "--pkcs11-uri",
            ])
            .arg(format!("{}?pin-value={PIN}", hsm.uri("k"))),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pin-value: the PIN shows in process listings"),
        "{stderr}"
    );
    // In the URI's path rather than its query: the same key, the same warning.
    let output = run_ok(
        hsm.keybound()
            .args(["keypair", "show", "--signer", "pkcs11", "--pkcs11-module"])
            .args([MODULE, "--pkcs11-uri"])
            .arg(format!("{};pin-value={PIN}", hsm.uri("k"))),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pin-value: the PIN shows in process listings"),
        "{stderr}"
    );
    assert_no_secret(&stderr, PIN, "the PIN");

    for (args, expected) in [
        (
            vec!["--signer", "pkcs11", "--pkcs11-module", MODULE],
            "the pkcs11 signer needs pkcs11_uri",
        ),
        (
            vec!["--signer", "pkcs11", "--pkcs11-uri", "pkcs11:slot-id=0"],
            "never by slot",
        ),
        (
            vec!["--pin-source", "1234"],
            "never given on the command line",
        ),
    ] {
        let output = hsm
            .keybound()
            .args(["keypair", "show"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }

    // A malformed URI that carries a PIN (here a stray `&` in the PIN): the error says what is
    // wrong without quoting the URI, on the command line and in the config file.
    let uri = format!("{}?pin-value={PIN}&{PIN}", hsm.uri("k"));
    let output = hsm
        .keybound()
        .args(["keypair", "show", "--signer", "pkcs11", "--pkcs11-module"])
        .args([MODULE, "--pkcs11-uri", &uri])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("query attribute (not shown: the URI carries pin-value) has no value"),
        "{stderr}"
    );
    assert_no_secret(&stderr, PIN, "the PIN");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tbot.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v2\nproxy_server: 127.0.0.1:9\nonboarding:\n  join_method: bound_keypair\n  token: t\n  bound_keypair:\n    signer: pkcs11\n    pkcs11_uri: \"{uri}\"\nstorage:\n  type: memory\n"
        ),
    )
    .unwrap();
    let output = hsm
        .keybound()
        .args(["start", "--oneshot", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("not shown: the URI carries pin-value"),
        "{stderr}"
    );
    assert_no_secret(&stderr, PIN, "the PIN");
}

#[test]
fn pkcs11_tool_signs_with_a_keybound_key_and_openssl_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let message = dir.path().join("message");
    std::fs::write(&message, b"a challenge, more or less").unwrap();
    for (algorithm, name) in [("ecdsa-p256", "p256"), ("ed25519", "ed")] {
        let hsm = Hsm::new(&format!("sign-{name}"));
        let created = run_ok(
            hsm.keybound()
                .args([
                    "keypair",
                    "create",
                    "--static",
                    "--format",
                    "json",
                    "--algorithm",
                    algorithm,
                ])
                .args(hsm.signer_args("k")),
        );
        let doc: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
        let key = PublicKey::from_openssh(doc["public_key"].as_str().unwrap()).unwrap();
        let public = dir.path().join(format!("{name}.pem"));
        std::fs::write(&public, key.to_pem()).unwrap();
        let signature = dir.path().join(format!("{name}.sig"));
        let mut sign = hsm.pkcs11_tool();
        sign.args(["--sign", "--label", "k"]);
        let mut verify = Command::new(tool("openssl"));
        if algorithm == "ecdsa-p256" {
            // SoftHSM has no CKM_ECDSA_SHA256: hash here, sign the digest, DER out.
            let digest = dir.path().join("digest");
            run_ok(
                Command::new(tool("openssl"))
                    .args(["dgst", "-sha256", "-binary", "-out"])
                    .arg(&digest)
                    .arg(&message),
            );
            sign.args([
                "--mechanism",
                "ECDSA",
                "--signature-format",
                "openssl",
                "-i",
            ])
            .arg(&digest);
            verify
                .args(["dgst", "-sha256", "-verify"])
                .arg(&public)
                .arg("-signature")
                .arg(&signature)
                .arg(&message);
        } else {
            sign.args(["--mechanism", "EDDSA", "-i"]).arg(&message);
            verify
                .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
                .arg(&public)
                .arg("-sigfile")
                .arg(&signature)
                .arg("-in")
                .arg(&message);
        }
        run_ok(sign.arg("-o").arg(&signature));
        let verified = stdout(&run_ok(&mut verify));
        assert!(
            verified.contains("Verified") || verified.contains("Success"),
            "{verified}"
        );
        // And OpenSC sees the object keybound made as sensitive, never extractable, local.
        let objects = stdout(&run_ok(hsm.pkcs11_tool().args([
            "--list-objects",
            "--type",
            "privkey",
        ])));
        assert!(
            objects.contains("sensitive")
                && objects.contains("never extractable")
                && objects.contains("local"),
            "{objects}"
        );
    }
}

#[test]
fn keys_made_by_pkcs11_tool_work_and_exportable_ones_can_be_refused() {
    for (key_type, algorithm) in [
        ("EC:prime256v1", "ecdsa-p256"),
        ("EC:edwards25519", "ed25519"),
    ] {
        let hsm = Hsm::new("theirs");
        run_ok(hsm.pkcs11_tool().args([
            "--keypairgen",
            "--key-type",
            key_type,
            "--label",
            "theirs",
            "--id",
            "10",
            "--usage-sign",
            "--sensitive",
            "--private",
        ]));
        let shown = run_ok(
            hsm.keybound()
                .args([
                    "keypair",
                    "show",
                    "--format",
                    "json",
                    "--require-hardware-key",
                ])
                .args(hsm.signer_args("theirs")),
        );
        let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
        assert_eq!(shown["algorithm"], algorithm, "{key_type}");
        // The public key keybound reads is the one OpenSC reads.
        let exported = tempfile::NamedTempFile::new().unwrap();
        run_ok(
            hsm.pkcs11_tool()
                .args([
                    "--read-object",
                    "--type",
                    "pubkey",
                    "--label",
                    "theirs",
                    "-o",
                ])
                .arg(exported.path()),
        );
        let mut der = std::fs::read(exported.path()).unwrap();
        if der.starts_with(b"-----") {
            // OpenSC writes some key types as PEM.
            use base64::Engine as _;
            let text = String::from_utf8(der).unwrap();
            let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
            der = base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap();
        }
        let theirs = PublicKey::from_spki_der(&der).unwrap();
        assert_eq!(shown["public_key"], theirs.to_openssh().as_str());
        // The listing shows it with its id, ready to paste (after login: --private hides both
        // halves from a session that has not logged in).
        let listed = stdout(&run_ok(hsm.keybound().args([
            "signer",
            "list",
            "--pkcs11-module",
            MODULE,
            "--pin-source",
            "env:HSM_PIN",
        ])));
        assert!(listed.contains("object=theirs;id=%10"), "{listed}");

        run_ok(hsm.pkcs11_tool().args([
            "--keypairgen",
            "--key-type",
            key_type,
            "--label",
            "loose",
            "--usage-sign",
            "--extractable",
        ]));
        let error = run_err(
            hsm.keybound()
                .args(["keypair", "show", "--require-hardware-key"])
                .args(hsm.signer_args("loose")),
        );
        assert!(
            error.contains("exportable") && error.contains("--require-hardware-key"),
            "{error}"
        );
    }
}

/// A key made outside the token and imported with OpenSC (`pkcs11-tool --write-object`): sensitive
/// and not extractable, but not `CKA_LOCAL`, so a copy may exist. It signs, shows as "not
/// generated in the device", and `require_hardware_key` refuses it with one line.
#[test]
fn an_imported_key_is_refused_when_a_hardware_key_is_required() {
    let hsm = Hsm::new("imported");
    let dir = tempfile::tempdir().unwrap();
    let private = openssl_key(dir.path(), "outside.pem", "P-256");
    let (der, public) = (dir.path().join("key.der"), dir.path().join("pub.der"));
    run_ok(
        Command::new(tool("openssl"))
            .args(["pkey", "-outform", "der", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&der),
    );
    run_ok(
        Command::new(tool("openssl"))
            .args(["pkey", "-pubout", "-outform", "der", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public),
    );
    for (file, kind, extra) in [
        (&der, "privkey", &["--sensitive", "--private"][..]),
        (&public, "pubkey", &[][..]),
    ] {
        run_ok(
            hsm.pkcs11_tool()
                .arg("--write-object")
                .arg(file)
                .args(["--type", kind, "--label", "imported", "--id", "20"])
                .arg("--usage-sign")
                .args(extra),
        );
    }
    // OpenSC sees it as sensitive, but neither generated in the token nor never extractable.
    let objects = stdout(&run_ok(hsm.pkcs11_tool().args([
        "--list-objects",
        "--type",
        "privkey",
    ])));
    assert!(
        objects.contains("sensitive") && !objects.contains("local"),
        "{objects}"
    );

    let shown = run_ok(
        hsm.keybound()
            .args(["keypair", "show", "--format", "json"])
            .args(hsm.signer_args("imported")),
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let protection = shown["protection"].as_str().unwrap();
    assert!(
        protection.contains("not generated in the device")
            && protection.contains("not CKA_LOCAL: made outside the token and imported"),
        "{protection}"
    );
    let error = run_err(
        hsm.keybound()
            .args(["keypair", "show", "--require-hardware-key"])
            .args(hsm.signer_args("imported")),
    );
    assert!(
        error.contains("not CKA_LOCAL")
            && error.contains("--require-hardware-key asks for a key generated in the token"),
        "{error}"
    );
}

/// `keybound doctor` with the key in SoftHSM: a good key shows as non-exportable, a missing one
/// points to `signer list`, and a wrong PIN is tried once, reported without the PIN, and leaves
/// the token usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_a_softhsm_key_and_tries_a_wrong_pin_once() {
    let hsm = Hsm::new("doctor-token");
    let key = hsm.create_key("bound", "ed25519");
    let cluster = cluster_for(&key, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(&cluster, dir.path());
    let doctor = |object: &str, pin: &str| {
        let mut cmd = doctor_on(hsm.keybound(), &cluster.proxy_addr());
        cmd.env("HSM_PIN", pin)
            .arg("--ca-path")
            .arg(&ca)
            .args(hsm.signer_args(object));
        run(cmd)
    };

    let output = doctor("bound", PIN).await;
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("ok   signer  pkcs11 pkcs11:token=doctor-token;object=bound")
            && text.contains("non-exportable (CKA_SENSITIVE"),
        "{text}"
    );

    let output = doctor("no-such-key", PIN).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let fail = text.lines().find(|l| l.starts_with("FAIL signer")).unwrap();
    assert!(
        fail.contains("no private key matches") && fail.contains("fix: `keybound signer list"),
        "{fail}"
    );

    let (fail, printed) = single_failure(&doctor("bound", "Wrong-PIN-5d1e").await);
    assert!(
        fail.starts_with("FAIL signer")
            && fail.contains("refused the PIN")
            && fail.contains("does not retry"),
        "{printed}"
    );
    assert!(!printed.contains("Wrong-PIN-5d1e") && !printed.contains(PIN));
    // One wrong login did not lock the token: the right PIN still opens the key.
    assert!(doctor("bound", PIN).await.status.success());
    assert_eq!(cluster.cluster.solutions_received(), 0);
}

/// SoftHSM answers a configuration it cannot use with "Some horrible, unrecoverable error":
/// keybound names the file and the variable instead, for a `SOFTHSM2_CONF` that points nowhere
/// and for one whose token directory is missing.
#[test]
fn a_broken_softhsm2_conf_is_named_with_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.conf");
    let conf = dir.path().join("softhsm2.conf");
    let tokens = dir.path().join("no-tokens-here");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\n",
            tokens.display()
        ),
    )
    .unwrap();
    for (file, expected) in [
        (
            &missing,
            format!(
                "cannot read its configuration file {} (named by $SOFTHSM2_CONF): No such file",
                missing.display()
            ),
        ),
        (
            &conf,
            format!(
                "its configuration file {} (named by $SOFTHSM2_CONF) names the token directory {}, \
                 which does not exist",
                conf.display(),
                tokens.display()
            ),
        ),
    ] {
        for command in [
            &[
                "keypair",
                "show",
                "--signer",
                "pkcs11",
                "--pkcs11-uri",
                "pkcs11:token=t;object=k",
            ][..],
            &["signer", "list", "--signer", "pkcs11"][..],
        ] {
            let error = run_err(
                keybound()
                    .env("SOFTHSM2_CONF", file)
                    .env("HSM_PIN", PIN)
                    .args(command)
                    .args(["--pkcs11-module", MODULE, "--pin-source", "env:HSM_PIN"]),
            );
            assert!(
                error.starts_with(&format!(
                    "error: pkcs11: SoftHSM ({MODULE}) failed to initialise: {expected}"
                )) && error.contains("point SOFTHSM2_CONF at a softhsm2.conf"),
                "{command:?}: {error}"
            );
            assert!(!error.contains("horrible"), "{error}");
        }
    }
}
