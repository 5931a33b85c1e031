//! Evidence that a bound key lives in a TPM, checked offline (docs/attestation.md).
//!
//! The host makes it (`keybound keypair attest`, with the TPM backend): the EK certificates, a
//! fresh attestation key (AK) under the EK, the key's public area, `TPM2_Certify` of the key by
//! the AK over the SHA-256 of a statement (bot, token, key, time, nonce), and the signature.
//! The admin checks it with no TPM (`keybound attest verify`, [`verify`]) and, once, proves the
//! AK sits in the EK's TPM with a credential only that TPM can open ([`challenge`]).
//!
//! - [`evidence`]: the file and the statement; [`tpm2`]: the TPM structures, read;
//! - [`ekchain`]: EK certificate chains; [`credential`]: `TPM2_MakeCredential` in software;
//! - [`challenge`]: the challenge, the secret kept and the response; [`verify`]: the checks.

pub mod challenge;
pub mod credential;
pub mod ekchain;
pub mod evidence;
pub mod tpm2;
pub mod verify;
