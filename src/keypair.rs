//! `keybound keypair create --static`: makes a bound keypair and says how to register and use it,
//! following `tbot keypair create` (`tool/tbot/keypair.go`).

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, bail};
use keybound_signer::config::{FileConfig, STATIC_KEY_ENV, SignerConfig};
use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;
use serde::Serialize;

use crate::cli::{KeypairCreate, KeypairShow, OutputFormat, SignerKind};
use crate::config::{Config, HostPort};
use crate::fsutil::{Replace, write_atomic};
use crate::tls::{Trust, client_config};
use crate::webapi;

const RECOVERY_DOCS: &str = "https://goteleport.com/docs/reference/machine-workload-identity/machine-id/bound-keypair/concepts/#recovery";

/// Runs `keypair create`, writing its report to `out`.
pub async fn create(args: &KeypairCreate, out: &mut dyn Write) -> anyhow::Result<()> {
    if args.storage.is_some() || !args.static_key {
        bail!(
            "keybound makes static keys only: add --static (tbot's non-static keys, kept in \
             --storage, are not supported)"
        );
    }
    let signer_kind = match (args.signer, &args.static_key_path) {
        (None | Some(SignerKind::File), Some(_)) => SignerKind::File,
        (None | Some(SignerKind::Env), None) => SignerKind::Env,
        (Some(SignerKind::File), None) => {
            bail!("--signer file needs --static-key-path PATH to write the key to")
        }
        (Some(SignerKind::Env), Some(_)) => bail!(
            "--signer env prints the key for ${STATIC_KEY_ENV}; drop --static-key-path, or use \
             --signer file"
        ),
    };
    if let Some(path) = &args.static_key_path {
        if path.exists() && !args.overwrite {
            bail!(
                "key file {path} already exists; keybound never replaces a key without \
                 --overwrite (to print its public key: keybound keypair show --static-key-path \
                 {path})",
                path = path.display()
            );
        }
    }

    let algorithm = choose_algorithm(args).await?;
    let signer = SoftSigner::generate(algorithm)?;
    let public_key = signer.public_key().to_openssh();

    let encoded_private_key = match (signer_kind, &args.static_key_path) {
        (SignerKind::File, Some(path)) => {
            let replace = if args.overwrite {
                Replace::Allow
            } else {
                Replace::Never
            };
            write_atomic(path, signer.to_pkcs8_pem().as_bytes(), 0o600, replace)
                .with_context(|| format!("writing key file {}", path.display()))?;
            tracing::info!(path = %path.display(), fingerprint = %signer.public_key().fingerprint(), "wrote static key");
            None
        }
        _ => Some(signer.to_env_value()),
    };

    match args.format {
        OutputFormat::Json => {
            let document = KeypairDocument {
                public_key: &public_key,
                private_key: encoded_private_key.as_deref().map(String::as_str),
            };
            serde_json::to_writer(&mut *out, &document)?;
            writeln!(out)?;
        }
        OutputFormat::Text => write_text(
            out,
            &public_key,
            args.static_key_path.as_deref(),
            encoded_private_key.as_deref().map(String::as_str),
        )?,
    }
    out.flush()?;
    Ok(())
}

/// Runs `keypair show`: opens the key and prints its public half.
pub fn show(args: &KeypairShow, out: &mut dyn Write) -> anyhow::Result<()> {
    let config = match (&args.static_key_path, &args.config) {
        (Some(path), _) => SignerConfig::File(FileConfig::new(path)),
        (None, Some(config)) => Config::load(config)?.onboarding.signer_config(),
        (None, None) => SignerConfig::Env(Default::default()),
    };
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
            });
            serde_json::to_writer(&mut *out, &document)?;
            writeln!(out)?;
        }
        OutputFormat::Text => writeln!(
            out,
            "public key:  {}\nalgorithm:   {}\nfingerprint: {}\nkey id:      {}\nsigner:      {}",
            key.to_openssh(),
            key.algorithm(),
            key.fingerprint(),
            key.key_id(),
            signer.backend(),
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
    onboarding: Onboarding<'a>,
    recovery: Recovery,
}

#[derive(Serialize)]
struct Onboarding<'a> {
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
                onboarding: Onboarding {
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
fn write_text(
    out: &mut dyn Write,
    public_key: &str,
    path: Option<&Path>,
    encoded_private_key: Option<&str>,
) -> anyhow::Result<()> {
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
    match (path, encoded_private_key) {
        (Some(path), _) => write!(
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
        (None, Some(value)) => write!(
            out,
            "
Configure your bot to use this static key by inserting the following private key
value into the bot's environment, ideally via a platform-specific keystore if
available:

\texport {STATIC_KEY_ENV}={value}
"
        )?,
        (None, None) => {}
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
