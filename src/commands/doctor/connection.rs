//! The connection a join makes: TCP, TLS and ALPN to the address it dials, with the trust it
//! uses. One line for each step that passed, then one FAIL line for the step that did not.

use super::report::{Check, Report, Status};
use crate::Failure;
use crate::config::HostPort;
use crate::tls::{Trust, client_config};
use crate::transport;

/// Dials `addr` as a join would and reports each step. Returns whether the connection came up.
pub(super) async fn checks(
    addr: &HostPort,
    direct: bool,
    trust: &Trust,
    report: &mut Report<'_>,
) -> Result<bool, Failure> {
    if *trust == Trust::Insecure {
        report.add(
            Check::new(
                Status::Warn,
                "cluster",
                "TLS verification is off (insecure); anyone on the path can pose as the cluster",
            )
            .fix("remove insecure / --insecure and give the cluster's CA with --ca-path"),
        )?;
    }
    if !direct && crate::upgrade::required(addr).await {
        let why = match crate::upgrade::forced(addr) {
            Some(_) => format!("{} says so", crate::upgrade::ENV),
            None => "ALPN does not reach the proxy: a TLS-terminating load balancer is in \
                     front of it"
                .to_owned(),
        };
        report.add(Check::new(
            Status::Ok,
            "cluster",
            format!("connection upgrade needed ({why}); keybound tunnels through /webapi/connectionupgrade"),
        ))?;
    }
    let result = dial(addr, direct, trust).await;
    let trusted_by = trusted_by(trust);
    let alpn = if direct {
        "ALPN h2 (Auth's gRPC)"
    } else {
        "ALPN teleport-proxy-grpc (the Proxy's join service)"
    };
    let passed = [
        Check::new(Status::Ok, "cluster", format!("{addr} reachable (TCP)")),
        Check::new(
            Status::Ok,
            "cluster",
            format!("TLS: certificate verified by {trusted_by}"),
        ),
        Check::new(Status::Ok, "cluster", format!("{alpn} accepted")),
    ];
    let (steps_passed, failed) = match result {
        Ok(()) => (passed.len(), None),
        Err(failure) => (
            failure.steps_passed(),
            Some(failure.check(addr, trust, &trusted_by)),
        ),
    };
    for check in passed.into_iter().take(steps_passed) {
        report.add(check)?;
    }
    match failed {
        Some(check) => report.add(check).map(|()| false),
        None => Ok(true),
    }
}

/// TCP and TLS to `addr`, offering the ALPN protocols a join offers there: Auth's own port
/// speaks gRPC over h2, the Proxy's web port picks its join service by ALPN.
async fn dial(addr: &HostPort, direct: bool, trust: &Trust) -> Result<(), ConnectFailure> {
    let protocols: &[&[u8]] = if direct {
        &[transport::ALPN_H2]
    } else {
        &[transport::ALPN_PROXY_GRPC, transport::ALPN_H2]
    };
    let tls =
        client_config(trust, protocols).map_err(|e| ConnectFailure::Trust(format!("{e:#}")))?;
    let channel = if direct {
        transport::connect_with(addr, tls, transport::Dial::auth()).await
    } else {
        transport::connect(addr, tls).await
    };
    channel.map(drop).map_err(ConnectFailure::from_transport)
}

/// Who vouches for the certificate, for the report.
fn trusted_by(trust: &Trust) -> String {
    match trust {
        Trust::System => "the system trust store".to_owned(),
        Trust::Bundle(path) => format!("CA bundle {}", path.display()),
        Trust::Insecure => "nobody: not verified (insecure)".to_owned(),
    }
}

/// Why a connection did not come up, sorted by the step that failed.
enum ConnectFailure {
    /// The trust settings themselves (an unreadable CA bundle).
    Trust(String),
    /// TCP: refused, timed out, name not resolved.
    Reach(String),
    /// TLS: the certificate is not trusted.
    Untrusted(String),
    /// TLS: the certificate is not valid at this machine's time.
    Time(String),
    /// TLS: anything else.
    Tls(String),
    /// The server did not pick the ALPN protocol a join needs.
    Alpn(String),
}

impl ConnectFailure {
    /// How many of the steps TCP, TLS and ALPN passed before this failure.
    fn steps_passed(&self) -> usize {
        match self {
            Self::Trust(_) | Self::Reach(_) => 0,
            Self::Untrusted(_) | Self::Time(_) | Self::Tls(_) => 1,
            Self::Alpn(_) => 2,
        }
    }

    /// The FAIL line, with what to do about it.
    fn check(self, addr: &HostPort, trust: &Trust, trusted_by: &str) -> Check {
        match self {
            Self::Trust(e) => Check::new(Status::Fail, "cluster", format!("TLS: {e}")).fix(
                "give onboarding.ca_path / --ca-path a readable PEM bundle of the cluster's CA",
            ),
            Self::Reach(e) => {
                Check::new(Status::Fail, "cluster", format!("cannot reach {addr}: {e}")).fix(
                    "check proxy_server (the Proxy's web address, host:443 or host:3080), that the \
                 Proxy is up, and firewalls on the way",
                )
            }
            Self::Untrusted(e) => Check::new(
                Status::Fail,
                "cluster",
                format!("TLS: certificate not trusted by {trusted_by}: {e}"),
            )
            .fix(match trust {
                Trust::Bundle(path) => format!(
                    "{} must hold the CA that signed the proxy's certificate (a rebuilt cluster \
                     has a new CA: fetch it again)",
                    path.display()
                ),
                _ => "pass --ca-path (onboarding.ca_path) with the CA bundle of a proxy that uses \
                      a private CA"
                    .to_owned(),
            }),
            Self::Time(e) => Check::new(Status::Fail, "cluster", format!("TLS: {e}")).fix(
                "check this machine's clock (timedatectl; the certificate's validity does not \
                 include its time), or have the cluster's admin renew an expired certificate",
            ),
            Self::Tls(e) => Check::new(Status::Fail, "cluster", format!("TLS: {e}"))
                .fix("check that proxy_server is a TLS endpoint of the Teleport Proxy"),
            Self::Alpn(e) => Check::new(Status::Fail, "cluster", format!("ALPN: {e}")).fix(
                "point proxy_server at the Teleport Proxy itself; a load balancer in front of it \
                 must pass TLS through (no termination) so that ALPN reaches the Proxy",
            ),
        }
    }

    fn from_transport(error: tonic::transport::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return Self::tls(tls);
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    return Self::tls(tls);
                }
                let text = io.to_string();
                if text.contains("chose ALPN") {
                    return Self::Alpn(text);
                }
                return Self::Reach(text);
            }
            source = e.source();
        }
        Self::Reach(transport::describe(String::new(), &error))
    }

    fn tls(error: &rustls::Error) -> Self {
        use rustls::CertificateError as E;
        match error {
            rustls::Error::InvalidCertificate(
                E::Expired
                | E::ExpiredContext { .. }
                | E::NotValidYet
                | E::NotValidYetContext { .. },
            ) => Self::Time(error.to_string()),
            rustls::Error::InvalidCertificate(_) => Self::Untrusted(error.to_string()),
            _ => Self::Tls(error.to_string()),
        }
    }
}
