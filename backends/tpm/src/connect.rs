//! Connecting to the TPM: the TCTI resolved (see [`crate::tcti`]) and opened, and, when it
//! cannot be, why in words. Reconnecting after a TPM restart is [`TpmSigner`]'s: it opens the
//! key again through here.
//!
//! [`TpmSigner`]: crate::TpmSigner

use keybound_signer::config::TpmConfig;
use keybound_signer::{Error, ErrorKind};
use tss_esapi::{Context, Error as TssError};

use crate::error::{err, rc_kind};
use crate::tcti::{self, Tcti};

/// Opens a context on the TPM `config` names (or the environment's, or the default).
pub(crate) fn connect(config: &TpmConfig) -> Result<(Tcti, Context), Error> {
    let tcti = tcti::resolve(config.tcti.as_deref()).map_err(|e| err(ErrorKind::Config, e))?;
    let conf = tcti.to_name_conf().map_err(|e| err(ErrorKind::Config, e))?;
    let ctx = Context::new(conf).map_err(|e| unreachable(&tcti, &e))?;
    Ok((tcti, ctx))
}

/// Why the TPM could not be reached, in words. When the TCTI cannot be opened, tss-esapi only
/// says "response code not recognized" (libtss2's TCTI codes have no name there), so for a
/// device the path itself is looked at: missing, not ours to open, or busy.
fn unreachable(tcti: &Tcti, e: &TssError) -> Error {
    let cause = match rc_kind(e) {
        Some(_) => e.to_string(),
        None => "the TCTI could not be opened".to_owned(),
    };
    let message = match tcti {
        Tcti::Device(path) => match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Err(io) if io.kind() == std::io::ErrorKind::NotFound => format!(
                "no TPM device at {}: is the TPM enabled (in the firmware setup, with the kernel's tpm_tis or \
                 tpm_crb driver loaded), or is tpm2-abrmd needed (--tpm-tcti tabrmd:)? For a TPM elsewhere set \
                 --tpm-tcti (tpm_tcti), e.g. swtpm:host=127.0.0.1,port=P",
                path.display()
            ),
            Err(io) if io.kind() == std::io::ErrorKind::PermissionDenied => format!(
                "this user may not open the TPM device {}: add it to the group that owns the device (tss on \
                 Debian and Ubuntu; under systemd SupplementaryGroups=tss)",
                path.display()
            ),
            Err(io) => format!(
                "cannot open the TPM device {} ({io}); a busy /dev/tpm0 is held by another program, such as \
                 tpm2-abrmd: use /dev/tpmrm0 or --tpm-tcti tabrmd:",
                path.display()
            ),
            Ok(_) => format!(
                "cannot reach the TPM at {tcti} ({cause}); {} opens, but does not answer as a TPM 2.0",
                path.display()
            ),
        },
        Tcti::Swtpm { .. } | Tcti::Mssim { .. } => format!(
            "cannot reach the TPM at {tcti} ({cause}); check the TCTI (--tpm-tcti) and that swtpm (or the \
             simulator) listens on that port, with its control port on the next one"
        ),
        Tcti::Tabrmd(_) => format!(
            "cannot reach the TPM at {tcti} ({cause}); is the tpm2-abrmd service running, and may this user \
             talk to it on D-Bus?"
        ),
    };
    err(ErrorKind::Unavailable, message)
}
