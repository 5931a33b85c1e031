//! `keybound dev-cluster`: a dev cluster on the command line, with its admin socket, until
//! SIGINT or SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use tracing::info;

use crate::admin::AdminServer;
use crate::config::DevClusterConfig;
use crate::front::DevCluster;
use crate::resources::Kind;

/// What the command does besides serving the cluster: where it writes the CA bundle and
/// where its admin socket goes.
#[derive(Clone, Debug)]
pub struct Serve {
    /// The CA bundle clients trust, written at start.
    pub ca_out: PathBuf,
    /// The admin socket; `<port>.sock` in [`default_dir`](crate::admin::default_dir) without.
    pub admin_socket: Option<PathBuf>,
}

/// Runs `keybound dev-cluster` until SIGINT or SIGTERM; its admin socket goes with it.
pub async fn run(config: DevClusterConfig, serve: &Serve) -> anyhow::Result<()> {
    let ca_out = &serve.ca_out;
    let cluster = DevCluster::start(config).await?;
    write_ca_bundle(ca_out, &cluster.ca_pem())
        .with_context(|| format!("writing the CA bundle to {}", ca_out.display()))?;
    let admin = AdminServer::start(&cluster, serve.admin_socket.as_deref())?;
    println!(
        "keybound dev cluster {:?} listening on {}",
        cluster.cluster.ca().cluster_name(),
        cluster.addr
    );
    println!("proxy_server: {}", cluster.proxy_addr());
    if let Some(addr) = cluster.auth_addr {
        println!("auth_server: {addr}");
    }
    println!("CA bundle: {}", ca_out.display());
    println!("admin socket: {}", admin.path().display());
    let count = |kind| cluster.cluster.count(kind);
    println!(
        "tokens: {}, bots: {}, roles: {}, locks: {}, apps: {}, dbs: {}, kube_clusters: {}, nodes: {}",
        count(Kind::Token),
        count(Kind::Bot),
        count(Kind::Role),
        count(Kind::Lock),
        count(Kind::App),
        count(Kind::Db),
        count(Kind::KubeCluster),
        count(Kind::Node)
    );
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("dev cluster stopping");
    drop(admin);
    Ok(())
}

/// Writes the CA bundle clients trust, mode 0644, whole or not at all (a temporary file in the
/// same directory, renamed into place).
fn write_ca_bundle(path: &std::path::Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(pem.as_bytes())?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    file.as_file().sync_all()?;
    file.persist(path)?;
    Ok(())
}
