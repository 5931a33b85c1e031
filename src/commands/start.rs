//! `keybound start`: one renewal cycle and a summary with `--oneshot`, else the long-running
//! agent.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::anyhow;
use keybound_signer::config::{SignerConfig, TpmKey};

use crate::auth::AuthClient;
use crate::cli::Start;
use crate::identity::Identity;
use crate::join;
use crate::renewal::{Beside, Cycle, Prepared, Report, cycle_reporting};
use crate::storage::Held;
use crate::untrusted;
use crate::{ExitKind, Failure};

/// Runs `keybound start`: one cycle with `--oneshot`, else the long-running agent.
pub async fn start(args: &Start, out: &mut dyn Write) -> Result<(), Failure> {
    let prepared = Prepared::new(args.effective_config()?)?;
    let held = Held::open(&prepared.config.storage, &prepared.token()?)?;
    if !prepared.config.oneshot {
        return crate::agent::run(prepared, held).await;
    }
    for service in &prepared.config.services {
        // As tbot, which skips the services with no one-shot form (`lib/tbot/tbot.go`).
        tracing::info!(service = %service.label(), "services do not run with --oneshot; start the agent without it to serve");
    }
    let heartbeat = OneShotHeartbeat {
        prepared: &prepared,
        heartbeats: crate::heartbeat::Heartbeats::new(true),
        sent: AtomicBool::new(false),
    };
    let Cycle { joined, written } = cycle_reporting(&prepared, &held, &heartbeat).await?;
    let joined = joined.ok_or_else(|| {
        Failure::new(
            ExitKind::Software,
            anyhow!("a oneshot run always renews the bot identity"),
        )
    })?;
    // tbot's one-shot heartbeat; it never fails the run. It went beside the outputs, on their
    // connection; with no output writing files there was none, and it goes now on its own.
    if !heartbeat.sent.load(Ordering::Relaxed) {
        heartbeat
            .heartbeats
            .send(&prepared, &joined.identity, None, true)
            .await;
    }
    write_summary(
        out,
        &joined,
        prepared.signer.as_deref(),
        &prepared.signer_config,
        &written,
    )
    .map_err(|e| Failure::new(ExitKind::Software, e))?;
    Ok(())
}

/// The oneshot's heartbeat, sent on the outputs' connection to Auth beside the outputs: tbot runs
/// its services at once in one-shot mode (`lib/tbot/tbot.go`, an errgroup), the heartbeat among
/// them on the bot client they share, so it costs no round trip of its own. tbot's heartbeat
/// first waits for the other services' status (`lib/tbot/internal/heartbeat/service.go`,
/// `OneShot`), for the service health it reports; keybound's carries none, so it need not wait.
struct OneShotHeartbeat<'p> {
    prepared: &'p Prepared,
    heartbeats: crate::heartbeat::Heartbeats,
    sent: AtomicBool,
}

impl Report for OneShotHeartbeat<'_> {
    fn identity(&self, _: Result<(), &Failure>) {}
    fn output(&self, _: &str, _: Result<(), &Failure>) {}
    fn beside_outputs<'a>(&'a self, auth: &'a AuthClient, bot: &'a Identity) -> Option<Beside<'a>> {
        self.sent.store(true, Ordering::Relaxed);
        Some(Box::pin(self.heartbeats.send(
            self.prepared,
            bot,
            Some(auth.clone()),
            true,
        )))
    }
}

fn write_summary(
    out: &mut dyn Write,
    joined: &join::Joined,
    signer: Option<&dyn keybound_signer::Signer>,
    signer_config: &SignerConfig,
    written: &[String],
) -> anyhow::Result<()> {
    let info = &joined.identity.info;
    let left = info
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    writeln!(
        out,
        "Joined cluster {} as bot {}",
        info.cluster_name,
        untrusted::quoted(&info.bot_name)
    )?;
    writeln!(
        out,
        "  bot instance:  {}",
        untrusted::name(info.bot_instance_id.as_deref().unwrap_or("(not reported)"))
    )?;
    writeln!(
        out,
        "  expires:       {} (in {})",
        keybound_teleport::time::format_time(info.not_after),
        humantime::format_duration(Duration::from_secs(left.as_secs()))
    )?;
    match signer {
        Some(signer) => {
            let key_source = crate::signer::key_source(signer_config, signer.backend());
            writeln!(
                out,
                "  bound key:     {} ({}, signer {key_source})",
                signer.public_key().fingerprint(),
                signer.algorithm()
            )?;
            writeln!(out, "  key storage:   {}", signer.protection())?;
        }
        None => {
            let bound = joined
                .bound_public_key
                .as_deref()
                .and_then(|k| keybound_signer::PublicKey::from_openssh(k).ok());
            let kept = match signer_config {
                SignerConfig::Pkcs11(_) => {
                    "made inside the PKCS#11 token, referenced in bot storage"
                }
                SignerConfig::Tpm(tpm) if matches!(tpm.key, TpmKey::Handle(_)) => {
                    "made inside the TPM, at a persistent handle"
                }
                SignerConfig::Tpm(_) => "made inside the TPM, its key file in bot storage",
                _ => "the key in bot storage, id_bkp",
            };
            writeln!(
                out,
                "  bound key:     {} (standard mode: {kept})",
                bound.map_or_else(
                    || "(not reported)".to_owned(),
                    |k| format!("{} ({})", k.fingerprint(), k.algorithm())
                )
            )?;
        }
    }
    writeln!(
        out,
        "  join:          {} (suite {}, {})",
        joined.rpc,
        joined.suite,
        match (joined.authenticated, signer.is_some()) {
            (true, _) => "authenticated rejoin: same bot instance, no recovery used",
            (false, true) => "with the static key",
            (false, false) => "unauthenticated: a registration or a recovery",
        }
    )?;
    if let Some(generation) = info.generation {
        writeln!(out, "  generation:    {generation}")?;
    }
    if written.is_empty() {
        writeln!(
            out,
            "  written:       nothing (memory storage, no directory outputs)"
        )?;
    }
    for (i, w) in written.iter().enumerate() {
        writeln!(
            out,
            "  {}{w}",
            if i == 0 {
                "written:       "
            } else {
                "               "
            }
        )?;
    }
    out.flush()?;
    Ok(())
}
