//! Why a join failed ([`JoinError`]), and how a status or a broken connection becomes one.

use std::fmt;
use std::time::Duration;

use tonic::{Code, Status};

use super::types::MAX_MESSAGE;
use crate::transport;
use crate::untrusted;
use crate::values::HostPort;

/// Why a join failed. Each variant's message says what to do.
#[derive(Debug)]
pub enum JoinError {
    /// The cluster refused the join.
    Rejected {
        /// The gRPC status code.
        code: Code,
        /// The cluster's message.
        message: String,
        /// The join was a standard one (keys in storage), whose fixes differ from a static
        /// key's.
        standard: bool,
    },
    /// The cluster could not be reached, or the connection broke.
    Unreachable(String),
    /// keybound stopped the join: the server asked for something keybound will not do.
    Refused(String),
    /// The signer failed.
    Signer(keybound_signer::Error),
    /// Local setup (TLS trust) is wrong.
    Config(String),
    /// The join took longer than allowed.
    TimedOut(Duration),
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected {
                code,
                message,
                standard,
            } => {
                write!(
                    f,
                    "the cluster rejected the join ({}): {message}",
                    code_name(*code)
                )?;
                let hint = if *standard {
                    standard_hint(message)
                } else {
                    hint(message)
                };
                if let Some(hint) = hint {
                    write!(f, "; {hint}")?;
                }
                Ok(())
            }
            Self::Unreachable(message) => write!(f, "{message}"),
            Self::Refused(message) => write!(f, "{message}"),
            Self::Signer(error) => write!(f, "signing the join challenge failed: {error}"),
            Self::Config(message) => write!(f, "{message}"),
            Self::TimedOut(limit) => write!(
                f,
                "the join did not finish within {} s; check the network path to the proxy",
                limit.as_secs()
            ),
        }
    }
}

impl std::error::Error for JoinError {}

impl JoinError {
    /// The error of a join made with `params`: a refusal of a standard join gets the fixes of
    /// standard mode.
    pub(super) fn in_mode(self, params: &super::types::JoinParams) -> Self {
        match self {
            Self::Rejected { code, message, .. } => Self::Rejected {
                code,
                message,
                standard: params.standard.is_some(),
            },
            other => other,
        }
    }

    /// The cluster refused a rejoin because the token no longer binds the identity that made it:
    /// the token was made again, and its empty status takes the identity's credentials for a
    /// first join (`lib/join/boundkeypair/boundkeypair.go`, the case "!hasBoundPublicKey &&
    /// hasIncomingBotInstance"). A join with the static key alone is what the token expects.
    pub fn identity_unknown(&self) -> bool {
        matches!(
            self,
            Self::Rejected { code: Code::InvalidArgument, message, .. }
                if message.contains("cannot perform first bound keypair join with existing credentials")
        )
    }
}

/// What to tell an admin about a refusal of a standard join (keys and join state in storage);
/// the messages are Teleport's (`lib/join/boundkeypair/boundkeypair.go`,
/// `lib/boundkeypair/join_state.go`, `lib/services/lock.go`).
fn standard_hint(message: &str) -> Option<&'static str> {
    const HINTS: &[(&str, &str)] = &[
        (
            "no recovery attempts remaining",
            "the token's recovery limit is used up: an admin raises spec.bound_keypair.recovery.limit \
             (tctl edit token/NAME)",
        ),
        (
            "no rejoins remaining",
            "the token's recovery limit is used up: an admin raises spec.bound_keypair.recovery.limit \
             (tctl edit token/NAME); the stored identity and outputs are kept",
        ),
        (
            "join state verification failed",
            "the join state in storage (bkp_state) is not the cluster's latest, and the cluster has \
             locked the token: if no copy of this bot's keys runs elsewhere, an admin removes the \
             lock (tctl get locks; tctl rm lock/NAME) and sets recovery.mode insecure for one \
             join (relaxed checks the join state too), then back",
        ),
        (
            "a valid registration secret is required",
            "the registration secret is wrong, used already, or past must_register_before: give \
             the one in the token's status (tctl get token/NAME), or an admin recreates the token",
        ),
        (
            "bot instance mismatch",
            "another copy of this bot holds the token's binding: an admin checks where the keys \
             went (tctl bots instances ls) before recreating the token",
        ),
        (
            "is in force",
            "a lock is in force on the token or the bot's user (the text names it): an admin finds \
             out why (tctl get locks) before removing the lock",
        ),
        (
            "failed to complete challenge",
            "the key in storage does not match the token's initial_public_key: compare id_bkp.pub \
             in storage with the token",
        ),
        (
            "either an initial public key or registration secret is required",
            "the token has neither: an admin sets onboarding.initial_public_key or registration_secret",
        ),
        (
            "token expired or not found",
            "check that the token tried is an existing bound_keypair token (tctl get tokens)",
        ),
    ];
    HINTS
        .iter()
        .find(|(needle, _)| message.contains(needle))
        .map(|(_, hint)| *hint)
}

/// What to tell an admin about a cluster's error message (messages from
/// `lib/join/server.go`, `lib/join/boundkeypair/boundkeypair.go`, `lib/auth/auth.go`).
fn hint(message: &str) -> Option<&'static str> {
    const HINTS: &[(&str, &str)] = &[
        (
            "token expired or not found",
            "check that the token tried is an existing bound_keypair token (tctl get tokens); \
             onboarding.token, --token or $TELEPORT_BOT_TOKEN gives its name, or an absolute path \
             to a file holding it",
        ),
        (
            "failed to complete challenge",
            "the static key does not match the token's initial_public_key: compare `keybound keypair show` with the token",
        ),
        (
            "no recovery attempts remaining",
            "static keys need the token's spec.bound_keypair.recovery.mode set to insecure",
        ),
        (
            "no rejoins remaining",
            "static keys need the token's spec.bound_keypair.recovery.mode set to insecure",
        ),
        (
            "join state verification failed",
            "static keys need recovery.mode insecure; the cluster has also locked the token: remove the lock (tctl get locks) after fixing the token",
        ),
        (
            "provision token only supports method",
            "the token is not a bound_keypair token",
        ),
        (
            "does not allow role",
            "the token's spec.roles must include Bot",
        ),
        (
            "client version is unsupported",
            "this cluster is too new for keybound's protocol version",
        ),
        (
            "public key may not be reused",
            "make a new key with keybound keypair create --static",
        ),
        ("bad backend state", "recreate the join token"),
        (
            "validating challenge response",
            "the static key does not match the key bound to the token: compare `keybound keypair show` with the token's status",
        ),
    ];
    HINTS
        .iter()
        .find(|(needle, _)| message.contains(needle))
        .map(|(_, hint)| *hint)
}

pub(super) fn code_name(code: Code) -> String {
    // tonic's Debug names (PermissionDenied) → gRPC's (PERMISSION_DENIED).
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

pub(super) fn unreachable_error(addr: &HostPort, error: &dyn std::error::Error) -> JoinError {
    let mut message = transport::describe(format!("cannot reach proxy {addr}"), error);
    if message.contains("certificate") {
        message.push_str(
            "; if the proxy uses a private CA give its bundle with --ca-path or onboarding.ca_path \
             (or --insecure, for development only)",
        );
    }
    JoinError::Unreachable(message)
}

/// Turns a status received mid-join into the error a user sees.
pub(super) fn status_error(status: &Status) -> JoinError {
    let message = untrusted::message(status.message()).to_string();
    match status.code() {
        // tonic's own check of an incoming message's length (`codec/decode.rs`).
        Code::OutOfRange
            if status
                .message()
                .starts_with("Error, decoded message length too large") =>
        {
            JoinError::Refused(format!(
                "the cluster sent a join message larger than {} KiB, which no Teleport join message \
                 is ({message}); check that proxy_server names a Teleport proxy",
                MAX_MESSAGE / 1024
            ))
        }
        // A status with a source was made by tonic from a local error (the HTTP/2 connection
        // broke, say), not sent by the cluster: no rejection, whatever its code.
        _ if std::error::Error::source(status).is_some() => JoinError::Unreachable(format!(
            "the connection to the cluster broke during the join: {message}"
        )),
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => {
            JoinError::Unreachable(format!(
                "the connection to the cluster broke during the join: {}",
                if message.is_empty() {
                    code_name(status.code())
                } else {
                    message
                }
            ))
        }
        code => JoinError::Rejected {
            code,
            message,
            standard: false,
        },
    }
}

/// Why the server ended a stream we could no longer write to: its final status, if it sent one.
pub(super) async fn closed_reason<T>(inbound: &mut tonic::Streaming<T>) -> JoinError {
    match inbound.message().await {
        Err(status) => status_error(&status),
        Ok(_) => JoinError::Unreachable(
            "the cluster closed the join stream before sending certificates".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_like_grpc() {
        assert_eq!(code_name(Code::PermissionDenied), "PERMISSION_DENIED");
        assert_eq!(code_name(Code::Unknown), "UNKNOWN");
    }

    #[test]
    fn rejections_carry_hints() {
        let e = JoinError::Rejected {
            code: Code::PermissionDenied,
            message: "token expired or not found".into(),
            standard: false,
        };
        assert_eq!(
            e.to_string(),
            "the cluster rejected the join (PERMISSION_DENIED): token expired or not found; check \
             that the token tried is an existing bound_keypair token (tctl get tokens); \
             onboarding.token, --token or $TELEPORT_BOT_TOKEN gives its name, or an absolute path \
             to a file holding it"
        );
    }
}
