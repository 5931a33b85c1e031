//! `keybound keypair create --static`: makes a bound keypair and says how to register and use it,
//! following `tbot keypair create` (`tool/tbot/keypair.go`).

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, bail};
use keybound_signer::config::{Pkcs11Config, STATIC_KEY_ENV, SignerConfig, TpmConfig, TpmKey};
use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::cli::{KeypairCreate, KeypairShow, OutputFormat};
use crate::config::{Config, HostPort, Onboarding};
use crate::fsutil::{Replace, write_atomic};
use crate::signer::SignerKind;
use crate::tls::{Trust, client_config};
use crate::webapi;

const RECOVERY_DOCS: &str = "https://goteleport.com/docs/reference/machine-workload-identity/machine-id/bound-keypair/concepts/#recovery";

/// Where a new key is handed to the agent.
enum Handoff<'a> {
    File(&'a Path),
    Env(Zeroizing<String>),
    #[cfg_attr(not(feature = "pkcs11"), allow(dead_code))]
    Pkcs11 {
        uri: String,
        config: &'a Pkcs11Config,
    },
    #[cfg_attr(not(feature = "tpm"), allow(dead_code))]
    Tpm {
        location: String,
        config: &'a TpmConfig,
    },
}

/// Runs `keypair create`, writing its report to `out`.
pub async fn create(args: &KeypairCreate, out: &mut dyn Write) -> anyhow::Result<()> {
    if args.storage.is_some() || !args.static_key {
        bail!(
            "keybound makes static keys only: add --static (tbot's non-static keys, kept in \
             --storage, are not supported)"
        );
    }
    let mut onboarding = Onboarding {
        static_private_key_path: args.static_key_path.clone(),
        ..Onboarding::default()
    };
    args.signer.apply(&mut onboarding);
    let signer_config = onboarding.signer_config().map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.replace(
                "static_private_key_path (or --static-key-path)",
                "--static-key-path PATH"
            )
        )
    })?;
    let new_file = match &signer_config {
        SignerConfig::File(file) => Some(&file.path),
        SignerConfig::Tpm(TpmConfig {
            key: TpmKey::File(path),
            ..
        }) => Some(path),
        _ => None,
    };
    if let Some(path) = new_file
        && path.exists()
        && !args.overwrite
    {
        bail!(
            "key file {path} already exists; keybound never replaces a key without \
                 --overwrite (to print its public key: keybound keypair show --static-key-path \
                 {path})",
            path = path.display()
        );
    }

    let is_tpm = matches!(signer_config, SignerConfig::Tpm(_));
    let mut algorithm = if is_tpm && args.algorithm.is_none() && args.proxy_server.is_none() {
        // A TPM makes P-256 keys only; there is nothing to ask the cluster.
        Algorithm::EcdsaP256Sha256
    } else {
        choose_algorithm(args).await?
    };
    if is_tpm && args.algorithm.is_none() && algorithm == Algorithm::Ed25519 {
        // TPMs have no Ed25519; a static P-256 bound key works whatever the cluster's suite.
        tracing::info!(
            "the cluster's suite uses Ed25519 bound keys, which TPMs cannot make: making an ECDSA P-256 key instead"
        );
        algorithm = Algorithm::EcdsaP256Sha256;
    }
    let (public_key, handoff) = match &signer_config {
        SignerConfig::File(file) => {
            let signer = SoftSigner::generate(algorithm)?;
            let replace = if args.overwrite {
                Replace::Allow
            } else {
                Replace::Never
            };
            write_atomic(&file.path, signer.to_pkcs8_pem().as_bytes(), 0o600, replace)
                .with_context(|| format!("writing key file {}", file.path.display()))?;
            tracing::info!(path = %file.path.display(), fingerprint = %signer.public_key().fingerprint(), "wrote static key");
            (signer.public_key().to_openssh(), Handoff::File(&file.path))
        }
        SignerConfig::Env(_) => {
            let signer = SoftSigner::generate(algorithm)?;
            (
                signer.public_key().to_openssh(),
                Handoff::Env(signer.to_env_value()),
            )
        }
        #[cfg(feature = "pkcs11")]
        SignerConfig::Pkcs11(config) => {
            let (config_for_task, overwrite) = (config.clone(), args.overwrite);
            let config: &Pkcs11Config = config;
            let signer = tokio::task::spawn_blocking(move || {
                keybound_signer_pkcs11::generate(&config_for_task, algorithm, overwrite)
            })
            .await??;
            tracing::info!(key = %signer.uri(), protection = %signer.protection(), "made the key inside the token");
            (
                signer.public_key().to_openssh(),
                Handoff::Pkcs11 {
                    uri: signer.uri().to_string(),
                    config,
                },
            )
        }
        #[cfg(feature = "tpm")]
        SignerConfig::Tpm(config) => {
            let (config_for_task, overwrite) = (config.clone(), args.overwrite);
            let config: &TpmConfig = config;
            let generated = tokio::task::spawn_blocking(move || {
                keybound_signer_tpm::generate(&config_for_task, algorithm, overwrite)
            })
            .await??;
            if let (Some(pem), TpmKey::File(path)) = (&generated.pem, &config.key) {
                let replace = if args.overwrite {
                    Replace::Allow
                } else {
                    Replace::Never
                };
                write_atomic(path, pem.as_bytes(), 0o600, replace)
                    .with_context(|| format!("writing TPM key file {}", path.display()))?;
            }
            let signer = &generated.signer;
            tracing::info!(key = %signer.location(), protection = %signer.protection(), "made the key inside the TPM");
            (
                signer.public_key().to_openssh(),
                Handoff::Tpm {
                    location: signer.location(),
                    config,
                },
            )
        }
        other => return Err(crate::signer::not_built(other.backend()).into()),
    };

    match args.format {
        OutputFormat::Json => {
            let document = KeypairDocument {
                public_key: &public_key,
                private_key: match &handoff {
                    Handoff::Env(value) => Some(value.as_str()),
                    _ => None,
                },
                pkcs11_uri: match &handoff {
                    Handoff::Pkcs11 { uri, .. } => Some(uri.as_str()),
                    _ => None,
                },
                tpm_key: match &handoff {
                    Handoff::Tpm { location, .. } => Some(location.as_str()),
                    _ => None,
                },
            };
            serde_json::to_writer(&mut *out, &document)?;
            writeln!(out)?;
        }
        OutputFormat::Text => write_text(out, &public_key, &handoff)?,
    }
    out.flush()?;
    Ok(())
}

/// Runs `keypair show`: opens the key and prints its public half.
pub fn show(args: &KeypairShow, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut onboarding = match &args.config {
        Some(path) => Config::load(path)?.onboarding,
        None => Onboarding::default(),
    };
    if let Some(path) = &args.static_key_path {
        onboarding.static_private_key_path = Some(path.clone());
        onboarding.signer.get_or_insert(SignerKind::File);
    }
    args.signer.apply(&mut onboarding);
    let config = onboarding.signer_config().map_err(|e| anyhow::anyhow!(e))?;
    let signer = crate::signer::open_signer(&config)?;
    let key = signer.public_key();
    match args.format {
        OutputFormat::Json => {
            let document = serde_json::json!({
                "public_key": key.to_openssh(),
                "algorithm": key.algorithm().as_str(),
                "fingerprint": key.fingerprint(),
                "key_id": key.key_id(),
                "signer": signer.backend(),
                "protection": signer.protection().to_string(),
            });
            serde_json::to_writer(&mut *out, &document)?;
            writeln!(out)?;
        }
        OutputFormat::Text => writeln!(
            out,
            "public key:  {}\nalgorithm:   {}\nfingerprint: {}\nkey id:      {}\nsigner:      {}\nprotection:  {}",
            key.to_openssh(),
            key.algorithm(),
            key.fingerprint(),
            key.key_id(),
            signer.backend(),
            signer.protection(),
        )?,
    }
    out.flush()?;
    Ok(())
}

/// `--algorithm` if given; otherwise the bound-key algorithm of the proxy's suite.
async fn choose_algorithm(args: &KeypairCreate) -> anyhow::Result<Algorithm> {
    if let Some(algorithm) = args.algorithm {
        return Ok(algorithm);
    }
    let Some(proxy) = &args.proxy_server else {
        bail!(
            "choose the key type: pass --proxy-server HOST:PORT so keybound asks the cluster, or \
             --algorithm ed25519|ecdsa-p256"
        );
    };
    let addr = HostPort::parse(proxy, 443).map_err(|e| anyhow::anyhow!("--proxy-server: {e}"))?;
    let trust = if args.insecure {
        tracing::warn!(
            "--insecure: NOT verifying the proxy's TLS certificate; anyone on the network path \
             can pick your key type. Use this only against a development cluster."
        );
        Trust::Insecure
    } else if let Some(path) = &args.ca_path {
        Trust::Bundle(path.clone())
    } else {
        Trust::System
    };
    let found = webapi::find(&addr, client_config(&trust, &[b"http/1.1"])?).await?;
    let algorithm = found.suite.bound_key_algorithm();
    tracing::info!(proxy = %addr, suite = %found.suite, %algorithm, "chose key type from the cluster's signature algorithm suite");
    Ok(algorithm)
}

/// tbot's JSON document (`KeypairDocument` in `tool/tbot/keypair.go`).
#[derive(Serialize)]
struct KeypairDocument<'a> {
    public_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    private_key: Option<&'a str>,
    /// keybound: where a key made in a token is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pkcs11_uri: Option<&'a str>,
    /// keybound: where a key made in a TPM is.
    #[serde(skip_serializing_if = "Option::is_none")]
    tpm_key: Option<&'a str>,
}

/// The token example tbot prints: a `ProvisionTokenV2` with keys in the order Go's YAML writer
/// sorts them.
#[derive(Serialize)]
struct TokenExample<'a> {
    kind: &'static str,
    metadata: TokenMetadata,
    spec: TokenSpec<'a>,
    version: &'static str,
}

#[derive(Serialize)]
struct TokenMetadata {
    name: &'static str,
}

#[derive(Serialize)]
struct TokenSpec<'a> {
    bot_name: &'static str,
    bound_keypair: BoundKeypairSpec<'a>,
    join_method: &'static str,
    roles: [&'static str; 1],
}

#[derive(Serialize)]
struct BoundKeypairSpec<'a> {
    onboarding: TokenOnboarding<'a>,
    recovery: Recovery,
}

#[derive(Serialize)]
struct TokenOnboarding<'a> {
    initial_public_key: &'a str,
}

#[derive(Serialize)]
struct Recovery {
    limit: u32,
    mode: &'static str,
}

fn token_example(public_key: &str) -> anyhow::Result<String> {
    let token = TokenExample {
        kind: "token",
        metadata: TokenMetadata {
            name: "example-token",
        },
        spec: TokenSpec {
            bot_name: "example-bot",
            bound_keypair: BoundKeypairSpec {
                onboarding: TokenOnboarding {
                    initial_public_key: public_key,
                },
                recovery: Recovery {
                    limit: 1,
                    mode: "insecure",
                },
            },
            join_method: "bound_keypair",
            roles: ["Bot"],
        },
        version: "v2",
    };
    let yaml = serde_yaml::to_string(&token)?;
    Ok(yaml.lines().map(|l| format!("\t{l}\n")).collect())
}

/// The text report, in the structure of tbot's template.
fn write_text(out: &mut dyn Write, public_key: &str, handoff: &Handoff<'_>) -> anyhow::Result<()> {
    write!(
        out,
        "
To register the keypair with Teleport, include this public key in the token's
'spec.bound_keypair.onboarding.initial_public_key' field:

\t{public_key}

You can use 'tctl' to create a bot and token automatically:

\t$ tctl bots add bot-name \\
\t  --roles=some-role,some-other-role \\
\t  --initial-public-key='{public_key}' \\
\t  --recovery-mode=insecure

Refer to this token example as a reference:

{token}
Note that you must also set 'spec.bound_keypair.recovery.mode' to 'insecure'
to use static keys.
",
        token = token_example(public_key)?,
    )?;
    match handoff {
        Handoff::File(path) => write!(
            out,
            "
The static key has been written to: {path}

Configure your bot to use this static key by setting the following 'tbot.yaml'
field:

\tonboarding:
\t  join_method: bound_keypair
\t  bound_keypair:
\t    static_private_key_path: {path}
",
            path = path.display()
        )?,
        Handoff::Env(value) => write!(
            out,
            "
Configure your bot to use this static key by inserting the following private key
value into the bot's environment, ideally via a platform-specific keystore if
available:

\texport {STATIC_KEY_ENV}={value}
",
            value = value.as_str()
        )?,
        Handoff::Pkcs11 { uri, config } => {
            write!(
                out,
                "
The key was made inside the token and cannot leave it: {uri}

Configure your bot to use it by setting the following 'tbot.yaml' fields:

\tonboarding:
\t  join_method: bound_keypair
\t  bound_keypair:
\t    signer: pkcs11
\t    pkcs11_uri: \"{uri}\"
"
            )?;
            if let Some(module) = &config.module {
                writeln!(out, "\t    pkcs11_module: {}", module.display())?;
            }
            if let Some(pin) = &config.pin
                && !matches!(pin, keybound_signer::PinSource::Value(_))
            {
                writeln!(out, "\t    pin_source: {pin:?}")?;
            }
        }
        Handoff::Tpm { location, config } => {
            write!(
                out,
                "
The key was made inside the TPM and cannot leave it: {location}

Configure your bot to use it by setting the following 'tbot.yaml' fields:

\tonboarding:
\t  join_method: bound_keypair
\t  bound_keypair:
\t    signer: tpm
"
            )?;
            match &config.key {
                TpmKey::Handle(handle) => writeln!(out, "\t    tpm_key_handle: 0x{handle:08x}")?,
                TpmKey::File(path) => writeln!(out, "\t    tpm_key_path: {}", path.display())?,
            }
            if let Some(tcti) = &config.tcti {
                writeln!(out, "\t    tpm_tcti: \"{tcti}\"")?;
            }
            if let Some(parent) = config.parent {
                writeln!(out, "\t    tpm_parent: 0x{parent:08x}")?;
            }
            if let Some(pin) = &config.auth
                && !matches!(pin, keybound_signer::PinSource::Value(_))
            {
                writeln!(out, "\t    pin_source: {pin:?}")?;
            }
        }
    }
    write!(
        out,
        "
Note that bots joined with static tokens do not support keypair rotation and
will be unable to join if a rotation is requested server-side via the token's
'rotate_after' field. Additionally, 'insecure' recovery mode must be used, as
shown above. Read more at:

\t{RECOVERY_DOCS}
"
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_example_is_the_token_yaml_tctl_takes() {
        let text = token_example("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE").unwrap();
        assert!(text.lines().all(|l| l.starts_with('\t')));
        let untabbed: String = text.lines().map(|l| format!("{}\n", &l[1..])).collect();
        let value: serde_yaml::Value = serde_yaml::from_str(&untabbed).unwrap();
        assert_eq!(value["kind"], "token");
        assert_eq!(value["spec"]["join_method"], "bound_keypair");
        assert_eq!(value["spec"]["roles"][0], "Bot");
        assert_eq!(
            value["spec"]["bound_keypair"]["recovery"]["mode"],
            "insecure"
        );
        assert_eq!(
            value["spec"]["bound_keypair"]["onboarding"]["initial_public_key"],
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE"
        );
    }
}
