//! What every output of one renewal shares from Auth, fetched once for all of them: the
//! cluster's CAs (`TrustService.GetCertAuthorities`, `GetClusterCACert`), the roles the bot may
//! impersonate (its role, `GetRole`), and the proxy's address (with `auth_server`, `Ping`).
//! The outputs are handed these lookups in flight ([`Lookups`]): each awaits them only where it
//! needs their answers, so its own calls go out beside them.

use anyhow::{Context as _, anyhow, bail};
use tokio::sync::SetOnce;
use tracing::warn;

use crate::auth::{self, AuthClient, AuthRoute};
use crate::identity::Identity;
use crate::untrusted::ClusterName;
use crate::values::HostPort;
use crate::{ExitKind, Failure};

/// The cluster's certificate authorities as the outputs write them, read with the trust
/// service (`GetCertAuthorities` for `host`, `user` and `db`): local and trusted clusters',
/// active keys and those trusted during a rotation.
#[derive(Clone, Debug, Default)]
pub struct ClusterCas {
    /// Every host CA TLS certificate, PEM, concatenated.
    pub host_tls_pem: String,
    /// Every user CA TLS certificate, PEM, concatenated.
    pub user_tls_pem: String,
    /// Every database CA TLS certificate, PEM, concatenated.
    pub db_tls_pem: String,
    /// Every host CA SSH key: (cluster name, `authorized_keys` key without comment).
    pub host_ssh_keys: Vec<(ClusterName, String)>,
}

impl ClusterCas {
    /// Collects the CA files' contents from the trust service's answers: each certificate
    /// re-encoded from its DER, each key written anew without its comment, and each CA's
    /// cluster name checked, so that nothing but what the files' formats hold reaches them.
    pub fn from_authorities(
        host: &[keybound_proto::types::CertAuthorityV2],
        user: &[keybound_proto::types::CertAuthorityV2],
        db: &[keybound_proto::types::CertAuthorityV2],
    ) -> anyhow::Result<Self> {
        fn key_sets(
            ca: &keybound_proto::types::CertAuthorityV2,
        ) -> impl Iterator<Item = &keybound_proto::types::CaKeySet> {
            ca.spec
                .iter()
                .flat_map(|s| s.active_keys.iter().chain(&s.additional_trusted_keys))
        }
        let tls = |cas: &[keybound_proto::types::CertAuthorityV2]| -> anyhow::Result<String> {
            let mut out = String::new();
            for ca in cas {
                for pair in key_sets(ca).flat_map(|k| &k.tls) {
                    for pem in keybound_teleport::pem::split_pem_certs(&pair.cert)
                        .context("a CA certificate is not PEM")?
                    {
                        out.push_str(&pem);
                    }
                }
            }
            Ok(out)
        };
        let mut host_ssh_keys = Vec::new();
        for ca in host {
            let cluster = ClusterName::parse(
                ca.spec.as_ref().map_or("", |s| s.cluster_name.as_str()),
                "a host CA record (cluster_name)",
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            for pair in key_sets(ca).flat_map(|k| &k.ssh) {
                let line = std::str::from_utf8(&pair.public_key)
                    .context("a host CA SSH key is not text")?;
                let key = ssh_key::PublicKey::from_openssh(line.trim())
                    .context("a host CA SSH key is not an SSH public key")?;
                let bare = ssh_key::PublicKey::from(key.key_data().clone()).to_openssh()?;
                host_ssh_keys.push((cluster.clone(), bare.trim().to_owned()));
            }
        }
        if host_ssh_keys.is_empty() {
            bail!("the cluster returned no host CA SSH key");
        }
        Ok(Self {
            host_tls_pem: tls(host)?,
            user_tls_pem: tls(user)?,
            db_tls_pem: tls(db)?,
            host_ssh_keys,
        })
    }
}

/// What an output kind uses of what the outputs share.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    /// The roles the bot may impersonate (for an output without `roles:`).
    pub default_roles: bool,
}

impl Needs {
    pub(super) fn union(self, other: Self) -> Self {
        Self {
            default_roles: self.default_roles || other.default_roles,
        }
    }
}

/// What the outputs of one renewal share, fetched once for all of them.
pub struct Shared {
    /// The cluster's CAs, for the CA files and `known_hosts`.
    pub cas: ClusterCas,
    /// The cluster's host CA certificates (`GetClusterCACert`), each PEM, which the outputs'
    /// identities carry as their host CAs.
    pub host_ca_pems: Vec<String>,
    /// The roles the bot may impersonate (its role's `allow.impersonate.roles`), when an
    /// output needs them.
    pub default_roles: Vec<String>,
    /// The proxy's address; `None` when keybound reaches Auth directly and Auth names no proxy,
    /// which leaves the proxy out of `known_hosts` and skips `ssh_config`.
    pub proxy: Option<HostPort>,
}

impl Shared {
    /// Fetches what `needs` asks for, with the bot's connection to Auth. A failure here fails
    /// every output: none could be written without it.
    pub async fn fetch(
        auth: &AuthClient,
        route: &AuthRoute,
        bot: &Identity,
        needs: Needs,
    ) -> Result<Self, Failure> {
        let rpc = |what: &'static str| {
            move |s: tonic::Status| {
                auth::status_failure(&format!("{what} for the identity outputs"), &s, "")
            }
        };
        // The lookups do not depend on each other: they go out together, as concurrent
        // streams of the one HTTP/2 connection (Teleport's gRPC servers allow 1000 at once,
        // `defaults.GRPCMaxConcurrentStreams`), so they cost one round trip rather than one
        // each. The first to fail ends the others, and says which lookup failed.
        let role = async {
            if !needs.default_roles {
                return Ok(Vec::new());
            }
            let role = auth
                .get_role(&bot.info.username)
                .await
                .map_err(rpc("reading the bot's role"))?;
            Ok(role
                .spec
                .and_then(|s| s.allow)
                .and_then(|a| a.impersonate)
                .map(|i| i.roles)
                .unwrap_or_default())
        };
        let proxy = async {
            match route {
                AuthRoute::Proxy(proxy) => Ok(Some(proxy.clone())),
                AuthRoute::Direct(_) => {
                    let ping = auth
                        .ping()
                        .await
                        .map_err(rpc("asking Auth for the proxy"))?;
                    proxy_of_ping(&ping.proxy_public_addr)
                }
            }
        };
        let (host, user, db, cluster_ca, default_roles, proxy) = tokio::try_join!(
            async {
                auth.cert_authorities("host")
                    .await
                    .map_err(rpc("reading the host CAs"))
            },
            async {
                auth.cert_authorities("user")
                    .await
                    .map_err(rpc("reading the user CAs"))
            },
            async {
                auth.cert_authorities("db")
                    .await
                    .map_err(rpc("reading the database CAs"))
            },
            async {
                auth.cluster_ca_cert()
                    .await
                    .map_err(rpc("reading the cluster's host CA"))
            },
            role,
            proxy,
        )?;
        let cas = ClusterCas::from_authorities(&host, &user, &db).map_err(|e| {
            Failure::new(
                ExitKind::Rejected,
                e.context("the cluster's CAs for the identity outputs are unusable"),
            )
        })?;
        let host_ca_pems = keybound_teleport::pem::split_pem_certs(&cluster_ca)
            .map_err(|e| Failure::new(ExitKind::Rejected, e))?;
        Ok(Self {
            cas,
            host_ca_pems,
            default_roles,
            proxy,
        })
    }
}

/// What the outputs share ([`Shared`]), as its lookups come in. An output kind awaits it
/// ([`Issue::shared`](super::Issue::shared)) only where it needs an answer (the roles the bot may
/// impersonate, when it names none; the CAs its files and identities hold), so its own calls to
/// Auth go out at once, beside the lookups, rather than one round trip after them.
pub struct Lookups(SetOnce<Option<Shared>>);

impl Lookups {
    /// Lookups already answered (by the rejoin's connection, or by a caller that needs them
    /// first).
    pub fn ready(shared: Shared) -> Self {
        Self(SetOnce::new_with(Some(Some(shared))))
    }

    /// Lookups not yet answered: [`settle`](Self::settle) must follow, driven beside the
    /// outputs that await them.
    pub(super) fn pending() -> Self {
        Self(SetOnce::new())
    }

    /// Hands the lookups' answer to the outputs awaiting it. Their failure is given back: it is
    /// the failure of every output (none could be written without them), reported once, as
    /// when the lookups went first; the outputs only learn that there is nothing to write with.
    pub(super) fn settle(&self, fetched: Result<Shared, Failure>) -> Result<(), Failure> {
        let (answer, result) = match fetched {
            Ok(shared) => (Some(shared), Ok(())),
            Err(failure) => (None, Err(failure)),
        };
        // Settled once, by the one caller that made them pending (`write_outputs_sharing`).
        let _ = self.0.set(answer);
        result
    }

    /// The answer, once it has come.
    pub(super) async fn get(&self) -> Result<&Shared, Failure> {
        self.0.wait().await.as_ref().ok_or_else(|| {
            // Never what a run reports: `settle` returned the lookups' own failure, which
            // `write_outputs_sharing` reports for every output instead of their results.
            Failure::new(
                ExitKind::Unreachable,
                anyhow!("the lookups the outputs share failed"),
            )
        })
    }
}

/// The proxy address Auth's `Ping` names, checked as `proxy_server` is: it reaches
/// `known_hosts` and `ssh_config`.
fn proxy_of_ping(addr: &str) -> Result<Option<HostPort>, Failure> {
    if addr.is_empty() {
        warn!(
            "Auth names no proxy: known_hosts leaves the proxy out and ssh_config is not written"
        );
        return Ok(None);
    }
    HostPort::parse(addr, 443).map(Some).map_err(|e| {
        Failure::new(
            ExitKind::Rejected,
            anyhow!(
                "Auth's Ping names the proxy public address {e}; the identity outputs were not \
                 written: check the proxy's public_addr in the cluster's configuration, and that \
                 auth_server is the Teleport cluster you expect"
            ),
        )
    })
}
