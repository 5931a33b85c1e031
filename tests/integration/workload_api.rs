//! `type: workload-identity-api` end to end: the agent serves the SPIFFE Workload API on a unix
//! socket, and the `spiffe` Python package (PyPI, 0.3.2, installed by this test into a virtual
//! environment) fetches X.509 and JWT SVIDs and both bundles, verifies them (the X.509 SVID
//! against the bundle, the JWT SVID with PyJWT against the JWT bundle) and has one validated; the
//! SPIFFE ID templated on `{{ workload.unix.uid }}` carries the caller's uid; a request without
//! the `workload.spiffe.io` header is refused with InvalidArgument; after a renewal (SIGUSR1) the
//! open X.509 stream delivers a new SVID; SIGTERM removes the socket.

use std::io::BufRead as _;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use keybound_teleport::suite::Suite;

use crate::agent_support::{Agent, blocking, wait_for};
use crate::support::tool;
use crate::workload_identity::cluster;

/// The `spiffe` package's version the test installs.
const SPIFFE_PYPI: &str = "spiffe==0.3.2";

/// A virtual environment (Debian's python3, its own site packages) with the `spiffe` package
/// and PyJWT, made once under Cargo's target tmp dir; its interpreter.
fn spiffe_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("spiffe-venv");
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import spiffe, jwt, grpc"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready(&python) {
        let made = Command::new(tool("python3"))
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(
            made.success(),
            "python3 -m venv failed (Debian: python3-venv)"
        );
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", SPIFFE_PYPI])
            .status()
            .unwrap();
        assert!(installed.success(), "pip install {SPIFFE_PYPI} failed");
    }
    assert!(ready(&python), "the venv lacks spiffe");
    python
}

/// Fetches and checks everything with the spiffe client; prints one JSON line.
const FETCH: &str = r#"
import json, sys
import grpc, jwt
from spiffe import WorkloadApiClient
from spiffe._proto import workload_pb2, workload_pb2_grpc
path, aud = sys.argv[1], sys.argv[2]
out = {}
with WorkloadApiClient(socket_path="unix://" + path) as client:
    svid = client.fetch_x509_svid()
    out["x509_id"] = str(svid.spiffe_id)
    td = svid.spiffe_id.trust_domain
    bundle = client.fetch_x509_bundles().get_bundle_for_trust_domain(td)
    authorities = list(bundle.x509_authorities)
    svid.leaf.verify_directly_issued_by(authorities[0])
    out["x509_verified"] = len(authorities)
    out["key_matches"] = svid.private_key.public_key() == svid.leaf.public_key()
    j = client.fetch_jwt_svid(audience={aud})
    out["jwt_id"] = str(j.spiffe_id)
    out["jwt_aud"] = sorted(j.audience)
    out["validated"] = str(client.validate_jwt_svid(j.token, aud).spiffe_id)
    try:
        client.validate_jwt_svid(j.token, "another-audience")
        out["wrong_audience"] = "accepted"
    except Exception as e:
        out["wrong_audience"] = type(e).__name__
    jb = client.fetch_jwt_bundles().get_bundle_for_trust_domain(td)
    key = jb.get_jwt_authority(jwt.get_unverified_header(j.token)["kid"])
    claims = jwt.decode(j.token, key, algorithms=["RS256"], audience=aud)
    out["pyjwt_sub"] = claims["sub"]
# The same RPCs without the SPIFFE header, on the package's own stubs.
stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(grpc.insecure_channel("unix:" + path))
try:
    stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=[aud]), timeout=10)
    out["no_header"] = "answered"
except grpc.RpcError as e:
    out["no_header"] = e.code().name
try:
    next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=10))
    out["no_header_stream"] = "answered"
except grpc.RpcError as e:
    out["no_header_stream"] = e.code().name
print(json.dumps(out))
"#;

/// Holds the X.509 stream open, printing each SVID's serial as it arrives.
const STREAM: &str = r#"
import sys, grpc
from spiffe.svid.x509_svid import X509Svid
from spiffe._proto import workload_pb2, workload_pb2_grpc
stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(grpc.insecure_channel("unix:" + sys.argv[1]))
for response in stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=[("workload.spiffe.io", "true")], timeout=60):
    svid = response.svids[0]
    leaf = X509Svid.parse_raw(svid.x509_svid, svid.x509_svid_key).leaf
    print(svid.spiffe_id, leaf.serial_number, flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spiffe_python_client_is_served_svids_and_bundles_over_the_unix_socket() {
    let python = blocking(spiffe_python).await;
    let env = cluster(Suite::BalancedV1, true).await;
    let socket = env.path("workload.sock");
    let cfg = env.proxy_config(&[]);
    let mut yaml = std::fs::read_to_string(&cfg).unwrap();
    yaml.push_str(&format!(
        "  - type: workload-identity-api\n    listen: unix://{}\n    selector: {{name: uid}}\n",
        socket.display()
    ));
    std::fs::write(&cfg, yaml).unwrap();
    let mut agent = Agent::start(&cfg, env.dir.path(), &[]);
    wait_for("the Workload API socket", Duration::from_secs(10), || {
        socket.exists()
    });
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    // The caller's uid, as the kernel gives it to the agent.
    let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    let want = format!("spiffe://dev.keybound.test/uid/{}", uid.trim());
    let aud = "https://svc.example.com";
    let (py, sock) = (python.clone(), socket.clone());
    let output = blocking(move || {
        Command::new(py)
            .args(["-c", FETCH])
            .arg(sock)
            .arg(aud)
            .output()
            .unwrap()
    })
    .await;
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        agent.logs()
    );
    let got: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(got["x509_id"], want.as_str(), "{got}");
    assert_eq!(got["x509_verified"], 1, "{got}");
    assert_eq!(got["key_matches"], true, "{got}");
    assert_eq!(got["jwt_id"], want.as_str(), "{got}");
    assert_eq!(got["jwt_aud"], serde_json::json!([aud]), "{got}");
    assert_eq!(got["validated"], want.as_str(), "{got}");
    assert_eq!(got["wrong_audience"], "ValidateJwtSvidError", "{got}");
    assert_eq!(got["pyjwt_sub"], want.as_str(), "{got}");
    assert_eq!(got["no_header"], "INVALID_ARGUMENT", "{got}");
    assert_eq!(got["no_header_stream"], "INVALID_ARGUMENT", "{got}");

    // Another user (uid 65534) is let in through the socket's group (root here, gid 0), and its
    // SVID names its own uid; with neither the owner's uid nor the group, it cannot connect.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let as_nobody = |gid: &str| {
        let (py, sock) = (python.clone(), socket.clone());
        let gid = gid.to_owned();
        blocking(move || {
            Command::new(tool("setpriv"))
                .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups"])
                .arg(py)
                .args([
                    "-c",
                    "import sys\nfrom spiffe import WorkloadApiClient\nwith WorkloadApiClient(socket_path='unix://' + sys.argv[1]) as c:\n    print(c.fetch_x509_svid().spiffe_id)",
                ])
                .arg(sock)
                .output()
                .unwrap()
        })
    };
    let nobody = as_nobody("0").await;
    assert!(
        nobody.status.success(),
        "{}",
        String::from_utf8_lossy(&nobody.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&nobody.stdout).trim(),
        "spiffe://dev.keybound.test/uid/65534"
    );
    let outsider = as_nobody("65534").await;
    assert!(!outsider.status.success());
    let refused = String::from_utf8_lossy(&outsider.stderr);
    assert!(
        refused.contains("connect failed") && refused.contains("Permission denied"),
        "{refused}"
    );

    // An open X.509 stream gets a new SVID after a renewal.
    let mut stream = Command::new(&python)
        .args(["-c", STREAM])
        .arg(&socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(stream.stdout.take().unwrap()).lines();
    let first = blocking(move || {
        let first = lines.next().unwrap().unwrap();
        (first, lines)
    })
    .await;
    let (first, mut lines) = first;
    assert!(first.starts_with(&format!("{want} ")), "{first}");
    let renewals = agent.renewals();
    agent.signal("USR1");
    let second = blocking(move || lines.next().unwrap().unwrap()).await;
    assert!(agent.renewals() > renewals, "{}", agent.logs());
    assert!(second.starts_with(&format!("{want} ")), "{second}");
    assert_ne!(first, second, "the same SVID was sent again");
    let _ = stream.kill();
    let _ = stream.wait();

    assert!(agent.stop().success(), "{}", agent.logs());
    assert!(!socket.exists(), "the socket outlived the agent");
}
