//! Key attestation end to end on swtpm manufactured with EK certificates (swtpm_setup
//! --create-ek-cert, swtpm_localca): `keypair create --attest-out` and `keypair attest` for a
//! handle key and a TSS2 key file, `attest verify` with no TPM, the same evidence checked
//! independently with openssl, tpm2-tools and ssh-keygen (spec §D5), each tampering caught by
//! its check, and the credential challenge answered by the TPM and refused by another.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use keybound_signer_tpm::testing::{Manufactured, Swtpm};
use sha2::Digest as _;

use crate::support::{keybound, run_err, run_ok, stdout, tool};

/// A manufactured TPM, running, and a directory for the files.
struct Host {
    made: Manufactured,
    tpm: Swtpm,
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        let made = Manufactured::new();
        let tpm = made.start();
        Self {
            made,
            tpm,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// keybound with `--signer tpm` on this TPM and `key`'s flags.
    fn keybound(&self, args: &[&str], key: &[&str]) -> Command {
        let mut cmd = keybound();
        cmd.args(args)
            .args(["--signer", "tpm", "--tpm-tcti", &self.tpm.tcti()])
            .args(key);
        cmd
    }

    /// Makes a key at `handle` and returns its public key line.
    fn key_at(&self, handle: &str) -> String {
        let created = run_ok(&mut self.keybound(
            &["keypair", "create", "--static", "--format", "json"],
            &["--tpm-key-handle", handle],
        ));
        let doc: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
        doc["public_key"].as_str().unwrap().to_owned()
    }

    /// `keypair attest` of the key at `handle` for bot `example`, token `example-token`.
    fn attest(&self, handle: &str, out: &str, extra: &[&str]) -> PathBuf {
        let path = self.path(out);
        let mut cmd = self.keybound(&["keypair", "attest"], &["--tpm-key-handle", handle]);
        cmd.args(["--bot-name", "example", "--token-name", "example-token"])
            .arg("--ek-intermediates")
            .arg(self.made.intermediate())
            .arg("--out")
            .arg(&path)
            .args(extra);
        run_ok(&mut cmd);
        path
    }

    /// `attest verify --format json` against this TPM's root: the exit code and each check's
    /// (ok, detail).
    fn verify(&self, evidence: &Path, args: &[&str]) -> (i32, BTreeMap<String, (bool, String)>) {
        verify_with(evidence, &self.made.root_ca(), args)
    }
}

fn verify_with(
    evidence: &Path,
    root: &Path,
    args: &[&str],
) -> (i32, BTreeMap<String, (bool, String)>) {
    let output = keybound()
        .args(["attest", "verify", "--format", "json", "--ek-ca"])
        .arg(root)
        .arg(evidence)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{stderr}", stdout(&output)));
    let checks = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_owned(),
                (
                    c["ok"].as_bool().unwrap(),
                    c["detail"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect::<BTreeMap<_, _>>();
    let all_ok = checks.values().all(|(ok, _)| *ok);
    assert_eq!(doc["ok"].as_bool(), Some(all_ok));
    (output.status.code().unwrap(), checks)
}

/// The checks that failed, by name.
fn failed(checks: &BTreeMap<String, (bool, String)>) -> Vec<&str> {
    checks
        .iter()
        .filter(|(_, (ok, _))| !ok)
        .map(|(name, _)| name.as_str())
        .collect()
}

fn field(evidence: &Path, name: &str) -> Vec<u8> {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(evidence).unwrap()).unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(doc[name].as_str().unwrap())
        .unwrap()
}

/// A copy of `evidence` with `change` applied to its JSON.
fn tampered(evidence: &Path, name: &str, change: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(evidence).unwrap()).unwrap();
    change(&mut doc);
    let path = evidence.with_file_name(name);
    std::fs::write(&path, serde_json::to_string(&doc).unwrap()).unwrap();
    path
}

fn b64(bytes: &[u8]) -> serde_json::Value {
    base64::engine::general_purpose::STANDARD
        .encode(bytes)
        .into()
}

fn token_yaml(dir: &Path, name: &str, bot: &str, key: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "kind: token\nversion: v2\nmetadata:\n  name: {name}\nspec:\n  bot_name: {bot}\n  join_method: bound_keypair\n  roles: [Bot]\n  bound_keypair:\n    onboarding:\n      initial_public_key: {key}\n    recovery:\n      limit: 1\n      mode: insecure\n"
        ),
    )
    .unwrap();
    path
}

fn tpm_tool(tpm: &Swtpm, name: &str) -> Command {
    let mut cmd = Command::new(tool(name));
    cmd.env("TPM2TOOLS_TCTI", tpm.tcti())
        .env("TSS2_LOG", "all+NONE");
    cmd
}

fn text(output: &Output) -> String {
    stdout(output)
}

/// §D5 with tools keybound did not write: the EK certificate chains with openssl; tpm2_print
/// reads the AK as an attestation key and its name is 000b‖SHA-256 of its public area; openssl
/// verifies the AK's signature over the attestation; the attestation's extraData is openssl's
/// SHA-256 of the statement and its name the key's; the key is fixedTPM, and ssh-keygen turns it
/// into the statement's key.
fn check_independently(host: &Host, evidence: &Path) {
    let dir = host.dir.path();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(evidence).unwrap()).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let sha256 = |path: &Path| -> Vec<u8> {
        run_ok(
            Command::new(tool("openssl"))
                .args(["dgst", "-sha256", "-binary"])
                .arg(path),
        )
        .stdout
    };
    for cert in doc["ek_certificates"].as_array().unwrap() {
        let der = base64::engine::general_purpose::STANDARD
            .decode(cert["der"].as_str().unwrap())
            .unwrap();
        let path = write("ek.der", &der);
        let out = run_ok(
            Command::new(tool("openssl"))
                .args(["verify", "-CAfile"])
                .arg(host.made.root_ca())
                .arg("-untrusted")
                .arg(host.made.intermediate())
                .arg(&path),
        );
        assert!(text(&out).contains(": OK"), "{}", text(&out));
    }

    let ak_pub = write("ak.pub", &field(evidence, "ak_public"));
    let printed = text(&run_ok(
        tpm_tool(&host.tpm, "tpm2_print")
            .args(["-t", "TPM2B_PUBLIC"])
            .arg(&ak_pub),
    ));
    assert!(
        printed.contains("fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign"),
        "{printed}"
    );
    let ak_tail = write("ak.tpmt", &field(evidence, "ak_public")[2..]);
    let ak_name = [vec![0x00, 0x0b], sha256(&ak_tail)].concat();
    let ak_pem = dir.join("ak.pem");
    run_ok(
        tpm_tool(&host.tpm, "tpm2_print")
            .args(["-t", "TPM2B_PUBLIC", "-f", "pem"])
            .arg(&ak_pub)
            .stdout(std::fs::File::create(&ak_pem).unwrap()),
    );
    let attest_bytes = field(evidence, "certify_attest");
    let attest = write("certify.attest", &attest_bytes);
    let sig = write("certify.sig", &field(evidence, "certify_signature"));
    let out = run_ok(
        Command::new(tool("openssl"))
            .args(["dgst", "-sha256", "-verify"])
            .arg(&ak_pem)
            .arg("-signature")
            .arg(&sig)
            .arg(&attest),
    );
    assert_eq!(text(&out).trim(), "Verified OK");

    // TPMS_ATTEST by hand (tpm2_print 5.4 cannot: "unsupported type 0x8017").
    let mut at = 0;
    let mut take = |n: usize| {
        let part = attest_bytes[at..at + n].to_vec();
        at += n;
        part
    };
    assert_eq!(take(4), [0xff, 0x54, 0x43, 0x47], "magic");
    assert_eq!(take(2), [0x80, 0x17], "TPM_ST_ATTEST_CERTIFY");
    let tpm2b = |take: &mut dyn FnMut(usize) -> Vec<u8>| {
        let n = take(2);
        take(usize::from(u16::from_be_bytes([n[0], n[1]])))
    };
    let signer = tpm2b(&mut take);
    assert_eq!(
        &signer[..2],
        [0x00, 0x0b],
        "qualifiedSigner is a SHA-256 name"
    );
    let extra_data = tpm2b(&mut take);
    take(17 + 8);
    let name = tpm2b(&mut take);
    let statement = write(
        "statement.txt",
        doc["statement"].as_str().unwrap().as_bytes(),
    );
    assert_eq!(
        extra_data,
        sha256(&statement),
        "extraData = SHA-256(statement)"
    );
    let key_pub = write("key.pub", &field(evidence, "key_public"));
    let key_tail = write("key.tpmt", &field(evidence, "key_public")[2..]);
    assert_eq!(name, [vec![0x00, 0x0b], sha256(&key_tail)].concat());

    let printed = text(&run_ok(
        tpm_tool(&host.tpm, "tpm2_print")
            .args(["-t", "TPM2B_PUBLIC"])
            .arg(&key_pub),
    ));
    assert!(
        printed.contains("fixedtpm|fixedparent|sensitivedataorigin"),
        "{printed}"
    );
    let key_pem = dir.join("key.pem");
    run_ok(
        tpm_tool(&host.tpm, "tpm2_print")
            .args(["-t", "TPM2B_PUBLIC", "-f", "pem"])
            .arg(&key_pub)
            .stdout(std::fs::File::create(&key_pem).unwrap()),
    );
    let ssh = text(&run_ok(
        Command::new(tool("ssh-keygen"))
            .args(["-i", "-m", "PKCS8", "-f"])
            .arg(&key_pem),
    ));
    let stated = doc["statement"]
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("public_key: "))
        .unwrap()
        .to_owned();
    assert_eq!(ssh.trim(), stated);

    // And keybound prints the AK name tpm2-tools' way of computing it gives.
    let (code, checks) = host.verify(evidence, &["--public-key", &stated]);
    assert_eq!(code, 0, "{checks:?}");
    let hex: String = ak_name.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        checks["ak"].1.starts_with(&format!("name {hex}")),
        "{checks:?}"
    );
}

/// Evidence for a key at a persistent handle (from `keypair create --attest-out`) and for a
/// TSS2 key file (from `keypair attest`): every check passes, by text and JSON, with the key or
/// the token; and the evidence checks out with openssl, tpm2-tools and ssh-keygen.
#[test]
fn evidence_for_a_handle_key_and_a_key_file_verifies_and_checks_out_with_other_tools() {
    let host = Host::new();
    let evidence = host.path("handle.json");
    let created = run_ok(
        host.keybound(
            &["keypair", "create", "--static"],
            &["--tpm-key-handle", "0x81000100"],
        )
        .args(["--bot-name", "example", "--token-name", "example-token"])
        .arg("--ek-intermediates")
        .arg(host.made.intermediate())
        .arg("--attest-out")
        .arg(&evidence),
    );
    assert!(
        text(&created).contains(&format!("written to {}", evidence.display())),
        "{}",
        text(&created)
    );
    let key = field(&evidence, "key_public");
    assert!(!key.is_empty());

    // Text: one line per check, all ok, exit 0; the check names the issue lists.
    let stated = {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&evidence).unwrap()).unwrap();
        doc["statement"]
            .as_str()
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("public_key: "))
            .unwrap()
            .to_owned()
    };
    let token = token_yaml(host.dir.path(), "example-token", "example", &stated);
    let out = run_ok(
        keybound()
            .args(["attest", "verify"])
            .arg(&evidence)
            .arg("--ek-ca")
            .arg(host.made.root_ca())
            .arg("--token")
            .arg(&token),
    );
    let lines: Vec<String> = text(&out).lines().map(str::to_owned).collect();
    let names: Vec<&str> = lines
        .iter()
        .map(|l| {
            assert!(l.starts_with("ok   "), "{l}");
            l[5..].split(':').next().unwrap()
        })
        .collect();
    assert_eq!(
        names,
        [
            "ek-certificate rsa2048 (0x01c00002)",
            "ek-certificate ecc-nist-p384 (0x01c00016)",
            "ak",
            "signature",
            "attestation",
            "key",
            "statement",
            "bound-key",
        ]
    );
    check_independently(&host, &evidence);
    // --format json's help names every key of the JSON.
    let help = text(&run_ok(keybound().args(["attest", "verify", "--help"])));
    for key in ["ok", "checks", "check", "detail"] {
        assert!(
            help.contains(key),
            "attest verify --help lacks {key}: {help}"
        );
    }

    // A TSS2 key file, attested by keypair attest, checked against the token.
    let key_file = host.path("bound-key.tss2.pem");
    let created = run_ok(
        host.keybound(&["keypair", "create", "--static", "--format", "json"], &[])
            .arg("--tpm-key-path")
            .arg(&key_file),
    );
    let doc: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let file_key = doc["public_key"].as_str().unwrap().to_owned();
    let file_evidence = host.path("file.json");
    run_ok(
        host.keybound(&["keypair", "attest"], &[])
            .arg("--tpm-key-path")
            .arg(&key_file)
            .args(["--bot-name", "example", "--token-name", "file-token"])
            .arg("--ek-intermediates")
            .arg(host.made.intermediate())
            .arg("--out")
            .arg(&file_evidence),
    );
    let token = token_yaml(host.dir.path(), "file-token", "example", &file_key);
    let (code, checks) = host.verify(&file_evidence, &["--token", token.to_str().unwrap()]);
    assert_eq!((code, failed(&checks)), (0, vec![]), "{checks:?}");
    assert!(checks["bound-key"].1.contains("token \"file-token\""));
    check_independently(&host, &file_evidence);

    // The evidence file is not replaced without --overwrite.
    let error = run_err(
        host.keybound(&["keypair", "attest"], &["--tpm-key-handle", "0x81000100"])
            .args(["--bot-name", "example", "--token-name", "example-token"])
            .arg("--out")
            .arg(&evidence),
    );
    assert!(error.contains("evidence file"), "{error}");
}

/// Each tampering is caught by the check named for it, and `attest verify` exits 1.
#[test]
fn each_tampering_is_caught_by_its_check() {
    let host = Host::new();
    let key = host.key_at("0x81000100");
    let evidence = host.attest("0x81000100", "good.json", &["--nonce", "n-1"]);
    let (code, checks) = host.verify(&evidence, &["--public-key", &key, "--nonce", "n-1"]);
    assert_eq!((code, failed(&checks)), (0, vec![]), "{checks:?}");
    let caught = |path: &Path, args: &[&str], root: Option<&Path>| {
        let mut all = vec!["--public-key", key.as_str()];
        all.extend_from_slice(args);
        let (code, checks) = match root {
            Some(root) => verify_with(path, root, &all),
            None => host.verify(path, &all),
        };
        assert_eq!(code, 1, "{checks:?}");
        checks
    };

    // A flipped attestation byte (in the clock, which nothing else reads): the signature.
    let flipped = tampered(&evidence, "flipped.json", |doc| {
        let mut attest = field(&evidence, "certify_attest");
        let signer_len = usize::from(u16::from_be_bytes([attest[6], attest[7]]));
        attest[8 + signer_len + 2 + 32 + 3] ^= 0x01;
        doc["certify_attest"] = b64(&attest);
    });
    let checks = caught(&flipped, &[], None);
    assert_eq!(failed(&checks), ["signature"], "{checks:?}");

    // Another key's public area: the attestation certifies another name.
    host.key_at("0x81000101");
    let other = host.attest("0x81000101", "other.json", &[]);
    let swapped = tampered(&evidence, "swapped.json", |doc| {
        doc["key_public"] = b64(&field(&other, "key_public"));
    });
    let checks = caught(&swapped, &[], None);
    assert!(failed(&checks).contains(&"attestation"), "{checks:?}");
    assert!(
        checks["attestation"]
            .1
            .contains("certifies the object named")
    );

    // A statement edited to name another token: extraData no longer matches.
    let edited = tampered(&evidence, "edited.json", |doc| {
        let text = doc["statement"]
            .as_str()
            .unwrap()
            .replace("token: example-token", "token: other-token");
        doc["statement"] = text.into();
    });
    let checks = caught(&edited, &[], None);
    assert_eq!(failed(&checks), ["attestation"], "{checks:?}");
    assert!(
        checks["attestation"]
            .1
            .contains("not the SHA-256 of the statement")
    );

    // A statement for another token than the one given.
    let token = token_yaml(host.dir.path(), "other-token", "example", &key);
    let (code, checks) = host.verify(&evidence, &["--token", token.to_str().unwrap()]);
    assert_eq!(
        (code, failed(&checks)),
        (1, vec!["bound-key"]),
        "{checks:?}"
    );
    assert!(
        checks["bound-key"]
            .1
            .contains("for token \"example-token\", not \"other-token\"")
    );

    // A wrong nonce.
    let checks = caught(&evidence, &["--nonce", "n-2"], None);
    assert_eq!(failed(&checks), ["nonce"], "{checks:?}");

    // A wrong EK root: another manufacturer's.
    let elsewhere = Manufactured::new();
    let checks = caught(&evidence, &[], Some(&elsewhere.root_ca()));
    assert_eq!(
        failed(&checks),
        [
            "ek-certificate ecc-nist-p384 (0x01c00016)",
            "ek-certificate rsa2048 (0x01c00002)"
        ],
        "{checks:?}"
    );
    let detail = &checks["ek-certificate rsa2048 (0x01c00002)"].1;
    assert!(
        detail.contains("does not chain to any --ek-ca root"),
        "{detail}"
    );

    // A key loaded from outside the TPM: imported with tpm2_import, so not fixedTPM.
    let dir = host.dir.path();
    run_ok(
        Command::new(tool("openssl"))
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(dir.join("outside.pem")),
    );
    let tpm2 = |args: &[&str]| {
        run_ok(
            tpm_tool(&host.tpm, args[0])
                .args(&args[1..])
                .current_dir(dir),
        );
        run_ok(
            tpm_tool(&host.tpm, "tpm2_flushcontext")
                .arg("-t")
                .current_dir(dir),
        );
    };
    tpm2(&[
        "tpm2_createprimary",
        "-Q",
        "-C",
        "o",
        "-g",
        "sha256",
        "-G",
        "ecc256:aes128cfb",
        "-c",
        "prim.ctx",
    ]);
    tpm2(&[
        "tpm2_import",
        "-Q",
        "-C",
        "prim.ctx",
        "-G",
        "ecc",
        "-i",
        "outside.pem",
        "-u",
        "outside.pub",
        "-r",
        "outside.priv",
    ]);
    tpm2(&[
        "tpm2_load",
        "-Q",
        "-C",
        "prim.ctx",
        "-u",
        "outside.pub",
        "-r",
        "outside.priv",
        "-c",
        "outside.ctx",
    ]);
    tpm2(&[
        "tpm2_evictcontrol",
        "-Q",
        "-C",
        "o",
        "-c",
        "outside.ctx",
        "0x81000102",
    ]);
    let imported = host.attest("0x81000102", "imported.json", &[]);
    let shown = run_ok(&mut host.keybound(
        &["keypair", "show", "--format", "json"],
        &["--tpm-key-handle", "0x81000102"],
    ));
    let doc: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let imported_key = doc["public_key"].as_str().unwrap();
    let (code, checks) = host.verify(&imported, &["--public-key", imported_key]);
    assert_eq!((code, failed(&checks)), (1, vec!["key"]), "{checks:?}");
    assert!(
        checks["key"]
            .1
            .contains("without fixedtpm|fixedparent|sensitivedataorigin"),
        "{checks:?}"
    );
}

/// The challenge: made with no TPM, answered by the TPM holding the EK, compared by verify;
/// another TPM cannot answer it, and a response that is not the credential fails.
#[test]
fn the_challenge_is_answered_only_by_the_tpm_holding_the_ek() {
    let host = Host::new();
    let key = host.key_at("0x81000100");
    let evidence = host.attest("0x81000100", "evidence.json", &[]);
    let challenge = host.path("challenge.json");
    let secret = host.path("secret.json");
    run_ok(
        keybound()
            .args(["attest", "challenge"])
            .arg(&evidence)
            .arg("--out")
            .arg(&challenge)
            .arg("--secret-out")
            .arg(&secret),
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let response = host.path("response.json");
    run_ok(
        host.keybound(&["keypair", "attest"], &["--tpm-key-handle", "0x81000100"])
            .arg("--respond")
            .arg(&challenge)
            .arg("--out")
            .arg(&response),
    );
    let with = |response: &Path| {
        host.verify(
            &evidence,
            &[
                "--public-key",
                &key,
                "--response",
                response.to_str().unwrap(),
                "--secret",
                secret.to_str().unwrap(),
            ],
        )
    };
    let (code, checks) = with(&response);
    assert_eq!((code, failed(&checks)), (0, vec![]), "{checks:?}");
    assert!(checks["credential"].1.contains("recovered the credential"));

    // Another TPM (its own EK) cannot answer.
    let other = Manufactured::new().start();
    let mut cmd = keybound();
    cmd.args([
        "keypair",
        "attest",
        "--signer",
        "tpm",
        "--tpm-tcti",
        &other.tcti(),
    ])
    .args(["--tpm-key-handle", "0x81000100", "--respond"])
    .arg(&challenge)
    .arg("--out")
    .arg(host.path("other-response.json"));
    let error = run_err(&mut cmd);
    assert!(error.contains("made for another TPM"), "{error}");
    assert!(!host.path("other-response.json").exists());

    // A response holding anything but the credential fails the credential check.
    let forged = tampered(&response, "forged.json", |doc| {
        doc["credential"] = b64(&sha2::Sha256::digest(b"a guess"));
    });
    let (code, checks) = with(&forged);
    assert_eq!(
        (code, failed(&checks)),
        (1, vec!["credential"]),
        "{checks:?}"
    );
}

/// PKCS#11 and file keys get no evidence, each with the reason; `keypair create --attest-out`
/// refuses before making a key; and doctor says whether the configured key is attestable.
#[test]
fn keys_outside_a_tpm_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let key = crate::support::openssl_key(dir.path(), "file-key.pem", "P-256");
    let error = run_err(
        keybound()
            .args(["keypair", "attest", "--static-key-path"])
            .arg(&key)
            .args(["--bot-name", "b", "--token-name", "t", "--out"])
            .arg(dir.path().join("e.json")),
    );
    assert!(
        error.contains("a file or environment key cannot be attested: it is not hardware-bound"),
        "{error}"
    );

    let hsm = crate::pkcs11::Hsm::new("attest");
    hsm.create_key("bound", "ecdsa-p256");
    let error = run_err(
        hsm.keybound()
            .args(["keypair", "attest"])
            .args(hsm.signer_args("bound"))
            .args(["--bot-name", "b", "--token-name", "t", "--out"])
            .arg(dir.path().join("e.json")),
    );
    assert!(
        error.contains(
            "a PKCS#11 key cannot be attested: PKCS#11 defines no key attestation, and SoftHSM"
        ),
        "{error}"
    );
    let error = run_err(
        hsm.keybound()
            .args(["keypair", "create", "--static", "--attest-out"])
            .arg(dir.path().join("e.json"))
            .args(["--bot-name", "b", "--token-name", "t"])
            .args(hsm.signer_args("second")),
    );
    assert!(
        error.starts_with("error: --attest-out: a PKCS#11 key cannot be attested"),
        "{error}"
    );
    let listed = run_ok(hsm.keybound().args([
        "signer",
        "list",
        "--pkcs11-module",
        crate::pkcs11::MODULE,
        "--pin-source",
        "env:HSM_PIN",
    ]));
    assert!(
        !text(&listed).contains("second"),
        "no key was made: {}",
        text(&listed)
    );
    assert!(!dir.path().join("e.json").exists());
}

/// A key with an authorization value is certified with it; a wrong value is refused once (the
/// TPM counts one failure, no retry), no evidence is written, and the value is never printed.
/// Evidence that is not evidence is a one-line error (exit 78), not a panic.
#[test]
fn a_key_with_an_authorization_value_is_attested_with_it_and_a_wrong_one_is_tried_once() {
    const RIGHT: &str = "Attest-Auth-Right-51d0";
    const WRONG: &str = "Attest-Auth-Wrong-8e27";
    let host = Host::new();
    let key = [
        "--tpm-key-handle",
        "0x81000103",
        "--pin-source",
        "env:TPM_AUTH",
    ];
    run_ok(
        host.keybound(&["keypair", "create", "--static"], &key)
            .env("TPM_AUTH", RIGHT),
    );
    let attest = |auth: &str, out: &Path| {
        let mut cmd = host.keybound(&["keypair", "attest"], &key);
        cmd.env("TPM_AUTH", auth)
            .args(["--bot-name", "example", "--token-name", "example-token"])
            .arg("--out")
            .arg(out);
        cmd.output().unwrap()
    };
    let counter = || {
        let text = text(&run_ok(
            tpm_tool(&host.tpm, "tpm2_getcap").arg("properties-variable"),
        ));
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix("TPM2_PT_LOCKOUT_COUNTER:"))
            .unwrap()
            .trim()
            .trim_start_matches("0x")
            .to_owned();
        u32::from_str_radix(&value, 16).unwrap()
    };
    let good = host.path("auth.json");
    let output = attest(RIGHT, &good);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(counter(), 0);

    let bad = host.path("wrong.json");
    let output = attest(WRONG, &bad);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the TPM refused the authorization value of persistent handle 0x81000103"),
        "{stderr}"
    );
    for secret in [RIGHT, WRONG] {
        assert!(!stderr.contains(secret) && !text(&output).contains(secret));
    }
    assert_eq!(counter(), 1, "one try, no second");
    assert!(!bad.exists());

    let not_evidence = host.path("not-evidence.json");
    std::fs::write(&not_evidence, "{\"format\": \"something else\"}").unwrap();
    let output = keybound()
        .args([
            "attest",
            "verify",
            "--public-key",
            "ssh-ed25519 AAAA",
            "--ek-ca",
        ])
        .arg(host.made.root_ca())
        .arg(&not_evidence)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("is not keybound attestation evidence"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}
