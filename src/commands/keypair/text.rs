//! The text report of `keypair create`, in the structure of tbot's template: how to register the
//! public key (with a token example), how the agent finds the key, and what static keys cannot do.

use std::io::Write;
use std::path::Path;

use keybound_signer::PinSource;
use keybound_signer::config::{Pkcs11Config, STATIC_KEY_ENV, TpmConfig, TpmKey};
use serde::Serialize;

use crate::signer::Handoff;

const RECOVERY_DOCS: &str = "https://goteleport.com/docs/reference/machine-workload-identity/machine-id/bound-keypair/concepts/#recovery";

/// Writes the whole report.
pub(super) fn write(
    out: &mut dyn Write,
    public_key: &str,
    handoff: &Handoff<'_>,
) -> anyhow::Result<()> {
    write_registration(out, public_key)?;
    match handoff {
        Handoff::File(path) => write_file_handoff(out, path)?,
        Handoff::Env(value) => write_env_handoff(out, value)?,
        Handoff::Pkcs11 { uri, config } => write_token_handoff(out, uri, config)?,
        Handoff::Tpm { location, config } => write_tpm_handoff(out, location, config)?,
    }
    write_static_key_limits(out)
}

/// How to register the public key: the token field, `tctl bots add`, and a token example.
fn write_registration(out: &mut dyn Write, public_key: &str) -> anyhow::Result<()> {
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
    Ok(())
}

/// A key file: the `tbot.yaml` field that names it.
fn write_file_handoff(out: &mut dyn Write, path: &Path) -> anyhow::Result<()> {
    write!(
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
    )?;
    Ok(())
}

/// A key in the environment: the `export` line that hands it over.
fn write_env_handoff(out: &mut dyn Write, value: &str) -> anyhow::Result<()> {
    write!(
        out,
        "
Configure your bot to use this static key by inserting the following private key
value into the bot's environment, ideally via a platform-specific keystore if
available:

\texport {STATIC_KEY_ENV}={value}
"
    )?;
    Ok(())
}

/// A key in a PKCS#11 token: the `tbot.yaml` fields that find it (never a PIN value).
fn write_token_handoff(
    out: &mut dyn Write,
    uri: &str,
    config: &Pkcs11Config,
) -> anyhow::Result<()> {
    write_made_inside(out, "token", uri, "pkcs11")?;
    writeln!(out, "\t    pkcs11_uri: \"{uri}\"")?;
    if let Some(module) = &config.module {
        writeln!(out, "\t    pkcs11_module: {}", module.display())?;
    }
    write_pin_source(out, config.pin.as_ref())
}

/// A key in the TPM: the `tbot.yaml` fields that find it (never an authorization value).
fn write_tpm_handoff(
    out: &mut dyn Write,
    location: &str,
    config: &TpmConfig,
) -> anyhow::Result<()> {
    write_made_inside(out, "TPM", location, "tpm")?;
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
    write_pin_source(out, config.auth.as_ref())
}

/// Where a key made inside a token or TPM is, and the start of the `tbot.yaml` fields that use
/// it, down to `signer:`.
fn write_made_inside(
    out: &mut dyn Write,
    device: &str,
    location: &str,
    signer: &str,
) -> anyhow::Result<()> {
    write!(
        out,
        "
The key was made inside the {device} and cannot leave it: {location}

Configure your bot to use it by setting the following 'tbot.yaml' fields:

\tonboarding:
\t  join_method: bound_keypair
\t  bound_keypair:
\t    signer: {signer}
"
    )?;
    Ok(())
}

/// The `pin_source` line, when the PIN or authorization value comes from somewhere that can be
/// named; a value given inline is never printed.
pub(super) fn write_pin_source(out: &mut dyn Write, pin: Option<&PinSource>) -> anyhow::Result<()> {
    if let Some(pin) = pin
        && !matches!(pin, PinSource::Value(_))
    {
        writeln!(out, "\t    pin_source: {pin:?}")?;
    }
    Ok(())
}

/// Static keys cannot be rotated and need the `insecure` recovery mode.
fn write_static_key_limits(out: &mut dyn Write) -> anyhow::Result<()> {
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
    recovery: Recovery<'a>,
}

#[derive(Serialize)]
struct TokenOnboarding<'a> {
    initial_public_key: &'a str,
}

#[derive(Serialize)]
struct Recovery<'a> {
    limit: u32,
    mode: &'a str,
}

fn token_example(public_key: &str) -> anyhow::Result<String> {
    token_example_in_mode(public_key, "insecure")
}

/// The token example with `mode` as its recovery mode.
pub(super) fn token_example_in_mode(public_key: &str, mode: &str) -> anyhow::Result<String> {
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
                recovery: Recovery { limit: 1, mode },
            },
            join_method: "bound_keypair",
            roles: ["Bot"],
        },
        version: "v2",
    };
    let yaml = serde_yaml::to_string(&token)?;
    Ok(yaml.lines().map(|l| format!("\t{l}\n")).collect())
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
