//! TCTI strings, checked before tss-esapi sees them.
//!
//! tss-esapi 7.7 parses `swtpm:`/`mssim:` configurations with two regular expressions and drops
//! every other key: `swtpm:path=/run/swtpm.sock` silently becomes `localhost:2321`, another TPM
//! than the one named. keybound accepts only what it can hand over exactly, and refuses the rest.

use std::path::PathBuf;
use std::str::FromStr;

use tss_esapi::tcti_ldr::TctiNameConf;

/// Where the TPM is when nothing is configured: the kernel's resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// A TCTI keybound can use exactly as written.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Tcti {
    /// `device:PATH`.
    Device(PathBuf),
    /// `swtpm:host=H,port=P` (TCP).
    Swtpm {
        /// Host name or address.
        host: String,
        /// TCP port (the control port is the next one).
        port: u16,
    },
    /// `mssim:host=H,port=P` (TCP).
    Mssim {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// `tabrmd:[bus_name=N][,bus_type=session|system]`.
    Tabrmd(String),
}

impl Tcti {
    /// Parses a TCTI string, refusing anything tss-esapi 7.7 would not honour.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (name, conf) = text.split_once(':').unwrap_or((text, ""));
        match name {
            "device" => {
                let path = if conf.is_empty() { "/dev/tpmrm0" } else { conf };
                if !path.starts_with('/') || path.contains(',') || path.contains('=') {
                    return Err(format!(
                        "TCTI {text:?}: the device TCTI takes a device path, e.g. device:/dev/tpmrm0"
                    ));
                }
                Ok(Self::Device(PathBuf::from(path)))
            }
            "swtpm" | "mssim" => {
                let (mut host, mut port) = (None, None);
                for part in conf.split(',').filter(|p| !p.is_empty()) {
                    match part.split_once('=') {
                        Some(("host", h)) if host.is_none() && !h.is_empty() => {
                            host = Some(h.to_owned())
                        }
                        Some(("port", p)) if port.is_none() => {
                            port = Some(
                                p.parse::<u16>()
                                    .ok()
                                    .filter(|p| *p != 0)
                                    .ok_or_else(|| format!("TCTI {text:?}: bad port {p:?}"))?,
                            );
                        }
                        Some(("path", _)) => {
                            return Err(format!(
                                "TCTI {text:?}: keybound's TPM library (tss-esapi 7.7) cannot reach a TPM over a UNIX \
                                 socket and would silently talk to localhost:2321 instead; run swtpm with \
                                 --server type=tcp,port=P and use {name}:host=127.0.0.1,port=P"
                            ));
                        }
                        _ => {
                            return Err(format!(
                                "TCTI {text:?}: {part:?} is not host=HOST or port=PORT (each once)"
                            ));
                        }
                    }
                }
                let host = host.unwrap_or_else(|| "localhost".to_owned());
                let port = port.unwrap_or(2321);
                Ok(if name == "swtpm" {
                    Self::Swtpm { host, port }
                } else {
                    Self::Mssim { host, port }
                })
            }
            "tabrmd" => {
                for part in conf.split(',').filter(|p| !p.is_empty()) {
                    match part.split_once('=') {
                        Some(("bus_name", n)) if !n.is_empty() => {}
                        Some(("bus_type", "session" | "system")) => {}
                        _ => {
                            return Err(format!(
                                "TCTI {text:?}: {part:?} is not bus_name=NAME or bus_type=session|system"
                            ));
                        }
                    }
                }
                Ok(Self::Tabrmd(conf.to_owned()))
            }
            _ => Err(format!(
                "TCTI {text:?} is not one keybound can use: device:/dev/tpmrm0, swtpm:host=H,port=P, \
                 mssim:host=H,port=P or tabrmd:"
            )),
        }
    }

    /// The configuration for tss-esapi, which honours every part of it.
    pub fn to_name_conf(&self) -> Result<TctiNameConf, String> {
        let text = self.to_string();
        TctiNameConf::from_str(&text).map_err(|e| format!("TCTI {text:?}: {e}"))
    }
}

impl std::fmt::Display for Tcti {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Device(path) => write!(f, "device:{}", path.display()),
            Self::Swtpm { host, port } => write!(f, "swtpm:host={host},port={port}"),
            Self::Mssim { host, port } => write!(f, "mssim:host={host},port={port}"),
            Self::Tabrmd(conf) => write!(f, "tabrmd:{conf}"),
        }
    }
}

/// The TCTI to use: `configured`, else `TPM2TOOLS_TCTI`, else `TCTI`, else [`DEFAULT_TCTI`].
pub fn resolve(configured: Option<&str>) -> Result<Tcti, String> {
    let from_env = || {
        ["TPM2TOOLS_TCTI", "TCTI"].iter().find_map(|v| {
            std::env::var(v)
                .ok()
                .filter(|s| !s.is_empty())
                .map(|s| (*v, s))
        })
    };
    match (configured, from_env()) {
        (Some(text), _) => Tcti::parse(text),
        (None, Some((var, text))) => Tcti::parse(&text).map_err(|e| format!("${var}: {e}")),
        (None, None) => Tcti::parse(DEFAULT_TCTI),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honoured_forms_round_trip() {
        for (text, canonical) in [
            ("device:/dev/tpmrm0", "device:/dev/tpmrm0"),
            ("device", "device:/dev/tpmrm0"),
            (
                "swtpm:host=127.0.0.1,port=24000",
                "swtpm:host=127.0.0.1,port=24000",
            ),
            ("swtpm:port=24000", "swtpm:host=localhost,port=24000"),
            (
                "mssim:host=tpm.example,port=2321",
                "mssim:host=tpm.example,port=2321",
            ),
            ("tabrmd:bus_type=session", "tabrmd:bus_type=session"),
        ] {
            let tcti = Tcti::parse(text).unwrap();
            assert_eq!(tcti.to_string(), canonical);
            tcti.to_name_conf().unwrap();
        }
    }

    #[test]
    fn what_tss_esapi_would_ignore_is_refused() {
        for (text, expected) in [
            (
                "swtpm:path=/run/swtpm.sock",
                "cannot reach a TPM over a UNIX socket",
            ),
            ("swtpm:host=127.0.0.1,port=1,port=2", "each once"),
            ("swtpm:host=a,verbose=1", "not host=HOST or port=PORT"),
            ("swtpm:port=99999", "bad port"),
            ("libtpms", "is not one keybound can use"),
            ("device:tpm0", "takes a device path"),
            ("tabrmd:bus=x", "bus_name"),
        ] {
            let err = Tcti::parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
