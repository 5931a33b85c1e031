//! Role-impersonated certificates for an output: a fresh key for the cluster's suite, then
//! `GenerateUserCerts` for the roles on the bot's connection (`lib/tbot/identity/generator.go`
//! `Generate`). Every output kind that holds user certificates asks through here; a kind adds
//! its own routing to the request (an app, a database, a Kubernetes cluster).

use std::time::{Duration, SystemTime};

use anyhow::anyhow;
use keybound_proto::proto::UserCertsRequest;

use super::kind::Issue;
use crate::auth;
use crate::identity::Identity;
use crate::subject_key::SubjectKey;
use crate::untrusted;
use crate::{ExitKind, Failure};
use keybound_teleport::suite::Suite;

/// What an output asks to impersonate.
pub(super) struct Impersonation<'a> {
    /// The roles; never empty.
    pub(super) roles: &'a [String],
    /// Whether the certificates may request further certificates (`allow_reissue`).
    pub(super) allow_reissue: bool,
}

/// The roles an output impersonates: its `roles:` at once, else every role the bot may
/// impersonate (tbot's default, `botDefaultRoles` in `lib/tbot/identity/generator.go`), which
/// waits for the bot's role; none at all is a refusal naming the way out.
pub(super) async fn roles_for<'a>(
    cx: &Issue<'a>,
    configured: &'a [String],
) -> Result<&'a [String], Failure> {
    let roles = if configured.is_empty() {
        &cx.shared().await?.default_roles[..]
    } else {
        configured
    };
    if roles.is_empty() {
        return Err(Failure::new(
            ExitKind::Rejected,
            anyhow!(
                "the bot's role {} may impersonate no role; give the output `roles:`, or \
                 give the bot roles (tctl bots update {} --add-roles ROLE)",
                untrusted::name(&cx.bot.info.username),
                untrusted::name(&cx.bot.info.bot_name)
            ),
        ));
    }
    Ok(roles)
}

/// Issues role-impersonated certificates for `what`, with a fresh subject key.
pub(super) async fn impersonate(
    cx: &Issue<'_>,
    what: &Impersonation<'_>,
) -> Result<Identity, Failure> {
    impersonate_routed(cx, what, cx.suite, |_| {}).await
}

/// Issues role-impersonated certificates for `what` with a fresh key of `suite`'s type, the
/// request given its route by `route` (an app, a database, a Kubernetes cluster).
pub(super) async fn impersonate_routed(
    cx: &Issue<'_>,
    what: &Impersonation<'_>,
    suite: Suite,
    route: impl FnOnce(&mut UserCertsRequest),
) -> Result<Identity, Failure> {
    let bot = cx.bot;
    let key = tokio::task::spawn_blocking(move || SubjectKey::generate(suite))
        .await
        .map_err(|e| Failure::new(ExitKind::Software, anyhow!("key generation failed: {e}")))?
        .map_err(|e| Failure::new(ExitKind::Software, e.context("key generation failed")))?;
    let mut request = UserCertsRequest {
        username: bot.info.username.clone(),
        expires: Some(prost_types::Timestamp::from(output_expiry(
            cx.credential_ttl,
            bot.info.not_after,
        ))),
        route_to_cluster: bot.info.cluster_name.as_str().to_owned(),
        role_requests: what.roles.to_vec(),
        use_role_requests: true,
        // ssh.MarshalAuthorizedKey (with its newline) and keys.MarshalPublicKey, as tbot sends.
        ssh_public_key: format!("{}\n", key.ssh_authorized).into_bytes(),
        tls_public_key: key.public_pem.clone().into_bytes(),
        reissuable_role_impersonation: what.allow_reissue,
        ..UserCertsRequest::default()
    };
    route(&mut request);
    let certs = cx
        .auth
        .generate_user_certs(request)
        .await
        .map_err(|s| refused(cx.bot, what.roles, &s))?;
    // The request above needed none of the lookups; the identity holds the cluster's CAs.
    let shared = cx.shared().await?;
    let host_ssh = shared
        .cas
        .host_ssh_keys
        .iter()
        .map(|(_, k)| k.clone())
        .collect();
    Identity::from_user_certs(
        key.private_pem,
        key.ssh_authorized,
        &key.spki_der,
        &certs,
        shared.host_ca_pems.clone(),
        host_ssh,
    )
    .map_err(|e| {
        Failure::new(
            ExitKind::Rejected,
            e.context("the cluster's certificates for the output are unusable"),
        )
    })
}

/// When an output's certificates should end: `credential_ttl` from now, but never after the
/// bot identity that asks for them (Auth caps impersonated certificates at 24 h; a
/// non-renewable bot's own expiry is the tighter bound).
fn output_expiry(ttl: Duration, bot_not_after: SystemTime) -> SystemTime {
    crate::join::expiry_after(ttl).min(bot_not_after)
}

/// `GenerateUserCerts` refused or failed, with what to do when the bot may not impersonate
/// the roles.
fn refused(bot: &Identity, roles: &[String], s: &tonic::Status) -> Failure {
    let hint = if s.message().contains("has requested role impersonation") {
        format!(
            "; the bot's role {} does not allow impersonating [{}]: add them to the bot \
             (tctl bots update {} --add-roles ...) or change the output's roles",
            untrusted::name(&bot.info.username),
            role_list(roles, ", "),
            untrusted::name(&bot.info.bot_name)
        )
    } else {
        String::new()
    };
    let what = if s.code() == tonic::Code::DeadlineExceeded {
        "no certificates came for roles"
    } else {
        "the cluster refused certificates for roles"
    };
    auth::status_failure(&format!("{what} [{}]", role_list(roles, ", ")), s, &hint)
}

/// Role names for a log line or a message: from the configuration, or from the bot's role as
/// the cluster returned it, so each is sanitized.
pub(super) fn role_list(roles: &[String], separator: &str) -> String {
    roles
        .iter()
        .map(|r| untrusted::name(r).to_string())
        .collect::<Vec<_>>()
        .join(separator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_never_outlive_the_bot_identity() {
        let expiry = output_expiry;
        let hour = Duration::from_secs(3600);
        let soon = SystemTime::now() + Duration::from_secs(600);
        assert_eq!(expiry(hour, soon), soon);
        let later = SystemTime::now() + 2 * hour;
        let end = expiry(hour, later);
        assert!(end < later && end > SystemTime::now() + hour - Duration::from_secs(5));
        // An absurd lifetime saturates instead of overflowing.
        assert_eq!(expiry(Duration::MAX, soon), soon);
    }
}
