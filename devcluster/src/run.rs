//! `keybound dev-cluster`: a dev cluster on the command line, until SIGINT or SIGTERM.

use anyhow::Context as _;
use tracing::info;

use crate::config::DevClusterConfig;
use crate::front::DevCluster;

/// Runs `keybound dev-cluster` until SIGINT or SIGTERM.
pub async fn run(config: DevClusterConfig, ca_out: &std::path::Path) -> anyhow::Result<()> {
    let cluster = DevCluster::start(config).await?;
    write_ca_bundle(ca_out, &cluster.ca_pem())
        .with_context(|| format!("writing the CA bundle to {}", ca_out.display()))?;
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
    let tokens = cluster.cluster.token_count();
    println!("tokens: {tokens}, roles: {}", cluster.cluster.role_count());
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("dev cluster stopping");
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
