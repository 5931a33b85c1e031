//! How to join: `onboarding:` and its `bound_keypair:` keys, and the signer they describe.

use std::path::PathBuf;

use keybound_signer::PinSource;
use keybound_signer::config::{
    EnvConfig, FileConfig, Pkcs11Config, Pkcs11UriText, SignerConfig, TpmConfig, TpmKey,
};

use crate::bkp::RegistrationSecret;
use crate::signer::SignerKind;

/// `onboarding:`.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Onboarding {
    /// The join token as given: its name, or an absolute path to a file holding it, read at each
    /// join ([`super::token`]).
    pub token: String,
    /// A CA bundle to verify the cluster with, instead of the system roots.
    pub ca_path: Option<PathBuf>,
    /// `bound_keypair.static_private_key_path`.
    pub static_private_key_path: Option<PathBuf>,
    /// `bound_keypair.signer` (keybound): which backend holds the key.
    pub signer: Option<SignerKind>,
    /// `bound_keypair.pkcs11_uri` (keybound): the key in a PKCS#11 token (it may carry a PIN).
    pub pkcs11_uri: Option<Pkcs11UriText>,
    /// `bound_keypair.pkcs11_module` (keybound): the PKCS#11 module to load.
    pub pkcs11_module: Option<PathBuf>,
    /// `bound_keypair.pin_source` (keybound): where the token PIN comes from.
    pub pin_source: Option<PinSource>,
    /// `bound_keypair.require_hardware_key` (keybound): refuse keys not generated in a device.
    pub require_hardware_key: bool,
    /// `bound_keypair.tpm_tcti` (keybound): how to reach the TPM.
    pub tpm_tcti: Option<String>,
    /// `bound_keypair.tpm_key_handle` (keybound): a persistent handle.
    pub tpm_key_handle: Option<u32>,
    /// `bound_keypair.tpm_key_path` (keybound): a TSS2 PEM key file.
    pub tpm_key_path: Option<PathBuf>,
    /// `bound_keypair.tpm_parent` (keybound): a persistent parent for the key file.
    pub tpm_parent: Option<u32>,
    /// `bound_keypair.tpm_state_nv_index` (keybound): standard mode's client state in this
    /// owner-range TPM NV index instead of storage ([`crate::bkp::store`]).
    pub tpm_state_nv_index: Option<u32>,
    /// `bound_keypair.registration_secret` (or `--registration-secret`).
    pub registration_secret: Option<RegistrationSecret>,
    /// `bound_keypair.registration_secret_path` (or `--registration-secret-path`).
    pub registration_secret_path: Option<PathBuf>,
}

/// Static or standard bound-keypair joining.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum KeyMode {
    /// A static key, the signer's (`static_private_key_path`, `TBOT_BOUND_KEYPAIR_STATIC_KEY`,
    /// a PKCS#11 or TPM key).
    Static,
    /// Standard: keys and join state in bot storage, made and rotated by keybound.
    Standard,
}

impl Onboarding {
    /// Static or standard, decided as tbot does (`initBoundKeypairClientState`): a static key
    /// when one is configured (a signer, a key path, a PKCS#11 URI or TPM key, or
    /// `TBOT_BOUND_KEYPAIR_STATIC_KEY` holding a value), else the client state in storage. Where
    /// tbot falls back to storage when a configured static key fails to load, keybound stops
    /// with the key's error (`Prepared::new` opens it). `signer: pkcs11` with a URI that names
    /// no key is standard mode with keys made in that token ([`Self::device_keys`]).
    pub fn key_mode(&self) -> KeyMode {
        if self.device_keys().is_some() || self.tpm_device_keys().is_some() {
            return KeyMode::Standard;
        }
        let configured = self.signer.is_some()
            || self.static_private_key_path.is_some()
            || self.pkcs11_uri.is_some()
            || self.tpm_key_handle.is_some()
            || self.tpm_key_path.is_some()
            || keybound_signer_soft::env_value_present(keybound_signer::config::STATIC_KEY_ENV);
        if configured {
            KeyMode::Static
        } else {
            KeyMode::Standard
        }
    }

    /// Standard mode with keys made inside a PKCS#11 token: `signer: pkcs11` and a URI that
    /// names a token but no key (no `object`, no `id`); the token, module and PIN to make keys
    /// with. `None` for any other configuration.
    pub fn device_keys(&self) -> Option<Pkcs11Config> {
        if self.signer != Some(SignerKind::Pkcs11) {
            return None;
        }
        let uri = self.pkcs11_uri.as_ref()?;
        let path = uri.strip_prefix("pkcs11:")?.split('?').next()?;
        let names_key = path
            .split(';')
            .any(|attribute| attribute.starts_with("object=") || attribute.starts_with("id="));
        if names_key {
            return None;
        }
        self.pkcs11_config().ok()
    }

    /// Standard mode with keys made inside the TPM: `signer: tpm` and no key (no
    /// `tpm_key_handle`, no `tpm_key_path`); the TPM settings keys are made with (the key field
    /// is a placeholder each new key replaces with its own file). `None` otherwise.
    ///
    /// With `tpm_key_handle` and a registration secret or a `tpm_state_nv_index` (standard mode's
    /// signs: a static key needs neither), the keys are kept at persistent handles instead: the
    /// handle given and the next (`bkp::device`); the config's key is then `TpmKey::Handle` of
    /// the first.
    pub fn tpm_device_keys(&self) -> Option<TpmConfig> {
        if self.tpm_key_path.is_some() {
            return None;
        }
        let key = match self.tpm_key_handle {
            None if self.signer == Some(SignerKind::Tpm) => TpmKey::File(PathBuf::new()),
            Some(handle)
                if self.signer_kind() == SignerKind::Tpm
                    && (!matches!(self.registration_secret(), Ok(None))
                        || self.tpm_state_nv_index.is_some()) =>
            {
                TpmKey::Handle(handle)
            }
            _ => return None,
        };
        let mut config = TpmConfig::new(key);
        config.tcti.clone_from(&self.tpm_tcti);
        config.parent = self.tpm_parent;
        config.auth.clone_from(&self.pin_source);
        config.require_hardware_key = self.require_hardware_key;
        Some(config)
    }

    /// Standard mode with its client state in TPM NV: the TPM settings keys are made with (whose
    /// `pin_source` is the index's authorization value too) and the index. `None` unless
    /// `tpm_state_nv_index` is set with keys made in the TPM.
    pub fn tpm_state_nv(&self) -> Option<(TpmConfig, u32)> {
        Some((self.tpm_device_keys()?, self.tpm_state_nv_index?))
    }

    /// `tpm_state_nv_index`, checked: owner range, standard mode with keys made in the TPM, and
    /// an authorization value.
    fn check_state_nv_index(&self) -> Result<(), String> {
        let Some(index) = self.tpm_state_nv_index else {
            return Ok(());
        };
        if !(0x0180_0000..=0x01BF_FFFF).contains(&index) {
            return Err(format!(
                "tpm_state_nv_index 0x{index:08x} is not an owner-range NV index; use one in \
                 0x01800000..0x01bfffff, e.g. 0x01800100"
            ));
        }
        if self.tpm_device_keys().is_none() {
            return Err(
                "tpm_state_nv_index keeps standard mode's client state in the TPM, so it needs \
                 signer: tpm with keys made by keybound; remove it, or remove the static key \
                 (tpm_key_path, a static tpm_key_handle)"
                    .to_owned(),
            );
        }
        if self.pin_source.is_none() {
            return Err(
                "tpm_state_nv_index needs pin_source, the NV index's authorization value: e.g. \
                 file:/etc/keybound/tpm-auth holding 32 random characters (openssl rand -hex 16)"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// The registration secret, resolved as tbot resolves it ([`crate::bkp::secret::resolve`]).
    pub fn registration_secret(&self) -> Result<Option<RegistrationSecret>, String> {
        crate::bkp::secret::resolve(
            self.registration_secret.as_ref(),
            self.registration_secret_path.as_deref(),
        )
    }

    /// Where the key lives. Without an explicit `signer`, a PKCS#11 URI means pkcs11 and a TPM key
    /// means tpm; then, as in tbot, the configured path wins over `TBOT_BOUND_KEYPAIR_STATIC_KEY`.
    pub fn signer_config(&self) -> Result<SignerConfig, String> {
        let kind = self.signer_kind();
        self.check_settings_belong_to(kind)?;
        self.check_state_nv_index()?;
        match kind {
            SignerKind::File => {
                let path = self.static_private_key_path.as_ref().ok_or(
                    "the file signer needs static_private_key_path (or --static-key-path)",
                )?;
                Ok(SignerConfig::File(FileConfig::new(path)))
            }
            SignerKind::Env => Ok(SignerConfig::Env(EnvConfig::default())),
            SignerKind::Pkcs11 => self.pkcs11_config().map(SignerConfig::Pkcs11),
            // Standard mode with keys made in the TPM names no key: the TPM's settings.
            SignerKind::Tpm => match self.tpm_device_keys() {
                Some(device) => Ok(SignerConfig::Tpm(device)),
                None => self.tpm_config().map(SignerConfig::Tpm),
            },
        }
    }

    /// The signer `signer:` names, else the one the other keys imply (a PKCS#11 URI, a TPM key,
    /// a key file), else the environment.
    fn signer_kind(&self) -> SignerKind {
        self.signer.unwrap_or(if self.pkcs11_uri.is_some() {
            SignerKind::Pkcs11
        } else if self.tpm_key_handle.is_some() || self.tpm_key_path.is_some() {
            SignerKind::Tpm
        } else if self.static_private_key_path.is_some() {
            SignerKind::File
        } else {
            SignerKind::Env
        })
    }

    /// Settings that belong to another backend than `kind` are mistakes, not noise.
    fn check_settings_belong_to(&self, kind: SignerKind) -> Result<(), String> {
        let tpm_set = self.tpm_key_handle.is_some()
            || self.tpm_key_path.is_some()
            || self.tpm_tcti.is_some()
            || self.tpm_parent.is_some();
        let settings = [
            (
                "static_private_key_path",
                self.static_private_key_path.is_some(),
                &[SignerKind::File][..],
            ),
            (
                "pkcs11_uri/pkcs11_module",
                self.pkcs11_uri.is_some() || self.pkcs11_module.is_some(),
                &[SignerKind::Pkcs11],
            ),
            (
                "tpm_tcti/tpm_key_handle/tpm_key_path/tpm_parent",
                tpm_set,
                &[SignerKind::Tpm],
            ),
            (
                "pin_source",
                self.pin_source.is_some(),
                &[SignerKind::Pkcs11, SignerKind::Tpm],
            ),
        ];
        match settings
            .iter()
            .find(|(_, set, owners)| *set && !owners.contains(&kind))
        {
            Some((name, _, _)) => Err(format!(
                "{name} does not apply to the {} signer; remove it or choose its signer",
                kind.name()
            )),
            None => Ok(()),
        }
    }

    fn pkcs11_config(&self) -> Result<Pkcs11Config, String> {
        let uri = self.pkcs11_uri.clone().ok_or(
            "the pkcs11 signer needs pkcs11_uri (or --pkcs11-uri 'pkcs11:token=LABEL;object=LABEL')",
        )?;
        let mut config = Pkcs11Config::new(uri);
        config.module.clone_from(&self.pkcs11_module);
        config.pin.clone_from(&self.pin_source);
        config.require_hardware_key = self.require_hardware_key;
        Ok(config)
    }

    fn tpm_config(&self) -> Result<TpmConfig, String> {
        let key = match (self.tpm_key_handle, &self.tpm_key_path) {
            (Some(handle), None) => TpmKey::Handle(handle),
            (None, Some(path)) => TpmKey::File(path.clone()),
            (Some(_), Some(_)) => {
                return Err("give tpm_key_handle or tpm_key_path, not both".to_owned());
            }
            (None, None) => {
                return Err(
                    "the tpm signer needs tpm_key_handle (0x81xxxxxx) or tpm_key_path (a TSS2 PEM file)"
                        .to_owned(),
                );
            }
        };
        if self.tpm_parent.is_some() && self.tpm_key_handle.is_some() {
            return Err(
                "tpm_parent applies to tpm_key_path keys, not persistent handles".to_owned(),
            );
        }
        let mut config = TpmConfig::new(key);
        config.tcti.clone_from(&self.tpm_tcti);
        config.parent = self.tpm_parent;
        config.auth.clone_from(&self.pin_source);
        config.require_hardware_key = self.require_hardware_key;
        Ok(config)
    }
}
