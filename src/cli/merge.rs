//! `keybound start`'s flags over `tbot.yaml`: the effective configuration, as tbot's
//! `LoadConfigWithMutators` builds it (the file, if any, then each flag that is set).

use anyhow::anyhow;

use super::Start;
use super::services::destination_uri;
use crate::Failure;
use crate::config::{ClusterAddr, Config, Onboarding, OutputConfig};
use crate::fsutil::Symlinks;
use crate::output::IdentityOutput;
use crate::signer::SignerKind;
use crate::values::{Destination, HostPort};

impl Start {
    /// The configuration a run uses: the file (or, without one, the flags alone) with every
    /// flag that is set over it, checked as the file is.
    pub fn effective_config(&self) -> Result<Config, Failure> {
        let mut config = self.base_config()?;
        self.check_refused_flags()?;
        self.apply_cluster(&mut config)?;
        self.apply_onboarding(&mut config)?;
        self.apply_destinations(&mut config)
            .map_err(Failure::config)?;
        self.apply_run(&mut config);
        if let Some(service) = &self.service {
            let yaml = service.to_yaml().map_err(|e| Failure::config(anyhow!(e)))?;
            let at = format!("keybound start {}", service.name());
            match crate::config::generate::service(&yaml, &at)
                .map_err(|e| Failure::config(anyhow!(e)))?
            {
                crate::config::generate::Entry::Output(output) => config.outputs.push(output),
                crate::config::generate::Entry::Service(service) => config.services.push(service),
            }
        }
        config
            .check_destinations()
            .and_then(|()| config.check_lifetimes())
            .map_err(|e| Failure::config(anyhow!(e)))?;
        Ok(config)
    }

    /// The file's configuration, or tbot's defaults when there is none (then `--token` is
    /// required).
    fn base_config(&self) -> Result<Config, Failure> {
        if let Some(path) = &self.config {
            return Config::load(path).map_err(Failure::config);
        }
        let from_uri = self
            .join_uri
            .as_deref()
            .and_then(|uri| super::join_uri::JoinUri::parse(uri).ok())
            .map(|uri| uri.token);
        let token = self.token.clone().or(from_uri).ok_or_else(|| {
            Failure::config(anyhow!(
                "no configuration: pass -c tbot.yaml, or at least --proxy-server, --token and \
                 --join-method bound_keypair"
            ))
        })?;
        Ok(Config {
            cluster: None,
            onboarding: Onboarding {
                token,
                ..Onboarding::default()
            },
            storage: Destination::Directory {
                path: crate::config::DEFAULT_STORAGE_PATH.into(),
                symlinks: Symlinks::default(),
            },
            credential_ttl: crate::config::DEFAULT_CREDENTIAL_TTL,
            renewal_interval: crate::config::DEFAULT_RENEWAL_INTERVAL,
            oneshot: false,
            debug: false,
            insecure: false,
            diag_addr: None,
            outputs: Vec::new(),
            services: Vec::new(),
        })
    }

    /// Flags with values keybound cannot take: another join method. (tbot flags keybound lacks,
    /// `--ca-pin` among them, are refused as the command line is read: `Cli::unsupported`.)
    fn check_refused_flags(&self) -> Result<(), Failure> {
        if let Some(method) = &self.join_method {
            if method != "bound_keypair" {
                return Err(Failure::config(anyhow!(
                    "--join-method {method}: keybound joins only with bound_keypair"
                )));
            }
        } else if self.config.is_none() && self.join_uri.is_none() {
            return Err(Failure::config(anyhow!(
                "--join-method bound_keypair is required without -c"
            )));
        }
        Ok(())
    }

    /// `--proxy-server` or `--auth-server`.
    fn apply_cluster(&self, config: &mut Config) -> Result<(), Failure> {
        let parse = |flag: &str, value: &str, port| {
            HostPort::parse(value, port).map_err(|e| Failure::config(anyhow!("--{flag}: {e}")))
        };
        match (&self.proxy_server, &self.auth_server) {
            (Some(_), Some(_)) => {
                return Err(Failure::config(anyhow!(
                    "--proxy-server and --auth-server are both set; give one"
                )));
            }
            (Some(p), None) => {
                config.cluster = Some(ClusterAddr::Proxy(parse("proxy-server", p, 443)?));
            }
            (None, Some(a)) => {
                config.cluster = Some(ClusterAddr::Auth(parse("auth-server", a, 3025)?));
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// The token, the CA bundle and the key's flags, checked as `onboarding:` is.
    fn apply_onboarding(&self, config: &mut Config) -> Result<(), Failure> {
        if let Some(token) = &self.token {
            // Read as the config key is (a name, or an absolute path to a file holding it),
            // once here to fail early; the join reads it again.
            crate::config::token::read(token)
                .map_err(|e| Failure::config(anyhow!("{}: {e}", token_flag(token))))?;
            config.onboarding.token.clone_from(token);
        }
        if let Some(path) = &self.static_key_path {
            config.onboarding.static_private_key_path = Some(path.clone());
            if self.signer.signer.is_none() {
                config.onboarding.signer = Some(SignerKind::File);
            }
        }
        self.signer.apply(&mut config.onboarding);
        if let Some(secret) = &self.registration_secret {
            config.onboarding.registration_secret = Some(secret.clone());
            config.onboarding.registration_secret_path = None;
        }
        if let Some(path) = &self.registration_secret_path {
            config.onboarding.registration_secret_path = Some(path.clone());
            config.onboarding.registration_secret = None;
        }
        if let Some(uri) = &self.join_uri {
            super::join_uri::JoinUri::parse(uri)
                .and_then(|u| u.apply(config))
                .map_err(Failure::config)?;
        }
        if let Some(path) = &self.ca_path {
            config.onboarding.ca_path = Some(path.clone());
        }
        config
            .onboarding
            .signer_config()
            .map_err(|e| Failure::config(anyhow!("onboarding.bound_keypair: {e}")))?;
        Ok(())
    }

    /// `--data-dir`, `--storage` and `--destination-dir` (which replaces every output with one
    /// identity output, as tbot's does).
    fn apply_destinations(&self, config: &mut Config) -> anyhow::Result<()> {
        if let Some(dir) = &self.data_dir {
            config.storage = Destination::Directory {
                path: dir.clone(),
                symlinks: Symlinks::default(),
            };
        }
        if let Some(uri) = &self.storage {
            config.storage = destination_uri("--storage", uri).map_err(|e| anyhow!(e))?;
        }
        if let Some(dir) = &self.destination_dir {
            config.outputs = vec![OutputConfig::Identity(IdentityOutput::in_directory(
                dir.clone(),
            ))];
        }
        Ok(())
    }

    /// Lifetimes, the diagnostics address, `--oneshot`, `--insecure`.
    fn apply_run(&self, config: &mut Config) {
        if let Some(ttl) = self.certificate_ttl {
            config.credential_ttl = ttl;
        }
        if let Some(interval) = self.renewal_interval {
            config.renewal_interval = interval;
        }
        if let Some(addr) = &self.diag_addr {
            config.diag_addr = Some(addr.clone());
        }
        config.oneshot |= self.oneshot;
        config.insecure |= self.insecure;
    }
}

/// Where `--token`'s value came from, for errors: the flag, or `$TELEPORT_BOT_TOKEN` (which clap
/// reads for it) when the variable holds this very value.
fn token_flag(value: &str) -> &'static str {
    if std::env::var_os("TELEPORT_BOT_TOKEN").is_some_and(|v| v == value) {
        "$TELEPORT_BOT_TOKEN"
    } else {
        "--token"
    }
}
