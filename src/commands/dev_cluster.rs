//! `keybound dev-cluster <admin command>`: tctl's `create`, `get`, `rm`, `lock` and `status`, and
//! a one-line-each `ls`, against a running dev cluster's admin socket (the dev cluster crate's
//! [`AdminClient`]), so that tokens, bots, roles and locks change without a restart.

use std::io::{Read as _, Write};
use std::path::Path;

use anyhow::{Context as _, bail};
use keybound_devcluster::admin::AdminClient;
use keybound_devcluster::locks::LockTarget;
use keybound_devcluster::resources::Kind;
use serde_json::Value;

use crate::cli::{AdminArgs, AdminCommand, AdminCreate, AdminLock, AdminSignHost, ResourceFormat};
use crate::untrusted;

/// Runs one admin command, printing what it did to `out`.
pub async fn run(command: &AdminCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        AdminCommand::Create(args) => create(args, out).await,
        AdminCommand::Get(args) => {
            let client = client(&args.admin)?;
            let (kind, name) = kind_and_name(&args.resource)?;
            let found = match name {
                Some(name) => vec![client.get(kind, name).await?],
                None => client.list(kind).await?,
            };
            let single = name.is_some();
            write_resources(&found, single, args.format, out)
        }
        AdminCommand::Ls(args) => {
            let client = client(&args.admin)?;
            let kind = Kind::parse(&args.kind)?;
            let found = client.list(kind).await?;
            write_table(kind, &found, out)
        }
        AdminCommand::Rm(args) => {
            let client = client(&args.admin)?;
            let (kind, name) = kind_and_name(&args.resource)?;
            let Some(name) = name else {
                bail!(
                    "rm takes KIND/NAME, e.g. {}/NAME, not {:?}",
                    kind.plural(),
                    args.resource
                );
            };
            client.remove(kind, name).await?;
            Ok(writeln!(out, "{kind} {name:?} has been deleted")?)
        }
        AdminCommand::Lock(args) => lock(args, out).await,
        AdminCommand::Status(args) => status(&client(args)?, out).await,
        AdminCommand::RequestRotation(args) => {
            let at = client(&args.admin)?.request_rotation(&args.token).await?;
            Ok(writeln!(
                out,
                "token {:?}: rotate_after set to {at}; its bot rotates its key at its next join",
                args.token
            )?)
        }
        AdminCommand::Heartbeats(args) => heartbeats(&client(args)?, out).await,
        AdminCommand::SignHost(args) => sign_host(args, out).await,
    }
}

/// One line per heartbeat, as `tctl bots instances ls` shows the latest of each instance.
async fn heartbeats(client: &AdminClient, out: &mut dyn Write) -> anyhow::Result<()> {
    let found = client.heartbeats().await?;
    writeln!(
        out,
        "{:<36}  {:<16}  {:<30}  {:<8}  {:<10}  {:<16}  Uptime",
        "Instance", "Bot", "Recorded", "Mode", "Version", "Host"
    )?;
    for beat in &found {
        // Padding applies to plain strings, so each name is sanitized into one first.
        let text = |key: &str| untrusted::name(beat[key].as_str().unwrap_or("-")).to_string();
        let mode = match (beat["is_startup"].as_bool(), beat["one_shot"].as_bool()) {
            (_, Some(true)) => "oneshot",
            (Some(true), _) => "startup",
            _ => "periodic",
        };
        let uptime = beat["uptime"]["secs"].as_u64().unwrap_or(0);
        writeln!(
            out,
            "{:<36}  {:<16}  {:<30}  {mode:<8}  {:<10}  {:<16}  {}",
            text("instance_id"),
            text("bot_name"),
            text("recorded_at"),
            text("version"),
            text("hostname"),
            humantime::format_duration(std::time::Duration::from_secs(uptime))
        )?;
    }
    Ok(())
}

async fn sign_host(args: &AdminSignHost, out: &mut dyn Write) -> anyhow::Result<()> {
    let key = std::fs::read_to_string(&args.public_key).with_context(|| {
        format!(
            "cannot read the host's public key {}",
            args.public_key.display()
        )
    })?;
    let cert = client(&args.admin)?
        .sign_host(&key, &args.principals)
        .await?;
    Ok(writeln!(out, "{}", cert.trim_end())?)
}

fn client(args: &AdminArgs) -> anyhow::Result<AdminClient> {
    AdminClient::new(args.admin_socket.as_deref())
}

/// `KIND` or `KIND/NAME`, as tctl takes them.
fn kind_and_name(text: &str) -> anyhow::Result<(Kind, Option<&str>)> {
    match text.split_once('/') {
        Some((kind, name)) if !name.is_empty() => Ok((Kind::parse(kind)?, Some(name))),
        Some((kind, _)) => bail!("{text:?} names no resource; give KIND/NAME, e.g. {kind}/NAME"),
        None => Ok((Kind::parse(text)?, None)),
    }
}

async fn create(args: &AdminCreate, out: &mut dyn Write) -> anyhow::Result<()> {
    let (origin, yaml) = match args.file.as_deref() {
        Some(path) if path != Path::new("-") => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read resource file {}", path.display()))?;
            (path.display().to_string(), text)
        }
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the resources from standard input")?;
            ("standard input".to_owned(), text)
        }
    };
    let applied = client(&args.admin)?
        .create(&origin, &yaml, args.force)
        .await?;
    for a in applied {
        let done = if a.replaced { "updated" } else { "created" };
        writeln!(out, "{} {:?} has been {done}", a.kind, a.name)?;
        if let Some(secret) = a.registration_secret.map(zeroize::Zeroizing::new) {
            writeln!(
                out,
                "Registration secret (shown only now; `get` does not show it): {}",
                secret.as_str()
            )?;
        }
    }
    Ok(())
}

async fn lock(args: &AdminLock, out: &mut dyn Write) -> anyhow::Result<()> {
    let target = match (&args.user, &args.role, &args.join_token) {
        (Some(user), None, None) => LockTarget::User(user.clone()),
        (None, Some(role), None) => LockTarget::Role(role.clone()),
        (None, None, Some(token)) => LockTarget::JoinToken(token.clone()),
        _ => bail!("lock takes one of --user, --role or --join-token"),
    };
    let expires = args.ttl.map(|ttl| std::time::SystemTime::now() + ttl);
    let name = client(&args.admin)?
        .lock(target, args.message.clone().unwrap_or_default(), expires)
        .await?;
    writeln!(out, "Created a lock with name {name:?}.")?;
    Ok(())
}

async fn status(client: &AdminClient, out: &mut dyn Write) -> anyhow::Result<()> {
    let status = client.status().await?;
    let text = |key: &str| status[key].as_str().unwrap_or("-").to_owned();
    let count = |key: &str| status[key].as_u64().unwrap_or(0);
    let rows = [
        ("Cluster", text("cluster_name")),
        ("Version", text("server_version")),
        ("Suite", text("suite")),
        ("Proxy", text("proxy_server")),
        ("Auth", text("auth_server")),
        (
            "Resources",
            format!(
                "{} tokens, {} bots, {} roles, {} locks",
                count("tokens"),
                count("bots"),
                count("roles"),
                count("locks")
            ),
        ),
        ("Admin socket", client.path().display().to_string()),
    ];
    for (label, value) in rows {
        writeln!(out, "{label:<13}{value}")?;
    }
    Ok(())
}

/// Resources as YAML documents (what `create` takes back) or JSON.
fn write_resources(
    found: &[Value],
    single: bool,
    format: ResourceFormat,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match format {
        ResourceFormat::Json if single => writeln!(out, "{:#}", found[0])?,
        ResourceFormat::Json => writeln!(out, "{:#}", Value::from(found.to_vec()))?,
        ResourceFormat::Yaml => {
            for (i, resource) in found.iter().enumerate() {
                if i > 0 {
                    writeln!(out, "---")?;
                }
                out.write_all(serde_yaml::to_string(resource)?.as_bytes())?;
            }
        }
    }
    Ok(())
}

/// One line per resource under a header, its columns aligned (`tctl tokens ls`).
fn write_table(kind: Kind, found: &[Value], out: &mut dyn Write) -> anyhow::Result<()> {
    if found.is_empty() {
        return Ok(writeln!(out, "no {}", kind.plural())?);
    }
    let header: &[&str] = match kind {
        Kind::Token => &[
            "NAME",
            "BOT",
            "JOIN METHOD",
            "RECOVERIES",
            "BOUND INSTANCE",
            "EXPIRES",
        ],
        Kind::Bot => &["NAME", "ROLES"],
        Kind::Role => &["NAME", "LOGINS", "MAY IMPERSONATE"],
        Kind::Lock => &["NAME", "TARGET", "MESSAGE", "EXPIRES"],
        Kind::App => &["NAME", "PUBLIC ADDRESS", "LABELS"],
        Kind::Db => &["NAME", "PROTOCOL", "LABELS"],
        Kind::KubeCluster => &["NAME", "LABELS"],
        Kind::WorkloadIdentity => &["NAME", "SPIFFE ID", "LABELS"],
        Kind::Node => &["NAME", "HOSTNAME", "ADDRESS", "LABELS"],
        Kind::SpiffeFederation => &["NAME", "X.509 AUTHORITIES"],
    };
    let mut rows = vec![header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()];
    rows.extend(found.iter().map(|r| row(kind, r)));
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

/// A resource's line in `ls`.
fn row(kind: Kind, r: &Value) -> Vec<String> {
    let text = |v: &Value| {
        v.as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("-")
            .to_owned()
    };
    let list = |v: &Value| {
        let items: Vec<&str> = v
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(",")
        }
    };
    let labels = |v: &Value| {
        let pairs: Vec<String> = v
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}={}", text(v))).collect())
            .unwrap_or_default();
        if pairs.is_empty() {
            "-".to_owned()
        } else {
            pairs.join(",")
        }
    };
    let (meta, spec) = (&r["metadata"], &r["spec"]);
    match kind {
        Kind::App => vec![
            text(&meta["name"]),
            text(&spec["public_addr"]),
            labels(&meta["labels"]),
        ],
        Kind::Db => vec![
            text(&meta["name"]),
            text(&spec["protocol"]),
            labels(&meta["labels"]),
        ],
        Kind::KubeCluster => vec![text(&meta["name"]), labels(&meta["labels"])],
        Kind::Token => {
            let recovery = &spec["bound_keypair"]["recovery"];
            let status = &r["status"]["bound_keypair"];
            let recoveries = if recovery.is_null() {
                "-".to_owned()
            } else {
                format!(
                    "{}/{} {}",
                    status["recovery_count"].as_u64().unwrap_or(0),
                    recovery["limit"].as_u64().unwrap_or(0),
                    text(&recovery["mode"])
                )
            };
            vec![
                text(&meta["name"]),
                text(&spec["bot_name"]),
                text(&spec["join_method"]),
                recoveries,
                text(&status["bound_bot_instance_id"]),
                text(&meta["expires"]),
            ]
        }
        Kind::Bot => vec![text(&meta["name"]), list(&spec["roles"])],
        Kind::Role => vec![
            text(&meta["name"]),
            list(&spec["allow"]["logins"]),
            list(&spec["allow"]["impersonate"]["roles"]),
        ],
        Kind::Lock => {
            let target = spec["target"]
                .as_object()
                .and_then(|t| t.iter().next())
                .map_or_else(|| "-".to_owned(), |(k, v)| format!("{k}={}", text(v)));
            vec![
                text(&meta["name"]),
                target,
                text(&spec["message"]),
                text(&spec["expires"]),
            ]
        }
        Kind::WorkloadIdentity => {
            let labels: Vec<String> = meta["labels"]
                .as_object()
                .map(|l| l.iter().map(|(k, v)| format!("{k}={}", text(v))).collect())
                .unwrap_or_default();
            vec![
                text(&meta["name"]),
                text(&spec["spiffe"]["id"]),
                if labels.is_empty() {
                    "-".to_owned()
                } else {
                    labels.join(",")
                },
            ]
        }
        Kind::Node => {
            let labels: Vec<String> = meta["labels"]
                .as_object()
                .map(|l| l.iter().map(|(k, v)| format!("{k}={}", text(v))).collect())
                .unwrap_or_default();
            vec![
                text(&meta["name"]),
                text(&spec["hostname"]),
                text(&spec["addr"]),
                if labels.is_empty() {
                    "-".to_owned()
                } else {
                    labels.join(",")
                },
            ]
        }
        Kind::SpiffeFederation => {
            let bundle: Value =
                serde_json::from_str(&text(&r["status"]["current_bundle"])).unwrap_or_default();
            let x509 = (bundle["keys"].as_array().into_iter().flatten())
                .filter(|k| k["use"] == "x509-svid")
                .count();
            vec![text(&meta["name"]), x509.to_string()]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_names_are_read_as_tctl_reads_them() {
        assert_eq!(kind_and_name("tokens").unwrap(), (Kind::Token, None));
        assert_eq!(
            kind_and_name("token/example-token").unwrap(),
            (Kind::Token, Some("example-token"))
        );
        assert_eq!(
            kind_and_name("locks/a/b").unwrap(),
            (Kind::Lock, Some("a/b"))
        );
        assert!(kind_and_name("tokens/").is_err());
        assert!(kind_and_name("users/alice").is_err());
    }

    #[test]
    fn ls_aligns_its_columns() {
        let locks = [serde_json::json!({
            "kind": "lock", "metadata": {"name": "l1"},
            "spec": {"target": {"join_token": "demo-token"}, "message": "stolen"}
        })];
        let mut out = Vec::new();
        write_table(Kind::Lock, &locks, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME  TARGET                 MESSAGE  EXPIRES\nl1    join_token=demo-token  stolen   -\n"
        );
        let mut out = Vec::new();
        write_table(Kind::Bot, &[], &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "no bots\n");
    }
}
