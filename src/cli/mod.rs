//! The command line, shaped after tbot's (`lib/tbot/cli`). These `///` comments are the `--help`
//! text; flags are public API.

mod join_uri;
mod merge;
pub mod services;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use keybound_signer::Algorithm;

use keybound_devcluster::{DevClusterConfig, Misbehaviour, Serve, resources};
use keybound_teleport::suite::Suite;

use crate::logging::LogFormat;
use crate::signer::SignerKind;

/// A Teleport Machine ID agent whose bound keypair can live in a file, an environment variable, a
/// PKCS#11 token or a TPM.
// The first line is the man page's NAME line, which already starts with the name.
#[derive(Debug, Parser)]
#[command(
    name = "keybound",
    version,
    propagate_version = true,
    after_long_help = "Exit status: 0 on success; 2 for a command-line usage error. keybound \
        start exits 78 for a configuration or local input error, 77 when the cluster refused \
        the join, 69 when the cluster or a device could not be reached, and 70 for an internal \
        error. Other failures exit 1, as keybound doctor does when a check fails."
)]
pub struct Cli {
    /// Log at debug level (RUST_LOG, when set, overrides this).
    #[arg(short, long, global = true)]
    pub debug: bool,

    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// tbot's configuration as base64 YAML; refused (see [`Cli::unsupported`]).
    #[arg(
        long,
        global = true,
        hide = true,
        value_name = "BASE64",
        env = "TBOT_CONFIG"
    )]
    pub config_string: Option<String>,

    /// tbot's FIPS mode; refused.
    #[arg(long, global = true, hide = true)]
    pub fips: bool,

    /// tbot's distributed tracing; refused.
    #[arg(long, global = true, hide = true)]
    pub trace: bool,

    /// tbot's OTLP exporter for traces; refused.
    #[arg(long, global = true, hide = true, value_name = "URL")]
    pub trace_exporter: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The command line, or exit 2 with clap's usage error. A flag of tbot's that keybound does
    /// not have is accepted by the parser only to be refused here, naming the flag and what to
    /// do instead, rather than with clap's "unexpected argument".
    pub fn parse_args() -> Self {
        let cli = Self::parse();
        if let Some(message) = cli.unsupported() {
            // The subcommand's usage line, as clap's own errors show it.
            let mut command = <Self as clap::CommandFactory>::command();
            command.build();
            let mut command = command
                .find_subcommand(cli.command.name())
                .cloned()
                .unwrap_or(command);
            command
                .error(clap::error::ErrorKind::UnknownArgument, message)
                .exit();
        }
        cli
    }

    /// The first tbot flag given that keybound does not support, as "keybound does not support
    /// X: what to do", or `None`.
    pub fn unsupported(&self) -> Option<String> {
        let refused = |flag: &str, instead: &str| {
            Some(format!("keybound does not support {flag}: {instead}"))
        };
        if self.config_string.is_some() {
            return refused(
                "--config-string (TBOT_CONFIG)",
                "give the configuration as a file with -c PATH (or TBOT_CONFIG_PATH)",
            );
        }
        if self.fips {
            return refused(
                "--fips",
                "it has no FIPS build; without --fips it joins clusters of the fips-v1 suite \
                 with an ECDSA P-256 key",
            );
        }
        if self.trace || self.trace_exporter.is_some() {
            return refused(
                if self.trace {
                    "--trace"
                } else {
                    "--trace-exporter"
                },
                "it exports no traces; --debug logs each step",
            );
        }
        match &self.command {
            Command::Start(args)
            | Command::Doctor(args)
            | Command::Configure(Configure { start: args, .. })
                if !args.ca_pin.is_empty() =>
            {
                refused(
                    "--ca-pin",
                    "give the cluster's CA bundle with --ca-path (onboarding.ca_path)",
                )
            }
            _ => None,
        }
    }
}

/// Settings of the signer backends, shared by the commands that open or make a key. Each
/// overrides the same key under `onboarding.bound_keypair`.
#[derive(Clone, Debug, Default, Args)]
pub struct SignerArgs {
    /// Which backend holds the key: file, env, pkcs11 or tpm.
    #[arg(global = true, long, value_enum)]
    pub signer: Option<SignerKind>,

    /// The key in a PKCS#11 token, as an RFC 7512 URI: 'pkcs11:token=LABEL;object=LABEL'.
    #[arg(global = true, long, value_name = "URI")]
    pub pkcs11_uri: Option<String>,

    /// The PKCS#11 module (shared library) to load.
    #[arg(global = true, long, value_name = "PATH")]
    pub pkcs11_module: Option<PathBuf>,

    /// Where the token PIN comes from: env:VAR or file:PATH (never the PIN itself).
    #[arg(global = true, long, value_name = "env:VAR|file:PATH", value_parser = parse_pin_source)]
    pub pin_source: Option<keybound_signer::PinSource>,

    /// Refuse a key that its device could export or did not generate (an imported key).
    #[arg(global = true, long)]
    pub require_hardware_key: bool,

    /// How to reach the TPM (default: $TPM2TOOLS_TCTI, $TCTI, device:/dev/tpmrm0).
    #[arg(global = true, long, value_name = "TCTI")]
    pub tpm_tcti: Option<String>,

    /// The TPM key at a persistent handle (0x81xxxxxx).
    #[arg(global = true, long, value_name = "HANDLE", value_parser = crate::config::parse_handle)]
    pub tpm_key_handle: Option<u32>,

    /// The TPM key in a TSS2 PRIVATE KEY PEM file.
    #[arg(global = true, long, value_name = "PATH")]
    pub tpm_key_path: Option<PathBuf>,

    /// A persistent parent for --tpm-key-path (default: the standard ECC P-256 storage primary).
    #[arg(global = true, long, value_name = "HANDLE", value_parser = crate::config::parse_handle)]
    pub tpm_parent: Option<u32>,

    /// Standard mode in the TPM: keep the join state and key references in this owner-range NV
    /// index (0x018xxxxx) instead of storage, for a disk wiped at every boot.
    #[arg(global = true, long, value_name = "INDEX", value_parser = crate::config::parse_handle)]
    pub tpm_state_nv_index: Option<u32>,
}

impl SignerArgs {
    /// Writes these flags over the config's `onboarding`.
    pub fn apply(&self, onboarding: &mut crate::config::Onboarding) {
        if let Some(kind) = self.signer {
            onboarding.signer = Some(kind);
        }
        if let Some(uri) = &self.pkcs11_uri {
            onboarding.pkcs11_uri = Some(uri.as_str().into());
        }
        if let Some(module) = &self.pkcs11_module {
            onboarding.pkcs11_module = Some(module.clone());
        }
        if let Some(pin) = &self.pin_source {
            onboarding.pin_source = Some(pin.clone());
        }
        if self.require_hardware_key {
            onboarding.require_hardware_key = true;
        }
        if let Some(tcti) = &self.tpm_tcti {
            onboarding.tpm_tcti = Some(tcti.clone());
        }
        if let Some(handle) = self.tpm_key_handle {
            onboarding.tpm_key_handle = Some(handle);
        }
        if let Some(path) = &self.tpm_key_path {
            onboarding.tpm_key_path = Some(path.clone());
        }
        if let Some(parent) = self.tpm_parent {
            onboarding.tpm_parent = Some(parent);
        }
        if let Some(index) = self.tpm_state_nv_index {
            onboarding.tpm_state_nv_index = Some(index);
        }
    }
}

fn parse_pin_source(text: &str) -> Result<keybound_signer::PinSource, String> {
    keybound_signer::PinSource::parse(text)
}

/// keybound's commands.
// One value per process, parsed once: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join the cluster and write the bot's certificates (tbot's `start`).
    Start(Start),
    /// Print the tbot.yaml that `start <kind>` with the same flags runs (tbot's `configure`);
    /// no config file is read.
    #[command(mut_arg("config", |arg| arg.hide(true)))]
    Configure(Configure),
    /// Create and inspect bound keypairs.
    #[command(subcommand)]
    Keypair(KeypairCommand),
    /// Inspect signer backends.
    #[command(subcommand)]
    Signer(SignerCommand),
    /// Check evidence that a bound key lives in a TPM (made by `keypair attest`), with no
    /// TPM; and challenge the host once to prove its attestation key sits in the EK's TPM.
    #[command(subcommand)]
    Attest(AttestCommand),
    /// Run a local reference Teleport cluster for tests, demos and rehearsals; its subcommands
    /// manage a running one's tokens, bots, roles and locks, as tctl does.
    DevCluster(DevClusterCommand),
    /// Check the configuration, the signer, the cluster and the clock, one line per check,
    /// without signing or joining. Takes start's flags, so it checks what start would use.
    // --oneshot changes nothing doctor checks: accepted (a start command line may be pasted),
    // not listed.
    #[command(mut_arg("oneshot", |arg| arg.hide(true)))]
    Doctor(Start),
    /// Kubernetes helpers: `kube credentials`, the exec plugin of the kubeconfig a Kubernetes
    /// output writes.
    #[command(subcommand)]
    Kube(KubeCommand),
    /// Print a shell completion script: `keybound completions bash > /etc/bash_completion.d/keybound`.
    Completions(CompletionsArgs),
    /// Print the man page (roff): `keybound man > keybound.1`, or one page per command with
    /// --out-dir.
    Man(ManArgs),
    /// Carry one SSH connection through the Teleport proxy to a node: the ProxyCommand of an
    /// identity output's ssh_config (tbot's ssh-proxy-command), run by OpenSSH.
    SshProxyCommand(SshProxyArgs),
}

impl Command {
    /// The subcommand's name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start(_) => "start",
            Self::Configure(_) => "configure",
            Self::Keypair(_) => "keypair",
            Self::Signer(_) => "signer",
            Self::Attest(_) => "attest",
            Self::DevCluster(_) => "dev-cluster",
            Self::Doctor(_) => "doctor",
            Self::Kube(_) => "kube",
            Self::Completions(_) => "completions",
            Self::Man(_) => "man",
            Self::SshProxyCommand(_) => "ssh-proxy-command",
        }
    }
}

/// `keybound ssh-proxy-command`, with tbot's flags (`lib/tbot/cli/ssh_proxy.go`).
#[derive(Debug, Args)]
pub struct SshProxyArgs {
    /// The identity output's directory (it reads its `identity` file).
    #[arg(long, value_name = "DIR")]
    pub destination_dir: PathBuf,

    /// The proxy, host:port (what the output's ssh_config names).
    #[arg(long, value_name = "HOST:PORT")]
    pub proxy_server: String,

    /// The cluster the node is in; by default the identity's.
    #[arg(long)]
    pub cluster: Option<String>,

    /// The login on the node (ssh's %r).
    #[arg(long)]
    pub user: String,

    /// The node (ssh's %h): its hostname, address or UUID, `.<cluster>` or `.<proxy host>`
    /// suffixes removed.
    #[arg(long)]
    pub host: String,

    /// The node's port (ssh's %p); none or 0 matches any.
    #[arg(long)]
    pub port: Option<String>,

    /// Whether the proxy routes TLS by ALPN (accepted; keybound dials --proxy-server the same
    /// way either way, as Teleport serves the same gRPC server behind both ports).
    #[arg(long, overrides_with = "no_tls_routing")]
    pub tls_routing: bool,
    /// The opposite of --tls-routing.
    #[arg(long, overrides_with = "tls_routing")]
    pub no_tls_routing: bool,

    /// Go through an L7 load balancer's connection upgrade (accepted: keybound decides on every
    /// dial, as tbot's client does, and TELEPORT_TLS_ROUTING_CONN_UPGRADE overrides it).
    #[arg(long, overrides_with = "no_connection_upgrade")]
    pub connection_upgrade: bool,
    /// The opposite of --connection-upgrade.
    #[arg(long, overrides_with = "connection_upgrade")]
    pub no_connection_upgrade: bool,

    /// Offer connection resumption (accepted; keybound carries plain SSH, which every node
    /// takes).
    #[arg(long)]
    pub resume: bool,

    /// tsh proxy templates (not supported by keybound: refused).
    #[arg(long, value_name = "FILE")]
    pub proxy_templates: Option<PathBuf>,

    /// Do not verify the proxy's certificate (development only).
    #[arg(long)]
    pub insecure: bool,

    /// FIPS mode (not supported by keybound: refused).
    #[arg(long)]
    pub fips: bool,
}

/// `keybound kube ...`.
#[derive(Debug, Subcommand)]
pub enum KubeCommand {
    /// Print a client.authentication.k8s.io/v1beta1 ExecCredential from a Kubernetes output's
    /// identity (what kubectl runs for the kubeconfig's user).
    Credentials(KubeCredentialsArgs),
}

/// `keybound kube credentials`.
#[derive(Debug, Args)]
pub struct KubeCredentialsArgs {
    /// The Kubernetes output's directory (its `identity` file is read).
    #[arg(long, value_name = "DIR")]
    pub destination_dir: PathBuf,
}

/// `keybound completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `keybound man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write keybound.1 and a page per subcommand (keybound-start.1, ...) into this directory
    /// instead of printing keybound.1.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// `keybound signer ...`.
#[derive(Debug, Subcommand)]
pub enum SignerCommand {
    /// List the tokens of a PKCS#11 module and the keys on them, with URIs to paste.
    List(SignerList),
}

/// `keybound signer list`.
#[derive(Debug, Args)]
pub struct SignerList {
    /// The backend to list; only PKCS#11 modules hold keys to list.
    #[arg(long, value_enum, default_value_t = ListedSigner::Pkcs11)]
    pub signer: ListedSigner,

    /// The PKCS#11 module (shared library) to load.
    #[arg(long, value_name = "PATH")]
    pub pkcs11_module: PathBuf,

    /// Log in with this PIN source to list private keys (else public keys are listed).
    #[arg(long, value_name = "env:VAR|file:PATH", value_parser = parse_pin_source)]
    pub pin_source: Option<keybound_signer::PinSource>,

    /// Output format. json: one array with an object per token: token (its URI), description,
    /// login_required, error (null, or why its keys could not be listed) and keys, an array of
    /// objects with uri, kind and public_key.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

/// The backends `signer list` can list.
#[derive(Clone, Copy, Debug, Eq, PartialEq, ValueEnum)]
pub enum ListedSigner {
    /// The tokens of a PKCS#11 module.
    Pkcs11,
}

fn parse_secret(text: &str) -> Result<crate::bkp::RegistrationSecret, String> {
    Ok(crate::bkp::RegistrationSecret::new(text))
}

/// `keybound start`, with tbot's flags. Flags override the config file.
#[derive(Clone, Debug, Args)]
pub struct Start {
    /// With a kind: one output of that kind from flags, without a config file (tbot's `start
    /// identity`, `start app`, ...); its flags and start's go after the kind.
    #[command(subcommand)]
    pub service: Option<services::ServiceCommand>,

    /// tbot.yaml to read.
    #[arg(
        global = true,
        short,
        long,
        value_name = "PATH",
        env = "TBOT_CONFIG_PATH"
    )]
    pub config: Option<PathBuf>,

    /// Join once, write the outputs, and exit.
    #[arg(global = true, long)]
    pub oneshot: bool,

    /// The Teleport Proxy, host:port.
    #[arg(global = true, long, value_name = "HOST:PORT", env = "TELEPORT_PROXY")]
    pub proxy_server: Option<String>,

    /// A Teleport Auth Service (or a Proxy on 443/3080), host:port.
    #[arg(
        global = true,
        short = 'a',
        long,
        value_name = "HOST:PORT",
        env = "TELEPORT_AUTH_SERVER"
    )]
    pub auth_server: Option<String>,

    /// The bound_keypair join token's name, or an absolute path to a file holding it.
    #[arg(global = true, long, env = "TELEPORT_BOT_TOKEN")]
    pub token: Option<String>,

    /// The join method; keybound joins only with bound_keypair.
    #[arg(global = true, long, value_name = "METHOD")]
    pub join_method: Option<String>,

    /// The static key's PEM file (onboarding.bound_keypair.static_private_key_path).
    #[arg(global = true, long, value_name = "PATH")]
    pub static_key_path: Option<PathBuf>,

    /// The token's registration secret, for a first join in standard mode (visible to other
    /// users in the process list: prefer --registration-secret-path or TBOT_REGISTRATION_SECRET).
    #[arg(global = true, long, value_name = "SECRET", value_parser = parse_secret, conflicts_with = "registration_secret_path")]
    pub registration_secret: Option<crate::bkp::RegistrationSecret>,

    /// A file holding the token's registration secret (whitespace trimmed).
    #[arg(global = true, long, value_name = "PATH")]
    pub registration_secret_path: Option<PathBuf>,

    /// tbot's joining URI: tbot+proxy+bound-keypair://TOKEN:SECRET@HOST:PORT (what tctl bots
    /// add prints); sets the address, token, join method and registration secret.
    #[arg(global = true, long, value_name = "URI")]
    pub join_uri: Option<String>,

    /// Where the bound key lives, when not in a file or the environment.
    #[command(flatten)]
    pub signer: SignerArgs,

    /// Keep the bot's own identity in this directory (storage type directory).
    #[arg(global = true, long, value_name = "DIR", conflicts_with = "storage")]
    pub data_dir: Option<PathBuf>,

    /// Where to keep the bot's own identity: file:///DIR (or a bare path) or memory://.
    #[arg(global = true, long, value_name = "URI")]
    pub storage: Option<String>,

    /// Write one identity output to this directory, replacing the configured outputs.
    #[arg(global = true, long, value_name = "DIR")]
    pub destination_dir: Option<PathBuf>,

    /// Requested certificate lifetime (tbot's flag name; the config key is credential_ttl).
    #[arg(global = true, long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub certificate_ttl: Option<std::time::Duration>,

    /// How often to renew.
    #[arg(global = true, long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub renewal_interval: Option<std::time::Duration>,

    /// Diagnostics listener address.
    #[arg(global = true, long, value_name = "HOST:PORT")]
    pub diag_addr: Option<String>,

    /// Do not verify the proxy's TLS certificate (development only).
    #[arg(global = true, long)]
    pub insecure: bool,

    /// Verify the proxy with this PEM CA bundle instead of the system roots.
    #[arg(global = true, long, value_name = "PATH", conflicts_with = "insecure")]
    pub ca_path: Option<PathBuf>,

    /// tbot's CA pins; not supported by keybound yet.
    #[arg(global = true, long, value_name = "PIN", hide = true)]
    pub ca_pin: Vec<String>,
}

/// `keybound configure`: start's flags, and where the YAML goes.
#[derive(Debug, Args)]
pub struct Configure {
    /// The configuration, as `start` takes it.
    #[command(flatten)]
    pub start: Start,

    /// Write the YAML to this new file (mode 0600) instead of standard output; an existing file
    /// is never replaced.
    #[arg(short, long, value_name = "PATH", global = true)]
    pub output: Option<PathBuf>,
}

/// `keybound dev-cluster`: serve (with flags, or none), or, with a subcommand, administer the
/// running one.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_value_name = "ADMIN COMMAND"
)]
pub struct DevClusterCommand {
    /// Manage a running dev cluster through its admin socket (without one: serve).
    #[command(subcommand)]
    pub admin: Option<AdminCommand>,

    /// How to serve.
    #[command(flatten)]
    pub serve: DevClusterArgs,
}

/// `keybound dev-cluster`'s flags when it serves.
#[derive(Debug, Args)]
pub struct DevClusterArgs {
    /// Address to listen on (one TLS port, routed by ALPN like a Teleport Proxy).
    #[arg(long, default_value = "127.0.0.1:3080", value_name = "HOST:PORT")]
    pub listen: std::net::SocketAddr,

    /// The cluster's name.
    #[arg(long, default_value = "dev.keybound.test")]
    pub cluster_name: String,

    /// A Teleport token resource file (YAML, the tctl create format); repeatable. It may also
    /// hold roles, bots and locks, like --resources.
    #[arg(long = "token", value_name = "FILE")]
    pub tokens: Vec<PathBuf>,

    /// A Teleport resource file: tokens, roles, bots, locks and nodes (YAML, the tctl create
    /// format);
    /// repeatable. A `kind: bot` gives the bot the role bot-NAME, which may impersonate its
    /// spec.roles. While it runs, `keybound dev-cluster create` adds more.
    #[arg(long = "resources", value_name = "FILE")]
    pub resources: Vec<PathBuf>,

    /// Also serve Auth's endpoint on this address (as Auth's :3025), for auth_server.
    #[arg(long, value_name = "HOST:PORT")]
    pub auth_listen: Option<std::net::SocketAddr>,

    /// The signature algorithm suite to announce.
    #[arg(long, default_value = "balanced-v1")]
    pub suite: String,

    /// Serve only the legacy RegisterUsingBoundKeypairMethod RPC.
    #[arg(long)]
    pub legacy_only: bool,

    /// Send a second, suite-less ServerInit (as some 18.x builds did).
    #[arg(long)]
    pub duplicate_server_init: bool,

    /// Misbehave on purpose, to test clients.
    #[arg(long, value_name = "MISBEHAVIOUR", value_parser = misbehaviours())]
    pub misbehave: Option<Misbehaviour>,

    /// Write the CA bundle clients must trust here.
    #[arg(long, default_value = "dev-cluster-ca.pem", value_name = "PATH")]
    pub ca_out: PathBuf,

    /// The Teleport version to claim.
    #[arg(long, default_value = "18.2.10")]
    pub server_version: String,

    /// Serve the admin side (what the subcommands use) at this Unix socket, instead of
    /// PORT.sock in $XDG_RUNTIME_DIR/keybound-dev-cluster (or /tmp/keybound-dev-cluster-UID).
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
}

impl DevClusterArgs {
    /// The dev cluster's own configuration for these flags, with the resource files read.
    pub fn to_config(&self) -> anyhow::Result<DevClusterConfig> {
        let mut resources = resources::Resources::default();
        for path in self.tokens.iter().chain(&self.resources) {
            resources.extend(resources::load(path)?);
        }
        Ok(DevClusterConfig {
            listen: self.listen,
            cluster_name: self.cluster_name.clone(),
            suite: Suite::parse(&self.suite).map_err(|e| anyhow::anyhow!("--suite: {e}"))?,
            legacy_only: self.legacy_only,
            duplicate_server_init: self.duplicate_server_init,
            misbehave: self.misbehave,
            server_version: self.server_version.clone(),
            tokens: resources.tokens,
            roles: resources.roles,
            bots: resources.bots,
            locks: resources.locks,
            apps: resources.apps,
            databases: resources.databases,
            kube_clusters: resources.kube_clusters,
            workload_identities: resources.workload_identities,
            nodes: resources.nodes,
            spiffe_federations: resources.spiffe_federations,
            auth_listen: self.auth_listen,
            ..DevClusterConfig::default()
        })
    }

    /// What the command does besides serving: the CA bundle and the admin socket.
    pub fn to_serve(&self) -> Serve {
        Serve {
            ca_out: self.ca_out.clone(),
            admin_socket: self.admin_socket.clone(),
        }
    }
}

/// `keybound dev-cluster <admin command>`: tctl's commands against a running dev cluster.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create tokens, bots, roles and locks from Teleport resource YAML (tctl create): all of
    /// the file, or none of it.
    Create(AdminCreate),
    /// Print resources as YAML (tctl get): KIND for all of a kind (tokens, bots, roles,
    /// locks, nodes), KIND/NAME for one.
    Get(AdminGet),
    /// List the resources of a kind, one line each (tctl tokens ls, tctl bots ls).
    #[command(visible_alias = "list")]
    Ls(AdminLs),
    /// Remove a resource (tctl rm): KIND/NAME, e.g. tokens/example-token.
    #[command(visible_alias = "remove")]
    Rm(AdminRm),
    /// Lock a user, a role or a join token: joins and certificates for it are refused until
    /// the lock is removed (rm locks/NAME) or expires (tctl lock).
    Lock(AdminLock),
    /// Print the running cluster's name, version, addresses and resource counts (tctl status).
    Status(AdminArgs),
    /// Ask a bound_keypair token's bot to rotate its key at its next join (tctl bound-keypair
    /// request-rotation): sets spec.bound_keypair.rotate_after to now.
    RequestRotation(AdminRequestRotation),
    /// List the heartbeats bot instances have sent, oldest first, one line each (tctl bots
    /// instances): instance, bot, when, start-up or one-shot, version, host, uptime.
    Heartbeats(AdminArgs),
    /// Sign an SSH host key with the cluster's host CA, for an OpenSSH node's HostCertificate
    /// (tctl auth sign --format=openssh --host=...): prints the certificate line.
    SignHost(AdminSignHost),
}

/// `keybound dev-cluster request-rotation`.
#[derive(Debug, Args)]
pub struct AdminRequestRotation {
    /// The bound_keypair token's name.
    #[arg(value_name = "TOKEN")]
    pub token: String,

    /// Where the cluster is.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `keybound dev-cluster sign-host`.
#[derive(Debug, Args)]
pub struct AdminSignHost {
    /// The host's public key file (e.g. /etc/ssh/ssh_host_ed25519_key.pub).
    #[arg(long, value_name = "FILE")]
    pub public_key: PathBuf,

    /// A name the certificate is valid for (the names clients dial: the node's hostname,
    /// hostname.CLUSTER, its address); repeatable.
    #[arg(long = "principal", value_name = "NAME", required = true)]
    pub principals: Vec<String>,

    /// Where the cluster is.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// How the admin commands reach the cluster.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The dev cluster's admin socket (it prints `admin socket: PATH`); by default, the one
    /// dev cluster of yours running with its socket in the default directory.
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
}

/// `keybound dev-cluster create`.
#[derive(Debug, Args)]
pub struct AdminCreate {
    /// The resource YAML: one or more documents of kind token, bot, role or lock (- or none:
    /// standard input).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Replace resources that exist (a replaced token starts with the status the file gives,
    /// none if it has no status section).
    #[arg(short, long)]
    pub force: bool,

    /// Where the cluster is.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `keybound dev-cluster get`.
#[derive(Debug, Args)]
pub struct AdminGet {
    /// KIND or KIND/NAME: tokens, bots, roles, locks or nodes (token, bot, role, lock, node
    /// too).
    #[arg(value_name = "KIND[/NAME]")]
    pub resource: String,

    /// Output format.
    #[arg(long, value_enum, default_value_t = ResourceFormat::Yaml)]
    pub format: ResourceFormat,

    /// Where the cluster is.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// How `get` prints resources.
#[derive(Clone, Copy, Debug, Eq, PartialEq, ValueEnum)]
pub enum ResourceFormat {
    /// Teleport's resource YAML, documents separated by `---` (what create takes back).
    Yaml,
    /// One JSON value: an object for KIND/NAME, an array for KIND.
    Json,
}

/// `keybound dev-cluster ls`.
#[derive(Debug, Args)]
pub struct AdminLs {
    /// tokens, bots, roles, locks or nodes.
    #[arg(value_name = "KIND")]
    pub kind: String,

    /// Where the cluster is.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `keybound dev-cluster rm`.
#[derive(Debug, Args)]
pub struct AdminRm {
    /// KIND/NAME: tokens/NAME, bots/NAME, roles/NAME, locks/NAME or nodes/NAME.
    #[arg(value_name = "KIND/NAME")]
    pub resource: String,

    /// Where the cluster is.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `keybound dev-cluster lock`, with tctl lock's flags.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["user", "role", "join_token"])))]
pub struct AdminLock {
    /// Lock this user (a bot's user is bot-NAME): its joins and certificates are refused.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Lock this role: no certificates carrying it are issued or accepted.
    #[arg(long, value_name = "NAME")]
    pub role: Option<String>,

    /// Lock this join token: joins with it, and the identities it gave, are refused.
    #[arg(long, value_name = "NAME")]
    pub join_token: Option<String>,

    /// Why, for whoever is refused.
    #[arg(long)]
    pub message: Option<String>,

    /// Lift the lock after this long (default: never).
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub ttl: Option<std::time::Duration>,

    /// Where the cluster is.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `--misbehave`'s values: the dev cluster's misbehaviours, each with its documentation.
fn misbehaviours() -> impl clap::builder::TypedValueParser<Value = Misbehaviour> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};
    PossibleValuesParser::new(Misbehaviour::ALL.iter().map(|m| {
        let help = m.help().split_whitespace().collect::<Vec<_>>().join(" ");
        PossibleValue::new(m.name()).help(help)
    }))
    .try_map(|name| name.parse::<Misbehaviour>())
}

/// `keybound keypair ...`.
#[derive(Debug, Subcommand)]
pub enum KeypairCommand {
    /// Create a static bound keypair and print how to register it with Teleport.
    Create(KeypairCreate),
    /// Print the public key of an existing static key: the one --static-key-path names, the one
    /// a config names, or the one in TBOT_BOUND_KEYPAIR_STATIC_KEY.
    Show(KeypairShow),
    /// Make evidence that the key lives in the TPM (docs/attestation.md), for the admin to
    /// check with `keybound attest verify`; or, with --respond, answer the admin's challenge.
    /// PKCS#11 and file keys cannot be attested.
    Attest(KeypairAttest),
}

/// What a key's attestation statement names: the bot and token the admin will bind it to.
#[derive(Clone, Debug, Default, Args)]
pub struct AttestStatement {
    /// The bot the key is for (the token's spec.bot_name).
    #[arg(long, value_name = "NAME")]
    pub bot_name: Option<String>,

    /// The join token the key will be bound to (its metadata.name).
    #[arg(long = "token-name", value_name = "NAME")]
    pub token_name: Option<String>,

    /// A nonce from the admin, carried in the statement (checked by attest verify --nonce).
    #[arg(long, value_name = "TEXT")]
    pub nonce: Option<String>,

    /// PEM CA certificates between the TPM's EK certificates and the manufacturer root, to
    /// carry in the evidence (some TPMs' EK certificates name them only by an AIA URL).
    #[arg(long, value_name = "PEM")]
    pub ek_intermediates: Option<PathBuf>,
}

/// `keybound keypair attest`.
#[derive(Debug, Args)]
pub struct KeypairAttest {
    /// Read the key location from this tbot.yaml.
    #[arg(short, long, value_name = "PATH", env = "TBOT_CONFIG_PATH")]
    pub config: Option<PathBuf>,

    /// A PEM key file (refused: a file key is not hardware-bound).
    #[arg(long, value_name = "PATH")]
    pub static_key_path: Option<PathBuf>,

    /// The signer: --signer tpm with --tpm-key-handle or --tpm-key-path.
    #[command(flatten)]
    pub signer: SignerArgs,

    /// What the statement names.
    #[command(flatten)]
    pub statement: AttestStatement,

    /// Answer this challenge (from `keybound attest challenge`) instead of making evidence:
    /// the TPM recovers the admin's credential, written to --out.
    #[arg(long, value_name = "CHALLENGE")]
    pub respond: Option<PathBuf>,

    /// Write the evidence (or, with --respond, the response) here.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Replace --out if it exists.
    #[arg(long)]
    pub overwrite: bool,
}

/// `keybound attest ...`: the admin's side, no TPM needed.
#[derive(Debug, Subcommand)]
pub enum AttestCommand {
    /// Check evidence, one line per check; exit 0 only when every check passes.
    Verify(AttestVerify),
    /// Make the credential challenge for evidence: a secret only the TPM holding the EK can
    /// recover, through the evidence's attestation key. Send --out to the host (keybound
    /// keypair attest --respond), keep --secret-out.
    Challenge(AttestChallenge),
}

/// `keybound attest verify`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("bound").required(true).args(["public_key", "token"])))]
pub struct AttestVerify {
    /// The evidence file (from keybound keypair attest).
    #[arg(value_name = "FILE")]
    pub evidence: PathBuf,

    /// The TPM manufacturers' root CA certificates (PEM) the EK certificates must chain to;
    /// repeatable.
    #[arg(long = "ek-ca", value_name = "PEM", required = true)]
    pub ek_ca: Vec<PathBuf>,

    /// The bound key the evidence must be for, one authorized_keys line.
    #[arg(long, value_name = "'ecdsa-sha2-nistp256 AAAA...'")]
    pub public_key: Option<String>,

    /// The token resource (tctl's YAML) the evidence must be for: its name, bot and bound key
    /// (status.bound_keypair.bound_public_key, else spec.bound_keypair.onboarding.initial_public_key).
    #[arg(long, value_name = "token.yaml")]
    pub token: Option<PathBuf>,

    /// The nonce the statement must carry.
    #[arg(long, value_name = "TEXT")]
    pub nonce: Option<String>,

    /// The host's response to `attest challenge` (keybound keypair attest --respond).
    #[arg(long, value_name = "FILE", requires = "secret")]
    pub response: Option<PathBuf>,

    /// The secret `attest challenge` kept (--secret-out), to compare with --response.
    #[arg(long, value_name = "FILE", requires = "response")]
    pub secret: Option<PathBuf>,

    /// Output format. json: one object with ok (true only when every check passed) and checks,
    /// an array of objects with check, ok and detail.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

/// `keybound attest challenge`.
#[derive(Debug, Args)]
pub struct AttestChallenge {
    /// The evidence file.
    #[arg(value_name = "FILE")]
    pub evidence: PathBuf,

    /// Write the challenge, for the host, here.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Write the secret to keep here (mode 0600); attest verify --secret reads it.
    #[arg(long, value_name = "FILE")]
    pub secret_out: PathBuf,
}

/// `keybound keypair show`.
#[derive(Debug, Args)]
pub struct KeypairShow {
    /// Read the key location from this tbot.yaml.
    #[arg(short, long, value_name = "PATH", env = "TBOT_CONFIG_PATH")]
    pub config: Option<PathBuf>,

    /// The PEM key file (wins over --config and the environment).
    #[arg(long, value_name = "PATH")]
    pub static_key_path: Option<PathBuf>,

    /// The signer, when not a file or the environment.
    #[command(flatten)]
    pub signer: SignerArgs,

    /// Output format. json: one object with public_key, algorithm, fingerprint, key_id, signer
    /// and protection.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

/// `keybound keypair create`, with tbot's flags.
#[derive(Debug, Args)]
pub struct KeypairCreate {
    /// Create a static key: one you keep yourself (in a file, the environment or a device),
    /// which never rotates. Without it, the key goes into --storage for standard joining.
    #[arg(long = "static")]
    pub static_key: bool,

    /// Write the private key to this PEM file (mode 0600) instead of printing it for the
    /// environment.
    #[arg(long, value_name = "PATH")]
    pub static_key_path: Option<PathBuf>,

    /// Ask this Teleport Proxy (host:port) for its signature algorithm suite, and make the key
    /// type that suite uses.
    #[arg(long, value_name = "HOST:PORT")]
    pub proxy_server: Option<String>,

    /// Choose the key type instead of asking a proxy.
    #[arg(long, value_parser = parse_algorithm, value_name = "ed25519|ecdsa-p256")]
    pub algorithm: Option<Algorithm>,

    /// Where the key lives: --signer file (needs --static-key-path), env (printed for
    /// TBOT_BOUND_KEYPAIR_STATIC_KEY), or pkcs11 (made inside the token --pkcs11-uri names).
    #[command(flatten)]
    pub signer: SignerArgs,

    /// Output format. json: tbot's object, public_key, with private_key for a key printed for
    /// the environment; keybound adds pkcs11_uri or tpm_key for a key made in a device.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,

    /// Replace an existing key file (with --storage: the stored bound keypair; keys it made in a
    /// device are destroyed there).
    #[arg(long)]
    pub overwrite: bool,

    /// Do not verify the proxy's TLS certificate (development only).
    #[arg(long)]
    pub insecure: bool,

    /// Verify the proxy's TLS certificate with this PEM CA bundle instead of the system roots.
    #[arg(long, value_name = "PATH", conflicts_with = "insecure")]
    pub ca_path: Option<PathBuf>,

    /// With --signer tpm: also write evidence that the new key lives in the TPM to this file
    /// (as keybound keypair attest does); needs --bot-name and --token-name.
    #[arg(long, value_name = "FILE", requires_all = ["bot_name", "token_name"])]
    pub attest_out: Option<PathBuf>,

    /// What the evidence's statement names (with --attest-out).
    #[command(flatten)]
    pub attest: AttestStatement,

    /// Without --static: the bot's storage directory (file:///DIR or a path), where the key
    /// is kept for standard joining, as tbot keeps it (id_bkp and its history); with --signer
    /// pkcs11 and a --pkcs11-uri naming only the token, or --signer tpm and no key, the key is
    /// made inside the device and storage keeps its reference (bkp_device_keys.json).
    #[arg(long, value_name = "URI")]
    pub storage: Option<String>,
}

/// Output format of `keypair create`, `keypair show` and `signer list`; each command's
/// `--format` says what its JSON holds.
#[derive(Clone, Copy, Debug, Eq, PartialEq, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    Text,
    /// One JSON document on one line.
    Json,
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse()
        .map_err(|e: keybound_signer::UnknownAlgorithm| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
