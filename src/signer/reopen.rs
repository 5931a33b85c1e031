//! A signer the agent can open again on SIGHUP, with its PIN read afresh.

use std::fmt;
use std::sync::{Arc, Mutex};

use keybound_signer::config::SignerConfig;
use keybound_signer::{Error, ErrorKind, Protection, PublicKey, Signature, Signer};

use super::registry::open_signer;

/// A signer the long-running agent can open again from its configuration, which it does on
/// SIGHUP: the PIN or authorization value is read from its source again and the device is
/// opened afresh, so an operator's fix takes effect (the backends never present a value their
/// device refused before, see `keybound_signer::refused`). The key must stay the same one.
pub struct Reopenable {
    config: SignerConfig,
    backend: &'static str,
    public: PublicKey,
    /// The key's protection, read at the first open (the same key keeps it).
    protection: Protection,
    /// The open signer, or why the last reopening failed.
    current: Mutex<Result<Arc<dyn Signer>, Closed>>,
}

/// Why there is no open signer: the error of the last reopening, for every signature until the
/// next one.
struct Closed {
    kind: ErrorKind,
    message: String,
}

impl Reopenable {
    /// Wraps `opened`, the signer `config` opened.
    pub fn new(config: SignerConfig, opened: Arc<dyn Signer>) -> Self {
        Self {
            backend: opened.backend(),
            public: opened.public_key().clone(),
            protection: opened.protection(),
            current: Mutex::new(Ok(opened)),
            config,
        }
    }

    /// Closes the open signer, then opens the configuration again. Closing first matters: a
    /// PKCS#11 token checks the PIN again only once the process's last session on it has
    /// closed. May block on the device.
    pub fn reopen(&self) -> Result<(), Error> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *current = Err(Closed {
            kind: ErrorKind::Unavailable,
            message: "the signer is being opened again".to_owned(),
        });
        let opened = open_signer(&self.config).and_then(|signer| {
            if signer.public_key() == &self.public {
                Ok(signer)
            } else {
                Err(Error::new(
                    ErrorKind::KeyNotFound,
                    self.backend,
                    format!(
                        "opened again, the configured key is another one ({}, not {}); restart \
                         keybound to use a new key",
                        signer.public_key().fingerprint(),
                        self.public.fingerprint()
                    ),
                ))
            }
        });
        match opened {
            Ok(signer) => {
                *current = Ok(signer);
                Ok(())
            }
            Err(e) => {
                *current = Err(Closed {
                    kind: e.kind(),
                    message: e.message().to_owned(),
                });
                Err(e)
            }
        }
    }
}

impl Signer for Reopenable {
    fn backend(&self) -> &'static str {
        self.backend
    }

    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Signature, Error> {
        let signer = match &*self.current.lock().unwrap_or_else(|p| p.into_inner()) {
            Ok(signer) => signer.clone(),
            Err(closed) => {
                return Err(Error::new(
                    closed.kind,
                    self.backend,
                    closed.message.clone(),
                ));
            }
        };
        signer.sign(message)
    }

    fn protection(&self) -> Protection {
        self.protection.clone()
    }
}

impl fmt::Debug for Reopenable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reopenable")
            .field("backend", &self.backend)
            .field("fingerprint", &self.public.fingerprint())
            .finish_non_exhaustive()
    }
}
