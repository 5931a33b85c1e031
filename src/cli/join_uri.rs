//! tbot's joining URI (`lib/tbot/config/joinuri/uri.go`):
//! `tbot+<proxy|auth>+<join method>://<token>[:<parameter>]@<host>:<port>`, where the parameter
//! of a bound-keypair URI is the registration secret.

use anyhow::{anyhow, bail};

use crate::bkp::RegistrationSecret;
use crate::config::{ClusterAddr, Config};
use crate::values::HostPort;

/// A parsed joining URI.
#[derive(Debug)]
pub(super) struct JoinUri {
    /// The Proxy or Auth address.
    pub(super) addr: ClusterAddr,
    /// The token's name.
    pub(super) token: String,
    /// The registration secret, if the URI carries one.
    pub(super) secret: Option<RegistrationSecret>,
}

fn percent_decode(text: &str) -> anyhow::Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| anyhow!("--join-uri: a malformed %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| anyhow!("--join-uri: not UTF-8 once unescaped"))
}

impl JoinUri {
    /// Parses `uri`; errors name the part that is wrong, never the secret.
    pub(super) fn parse(uri: &str) -> anyhow::Result<Self> {
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| {
            anyhow!("--join-uri: expected tbot+proxy+bound-keypair://TOKEN:SECRET@HOST:PORT")
        })?;
        let parts: Vec<&str> = scheme.split('+').collect();
        let (via, method) = match parts.as_slice() {
            ["tbot", via, method] => (*via, *method),
            _ => bail!("--join-uri: the scheme {scheme:?} is not tbot+<proxy|auth>+<join method>"),
        };
        if !matches!(method, "bound-keypair" | "boundkeypair" | "bound_keypair") {
            bail!("--join-uri: join method {method:?}: keybound joins only with bound-keypair");
        }
        let (userinfo, host) = rest
            .rsplit_once('@')
            .ok_or_else(|| anyhow!("--join-uri: no TOKEN@ before the address"))?;
        let host = host.trim_end_matches('/');
        let (token, secret) = match userinfo.split_once(':') {
            Some((token, secret)) => (token, Some(secret)),
            None => (userinfo, None),
        };
        let token = percent_decode(token)?;
        if token.is_empty() {
            bail!("--join-uri: the token name is empty");
        }
        let secret = secret
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .transpose()?
            .map(RegistrationSecret::new);
        let addr = match via {
            "proxy" => ClusterAddr::Proxy(
                HostPort::parse(host, 443).map_err(|e| anyhow!("--join-uri: {e}"))?,
            ),
            "auth" => ClusterAddr::Auth(
                HostPort::parse(host, 3025).map_err(|e| anyhow!("--join-uri: {e}"))?,
            ),
            other => bail!("--join-uri: {other:?} is neither proxy nor auth"),
        };
        Ok(Self {
            addr,
            token,
            secret,
        })
    }

    /// Puts the URI's settings into `config`; a setting the configuration already gives with
    /// another value is an error, as in tbot.
    pub(super) fn apply(self, config: &mut Config) -> anyhow::Result<()> {
        if let Some(addr) = &config.cluster
            && *addr != self.addr
        {
            bail!("--join-uri names another address than the configuration's; remove one");
        }
        let onboarding = &mut config.onboarding;
        if !onboarding.token.is_empty() && onboarding.token != self.token {
            bail!("--join-uri names another token than the configuration's; remove one");
        }
        if let Some(secret) = &self.secret
            && onboarding
                .registration_secret
                .as_ref()
                .is_some_and(|s| s != secret)
        {
            bail!(
                "--join-uri carries another registration secret than the configuration's; \
                 remove one"
            );
        }
        config.cluster = Some(self.addr);
        onboarding.token = self.token;
        if self.secret.is_some() {
            onboarding.registration_secret = self.secret;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tctl_bots_adds_uri() {
        let uri = JoinUri::parse(
            "tbot+proxy+bound-keypair://bot-ci-1a2b3c4d:0f%2B1@proxy.example.com:443",
        )
        .unwrap();
        assert_eq!(uri.token, "bot-ci-1a2b3c4d");
        assert_eq!(uri.secret.unwrap().expose(), "0f+1");
        assert!(matches!(uri.addr, ClusterAddr::Proxy(_)));
        for bad in [
            "https://t:s@h:443",
            "tbot+proxy+token://t@h:443",
            "tbot+proxy+bound-keypair://h:443",
            "tbot+nowhere+bound-keypair://t@h:1",
        ] {
            let err = JoinUri::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("--join-uri"), "{err}");
        }
    }
}
