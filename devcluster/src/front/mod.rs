//! The network front: one TLS port routed by ALPN as a Teleport Proxy with TLS routing does, and
//! optionally Auth's own port.
//!
//! * `tls`: the Proxy's and Auth's TLS configurations;
//! * `services`: the gRPC services, and which endpoint serves which (the one place an RPC
//!   service is registered);
//! * `web`: the web API subset;
//! * `connection`: one routed connection (gRPC to Auth or the Proxy, or the web API);
//! * `app`: the built-in echo app, which answers for every app (`kind: app`) at its public
//!   address;
//! * `kube`: the built-in Kubernetes API, at `kube-teleport-proxy-alpn.*`;
//! * `listen`: the listeners, and routing by ALPN (and by server name, for apps and Kubernetes).

mod app;
mod connection;
mod kube;
mod listen;
mod services;
mod tls;
mod upgrade;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::info;

use crate::cluster::Cluster;
use crate::config::DevClusterConfig;
use listen::{serve_auth_port, serve_proxy_port};
use services::Services;
use tls::Endpoints;

/// A running dev cluster. Dropping it stops the server.
pub struct DevCluster {
    /// Where it listens (the Proxy's web port, with every route).
    pub addr: SocketAddr,
    /// Where Auth's endpoint listens on its own, when asked for.
    pub auth_addr: Option<SocketAddr>,
    /// Its state.
    pub cluster: Arc<Cluster>,
    tasks: Vec<JoinHandle<()>>,
}

impl DevCluster {
    /// Starts serving on `config.listen` (and `config.auth_listen`).
    pub async fn start(config: DevClusterConfig) -> anyhow::Result<Self> {
        let (listen, auth_listen) = (config.listen, config.auth_listen);
        Self::serve(Arc::new(Cluster::new(config)?), listen, auth_listen).await
    }

    /// Serves `cluster` (its CAs, tokens, instances and locks) on `listen` and `auth_listen`:
    /// a cluster that stopped comes back as it was, as a Teleport cluster restarts from its
    /// backend.
    pub async fn serve(
        cluster: Arc<Cluster>,
        listen: SocketAddr,
        auth_listen: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let listener = bind(listen).await?;
        let auth_listener = match auth_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let addr = listener.local_addr()?;
        let endpoints = Endpoints::new(cluster.ca(), addr)?;
        cluster.set_public_addr(format!("localhost:{}", addr.port()));
        let services = Services::new(&cluster);

        let mut tasks = vec![tokio::spawn(serve_proxy_port(
            listener,
            endpoints.clone(),
            services.clone(),
            cluster.clone(),
        ))];
        let mut auth_addr = None;
        if let Some(listener) = auth_listener {
            auth_addr = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(serve_auth_port(
                listener,
                endpoints.auth,
                services,
            )));
        }
        info!(%addr, auth = ?auth_addr, cluster = cluster.ca().cluster_name(), "dev cluster listening");
        Ok(Self {
            addr,
            auth_addr,
            cluster,
            tasks,
        })
    }

    /// `host:port` for `proxy_server` (`localhost`, which the certificate names).
    pub fn proxy_addr(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    /// The CA bundle a client trusts to reach it.
    pub fn ca_pem(&self) -> String {
        self.cluster.ca().host_ca_pem()
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}
