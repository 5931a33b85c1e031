//! `type: workload-identity-x509` and `type: workload-identity-jwt` end to end: `keybound start
//! --oneshot` against a dev cluster with `workload_identity` resources; openssl verifies the
//! X.509 SVID against the bundle and reads its SPIFFE ID, PyJWT verifies the JWT SVID with the
//! SPIFFE CA's JWT key; the cluster's checks (roles' rules and labels, templates, one SVID per
//! output) refuse what they should.

use std::path::PathBuf;
use std::process::Command;

use keybound_devcluster::rules::Rule;
use keybound_devcluster::workload_identities::{self, WorkloadIdentity};
use keybound_teleport::suite::Suite;

use crate::oneshot::{Env, env, failed, ok, oneshot};
use crate::support::{stdout, tool};

pub(crate) fn resource(name: &str, labels: &str, id: &str) -> WorkloadIdentity {
    workload_identities::from_value(
        serde_yaml::from_str(&format!(
            "kind: workload_identity\nversion: v1\nmetadata: {{name: {name}, labels: {labels}}}\nspec: {{spiffe: {{id: '{id}', hint: for tests}}}}\n"
        ))
        .unwrap(),
    )
    .unwrap()
}

/// A dev cluster whose role `access` may issue from resources labelled `env: dev` (when
/// `labels`), with `svc` and `svc2` (both `env: dev`), `prod` (`env: prod`) and `uid` (a
/// template only the Workload API's attestation fills).
pub(crate) async fn cluster(suite: Suite, labels: bool) -> Env {
    cluster_with(suite, labels, |_| {}).await
}

/// [`cluster`] with labels, then `more` applied to its configuration.
pub(crate) async fn cluster_with(
    suite: Suite,
    labels: bool,
    more: impl FnOnce(&mut keybound_devcluster::DevClusterConfig),
) -> Env {
    env(move |c| {
        c.suite = suite;
        let access = &mut c.roles[0];
        access
            .rules
            .push(Rule::new(&["workload_identity"], &["read", "list"], "").unwrap());
        if labels {
            access.workload_identity_labels = [("env".to_owned(), vec!["dev".to_owned()])].into();
        }
        c.workload_identities = vec![
            resource("svc", "{env: dev, tier: web}", "/svc/{{ user.bot_name }}"),
            resource("svc2", "{env: dev}", "/svc2"),
            resource("prod", "{env: prod}", "/prod"),
            resource("uid", "{env: dev}", "/uid/{{ workload.unix.uid }}"),
        ];
        more(c);
    })
    .await
}

/// A tbot.yaml with the given workload identity services (YAML items, indented as list items).
fn config(env: &Env, services: &[String]) -> PathBuf {
    let cfg = env.proxy_config(&[]);
    let mut yaml = std::fs::read_to_string(&cfg).unwrap();
    for service in services {
        yaml.push_str(service);
    }
    std::fs::write(&cfg, yaml).unwrap();
    cfg
}

fn x509(env: &Env, dir: &str, selector: &str) -> String {
    format!(
        "  - type: workload-identity-x509\n    destination:\n      type: directory\n      path: {}\n    selector: {selector}\n",
        env.path(dir).display()
    )
}

fn jwt(env: &Env, dir: &str, selector: &str, audiences: &str) -> String {
    format!(
        "  - type: workload-identity-jwt\n    destination:\n      type: directory\n      path: {}\n    selector: {selector}\n    audiences: {audiences}\n",
        env.path(dir).display()
    )
}

fn run(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{cmd:?}: {}{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_verifies_the_x509_svid_and_pyjwt_the_jwt_svid() {
    for suite in [Suite::BalancedV1, Suite::Legacy] {
        let env = cluster(suite, true).await;
        let cfg = config(
            &env,
            &[
                x509(&env, "x509", "{name: svc}"),
                x509(&env, "bylabel", "{labels: {tier: [web]}}"),
                jwt(
                    &env,
                    "jwt",
                    "{name: svc}",
                    "[https://svc.example.com, other]",
                ),
                jwt(&env, "jwt1", "{name: svc2}", "[only-one]"),
            ],
        );
        ok(&oneshot(&cfg, &[]).await);
        for dir in ["x509", "bylabel"] {
            let out = env.path(dir);
            let verified = run(Command::new(tool("openssl"))
                .arg("verify")
                .arg("-CAfile")
                .arg(out.join("svid_bundle.pem"))
                .arg(out.join("svid.pem")));
            assert!(verified.trim().ends_with(": OK"), "{verified}");
            let san = run(Command::new(tool("openssl"))
                .args([
                    "x509",
                    "-noout",
                    "-ext",
                    "subjectAltName,keyUsage,extendedKeyUsage",
                    "-in",
                ])
                .arg(out.join("svid.pem")));
            assert!(
                san.contains("URI:spiffe://dev.keybound.test/svc/robot"),
                "{suite}: {san}"
            );
            assert!(san.contains("TLS Web Client Authentication"), "{san}");
            // The key matches the certificate, and has the suite's type (BotSVID).
            let key = std::fs::read_to_string(out.join("svid_key.pem")).unwrap();
            assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
            let text = run(Command::new(tool("openssl"))
                .args(["pkey", "-noout", "-text", "-in"])
                .arg(out.join("svid_key.pem")));
            match suite {
                Suite::Legacy => assert!(text.contains("2048 bit"), "{text}"),
                _ => assert!(text.contains("prime256v1"), "{text}"),
            }
            let pubkey = |args: &[&str], file: &str| {
                run(Command::new(tool("openssl")).args(args).arg(out.join(file)))
            };
            assert_eq!(
                pubkey(&["pkey", "-pubout", "-in"], "svid_key.pem"),
                pubkey(&["x509", "-noout", "-pubkey", "-in"], "svid.pem")
            );
        }

        // The JWT SVIDs, verified by PyJWT with the SPIFFE CA's JWT key (RS256).
        let ca = env.cluster.cluster.ca();
        let key = ca.spiffe_jwt_public_pem().unwrap();
        let kid = ca.spiffe_jwt_kid().unwrap();
        let token = std::fs::read_to_string(env.path("jwt/jwt_svid")).unwrap();
        assert!(!token.ends_with('\n'));
        // The kid is Teleport's jwt.KeyID, computed here by Python's cryptography from the PEM:
        // base64url (no padding) of the SHA-256 of the PKCS#1 public key.
        let script = r#"
import base64, hashlib, json, sys, jwt
from cryptography.hazmat.primitives import serialization
token, key, kid, aud = sys.argv[1:5]
pkcs1 = serialization.load_pem_public_key(key.encode()).public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
want = base64.urlsafe_b64encode(hashlib.sha256(pkcs1).digest()).rstrip(b"=").decode()
header = jwt.get_unverified_header(token)
assert header["alg"] == "RS256" and header["kid"] == kid == want, (header, want)
claims = jwt.decode(token, key, algorithms=["RS256"], audience=aud)
print(json.dumps(claims))
"#;
        let claims = run(Command::new(tool("python3")).args([
            "-c",
            script,
            &token,
            &key,
            &kid,
            "https://svc.example.com",
        ]));
        let claims: serde_json::Value = serde_json::from_str(&claims).unwrap();
        assert_eq!(claims["sub"], "spiffe://dev.keybound.test/svc/robot");
        assert_eq!(
            claims["aud"],
            serde_json::json!(["https://svc.example.com", "other"])
        );
        assert!(
            claims["iss"]
                .as_str()
                .unwrap()
                .ends_with("/workload-identity"),
            "{claims}"
        );
        // One audience is a bare string (go-jose), which PyJWT reads as well.
        let token = std::fs::read_to_string(env.path("jwt1/jwt_svid")).unwrap();
        let claims =
            run(Command::new(tool("python3")).args(["-c", script, &token, &key, &kid, "only-one"]));
        let claims: serde_json::Value = serde_json::from_str(&claims).unwrap();
        assert_eq!(claims["aud"], "only-one");
        // Another audience is refused by PyJWT.
        let wrong = Command::new(tool("python3"))
            .args(["-c", script, &token, &key, &kid, "someone-else"])
            .output()
            .unwrap();
        assert!(!wrong.status.success());
        assert!(
            String::from_utf8_lossy(&wrong.stderr).contains("InvalidAudience"),
            "{}",
            String::from_utf8_lossy(&wrong.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_issues_exactly_one_svid_per_output_or_the_output_fails() {
    let env = cluster(Suite::BalancedV1, true).await;
    // Two resources match: tbot's error, and nothing written.
    let cfg = config(&env, &[x509(&env, "two", "{labels: {env: [dev]}}")]);
    let stderr = failed(&oneshot(&cfg, &[]).await, 77);
    assert!(
        stderr.contains("multiple X509 SVIDs received: [svc:spiffe://dev.keybound.test/svc/robot svc2:spiffe://dev.keybound.test/svc2"),
        "{stderr}"
    );
    assert!(!env.path("two/svid.pem").exists());
    // None the roles may use matches (prod is labelled env: prod): none returned.
    let cfg = config(&env, &[jwt(&env, "none", "{labels: {env: [prod]}}", "[a]")]);
    let stderr = failed(&oneshot(&cfg, &[]).await, 77);
    assert!(stderr.contains("no JWT SVIDs returned"), "{stderr}");
    // By name, a resource the roles' labels do not match is refused.
    let cfg = config(&env, &[x509(&env, "prod", "{name: prod}")]);
    let stderr = failed(&oneshot(&cfg, &[]).await, 77);
    assert!(stderr.contains("workload_identity_labels"), "{stderr}");
    // A name that does not exist.
    let cfg = config(&env, &[x509(&env, "ghost", "{name: ghost}")]);
    let stderr = failed(&oneshot(&cfg, &[]).await, 77);
    assert!(
        stderr.contains(r#"workload_identity \"ghost\" not found"#)
            || stderr.contains(r#"workload_identity "ghost" not found"#),
        "{stderr}"
    );
    // A template naming the workload's uid: a file output has no attested workload.
    let cfg = config(&env, &[x509(&env, "uid", "{name: uid}")]);
    let stderr = failed(&oneshot(&cfg, &[]).await, 77);
    assert!(stderr.contains("workload.unix.uid"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_without_workload_identity_labels_get_no_svid() {
    let env = cluster(Suite::BalancedV1, false).await;
    let cfg = config(&env, &[x509(&env, "x509", "{name: svc}")]);
    let stderr = failed(&oneshot(&cfg, &[]).await, 77);
    assert!(
        stderr.contains("the cluster refused workload identities for name \"svc\""),
        "{stderr}"
    );
    assert!(stderr.contains("workload_identity_labels"), "{stderr}");
    assert!(!env.path("x509/svid.pem").exists());
}
