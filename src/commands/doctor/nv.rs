//! Standard mode's client state in a TPM NV index (`tpm_state_nv_index`): the index, its size
//! and attributes as the TPM reports them, and the newest record's sequence number, read with
//! the configured authorization value (one attempt; a refused value is not presented again).

use keybound_signer_tpm::nv::NvStore;

use super::report::{Check, Status};
use crate::renewal::StandardSetup;

/// The `state` line, when the client state is kept in NV.
pub(super) fn check(setup: &StandardSetup) -> Option<Check> {
    let (tpm, index) = (setup.tpm_device.as_ref()?, setup.tpm_state_nv_index?);
    let check = match NvStore::open(tpm, index) {
        Ok(None) => Check::new(
            Status::Ok,
            "state",
            format!(
                "TPM NV index 0x{index:08x} is not defined yet; the first join defines it ({} bytes, \
                 authread|authwrite|no_da)",
                keybound_signer_tpm::nv::DEFAULT_SIZE
            ),
        ),
        Ok(Some(mut store)) => {
            let info = store.info().clone();
            let at = format!(
                "client state in TPM NV index 0x{index:08x} ({} bytes, {})",
                info.size, info.attributes
            );
            match store.read() {
                Ok(Some(record)) => Check::new(
                    Status::Ok,
                    "state",
                    format!(
                        "{at}, record {} ({} of {} bytes a slot holds)",
                        record.seq,
                        record.payload.len(),
                        info.capacity()
                    ),
                ),
                Ok(None) => Check::new(Status::Ok, "state", format!("{at}, never written")),
                Err(e) => Check::new(Status::Fail, "state", format!("{at}: {e}")),
            }
        }
        Err(e) => Check::new(Status::Fail, "state", e.to_string()).fix(
            "check tpm_state_nv_index and pin_source (the index's authorization value); \
             tpm2_nvreadpublic shows the index",
        ),
    };
    Some(check)
}
