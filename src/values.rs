//! Values keybound reads from `tbot.yaml`, its flags and the cluster, each checked where it is
//! made: a `host:port` ([`HostPort`]), a destination ([`Destination`]), a Go-style duration, an
//! `on`/`off` switch; and the refusals of tbot keys keybound does not implement yet
//! (`not_yet`). The YAML forms deserialize strictly, raising errors inside serde's visitors so
//! that serde_yaml names the key's own path, line and column.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::fsutil::Symlinks;

/// A `host:port` pair, checked: only [`HostPort::parse`] makes one, so a host that reaches
/// `ssh_config`, `known_hosts` or a command line is an address or a DNS-style name
/// ([`crate::untrusted::check_host`]), whether it came from the configuration or the cluster.
#[derive(Clone, Debug, Eq, Hash, PartialEq)]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    /// Parses `host:port`, `host` (taking `default_port`), `[v6]:port` or `[v6]`.
    pub fn parse(s: &str, default_port: u16) -> Result<Self, String> {
        let s = s.trim();
        let shown = crate::untrusted::quoted(s);
        let bad = || format!("{shown} is not a host:port address");
        if s.is_empty() || s.contains("://") || s.contains('/') {
            return Err(format!(
                "{shown} is not a host:port address (no scheme or path, e.g. example.teleport.sh:443)"
            ));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else {
            match s.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => return Err(bad()),
                Some((host, port)) => (host, Some(port)),
                None => (s, None),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        crate::untrusted::check_host(host)
            .map_err(|why| format!("{shown} is not a host:port address: {why}"))?;
        let port = match port {
            None => default_port,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                format!(
                    "{shown} has an invalid port {}",
                    crate::untrusted::quoted(p)
                )
            })?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// The host name or IP address (without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A storage or output destination.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Destination {
    /// Files in a directory (created 0700; files 0600).
    Directory {
        /// The directory.
        path: PathBuf,
        /// tbot's symlink policy (`symlinks:`).
        symlinks: Symlinks,
    },
    /// Kept in memory for the life of the process.
    Memory,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDestination {
    #[serde(rename = "type")]
    kind: DestinationType,
    path: Option<PathBuf>,
    symlinks: Option<SymlinksValue>,
    #[serde(default, deserialize_with = "not_yet::acls")]
    #[allow(dead_code, reason = "its deserializer refuses any value but off")]
    acls: (),
}

impl RawDestination {
    /// The destination, checked; `at` names it in errors (`services[0].destination`).
    pub(crate) fn check(self, at: &str) -> Result<Destination, String> {
        match self.kind {
            DestinationType::Directory => {
                let path = self
                    .path
                    .filter(|p| !p.as_os_str().is_empty())
                    .ok_or_else(|| {
                        format!("{at}.path: missing; a directory destination needs a path")
                    })?;
                Ok(Destination::Directory {
                    path,
                    symlinks: self.symlinks.map(|s| s.0).unwrap_or_default(),
                })
            }
            DestinationType::Memory => {
                if self.path.is_some() || self.symlinks.is_some() {
                    return Err(format!(
                        "{at}: a memory destination takes no path or symlinks"
                    ));
                }
                Ok(Destination::Memory)
            }
        }
    }
}

/// Deserializes a string and checks it with `check`. Raising the error inside the visitor lets
/// serde_yaml attach the value's own path, line and column to it.
pub(crate) fn checked_str<'de, D, T>(
    d: D,
    check: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<T>(fn(&str) -> Result<T, String>);
    impl<T> Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V(check))
}

enum DestinationType {
    Directory,
    Memory,
}

impl<'de> Deserialize<'de> for DestinationType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |v| match v {
            "directory" => Ok(Self::Directory),
            "memory" => Ok(Self::Memory),
            "kubernetes_secret" => Err(
                "destination type \"kubernetes_secret\" is not supported by keybound yet; use \
                 directory or memory"
                    .to_owned(),
            ),
            other => Err(format!(
                "unknown destination type {other:?}; use directory or memory"
            )),
        })
    }
}

struct SymlinksValue(Symlinks);

impl<'de> Deserialize<'de> for SymlinksValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |v| match v {
            "secure" => Ok(Self(Symlinks::Secure)),
            "try-secure" | "" => Ok(Self(Symlinks::TrySecure)),
            "insecure" => Ok(Self(Symlinks::Insecure)),
            other => Err(format!(
                "unknown symlinks policy {other:?}; use secure, try-secure or insecure"
            )),
        })
    }
}

/// tbot's `ssh_config: on|off` (YAML 1.1 booleans, as Go's yaml reads them, or the words).
pub(crate) struct OnOff(pub(crate) bool);

impl<'de> Deserialize<'de> for OnOff {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = OnOff;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("on or off")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<OnOff, E> {
                Ok(OnOff(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OnOff, E> {
                match v {
                    "on" | "true" | "yes" => Ok(OnOff(true)),
                    "off" | "false" | "no" => Ok(OnOff(false)),
                    _ => Err(E::custom(format!("{v:?} is not on or off"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A Go-style duration (`1h`, `20m`, `1h30m`, `90s`); must be positive.
pub(crate) struct GoDuration(pub(crate) Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, Self::from_str)
    }
}

impl FromStr for GoDuration {
    type Err = String;

    fn from_str(v: &str) -> Result<Self, String> {
        match humantime::parse_duration(v.trim()) {
            Ok(d) if !d.is_zero() => Ok(Self(d)),
            Ok(_) => Err(format!("duration {v:?} must be positive")),
            Err(_) => Err(format!(
                "{v:?} is not a duration; write it like 1h, 20m, 1h30m or 90s"
            )),
        }
    }
}

/// Parses a Go-style duration, as the command line takes them.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    GoDuration::from_str(v).map(|d| d.0)
}

/// tbot keys keybound does not implement yet. Each accepts its "off" value (false, null, empty)
/// and refuses anything else with a message saying so; going through a visitor makes serde_yaml
/// report the key's own path, line and column.
pub(crate) mod not_yet {
    use super::*;

    struct Refuse(&'static str);

    impl<'de> Visitor<'de> for Refuse {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_none<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
            if v { Err(E::custom(self.0)) } else { Ok(()) }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
            if v.is_empty() || v == "off" {
                Ok(())
            } else {
                Err(E::custom(self.0))
            }
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            Err(E::custom(self.0))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            Err(E::custom(self.0))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            Err(E::custom(self.0))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            match seq.next_element::<IgnoredAny>()? {
                None => Ok(()),
                Some(_) => Err(de::Error::custom(self.0)),
            }
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            match map.next_key::<IgnoredAny>()? {
                None => Ok(()),
                Some(_) => Err(de::Error::custom(self.0)),
            }
        }
    }

    fn refuse<'de, D: Deserializer<'de>>(d: D, message: &'static str) -> Result<(), D::Error> {
        d.deserialize_any(Refuse(message))
    }

    pub(crate) fn fips<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        refuse(
            d,
            "FIPS mode is not supported by keybound yet; remove `fips: true`",
        )
    }
    pub(crate) fn ca_pins<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        refuse(
            d,
            "CA pins are not supported by keybound yet; join through proxy_server, or give the \
             cluster's CA bundle with onboarding.ca_path",
        )
    }
    pub(crate) fn registration_secret<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        refuse(
            d,
            "tbot.yaml has no initial_join_secret key (that name is the join message's field); \
             give the token's secret as registration_secret or registration_secret_path",
        )
    }
    pub(crate) fn acls<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        refuse(
            d,
            "POSIX ACLs on destinations are not supported by keybound yet; remove `acls`",
        )
    }
    pub(crate) fn cluster<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        refuse(
            d,
            "routing an output to another cluster is not supported by keybound yet",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        let hp = |s| HostPort::parse(s, 443);
        assert_eq!(
            hp("example.com:3080").unwrap().to_string(),
            "example.com:3080"
        );
        assert_eq!(hp("example.com").unwrap().port(), 443);
        assert_eq!(hp("[::1]:8443").unwrap().host(), "::1");
        assert_eq!(hp("[::1]").unwrap().to_string(), "[::1]:443");
        assert!(hp("https://example.com").unwrap_err().contains("no scheme"));
        assert!(hp("example.com:0").is_err());
        assert!(hp("example.com:99999").is_err());
        assert!(hp("::1:443").is_err());
        assert!(hp(":443").is_err());
        // A host that ssh_config or known_hosts would read as syntax is refused, escaped.
        let error = hp("evil\nMatch exec \"touch x\":443").unwrap_err();
        assert!(
            error.starts_with(r#""evil\nMatch exec \"touch x\":443" is not"#),
            "{error}"
        );
        assert!(hp("a b:443").is_err());
        assert!(hp("*.example.com").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").unwrap_err().contains("positive"));
        assert!(parse_duration("10").unwrap_err().contains("like 1h"));
    }
}
