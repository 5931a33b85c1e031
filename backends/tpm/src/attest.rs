//! Key attestation, the TPM's side: the EK certificates read from the TCG NV indices, a fresh
//! attestation key (AK) made under the RSA EK, `TPM2_Certify` of the bound key by that AK over
//! caller-given qualifying data, and `TPM2_ActivateCredential` for the admin's challenge.
//!
//! Nothing here judges the evidence: the verifier (keybound's `attest verify`) parses the bytes
//! returned here itself, needing no TPM. The AK is made per attestation and never persisted:
//! its private part leaves the TPM only wrapped by the EK's storage key, so only this TPM can
//! load it again (for the challenge).

use keybound_signer::config::TpmConfig;
use keybound_signer::refused::Fingerprint;
use keybound_signer::{Error, ErrorKind};
use tss_esapi::Context;
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, DefaultKey, ak, ek};
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::handles::{
    AuthHandle, KeyHandle, NvIndexHandle, NvIndexTpmHandle, ObjectHandle, TpmHandle,
};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, EncryptedSecret, HashScheme, IdObject, Private, Public, Signature, SignatureScheme,
    SymmetricDefinition,
};
use tss_esapi::traits::{Marshall as _, UnMarshall as _};
use zeroize::Zeroizing;

use crate::TpmSigner;
use crate::auth::{in_lockout, refused_before, refused_now};
use crate::connect::connect;
use crate::error::{err, is_auth_failure, rc_kind, tpm_error};
use crate::load::tpm2b;

/// The TCG EK certificate NV indices (TCG EK Credential Profile 2.3, 2.2.1.4), with the key
/// each certifies: RSA 2048 and ECC P-256 (the low range), then the high range.
pub const EK_CERTIFICATE_INDICES: [(u32, &str); 6] = [
    (0x01c0_0002, "rsa2048"),
    (0x01c0_000a, "ecc-nist-p256"),
    (0x01c0_0016, "ecc-nist-p384"),
    (0x01c0_0018, "ecc-nist-p521"),
    (0x01c0_001c, "rsa3072"),
    (0x01c0_001e, "rsa4096"),
];

/// The index of the RSA 2048 EK certificate: the EK keybound makes the AK under.
pub const RSA_EK_CERTIFICATE_INDEX: u32 = 0x01c0_0002;

/// An EK certificate as the TPM holds it.
#[derive(Clone, Debug)]
pub struct EkCertificate {
    /// The NV index it was read from.
    pub nv_index: u32,
    /// What the index holds by the TCG's table: `rsa2048`, `ecc-nist-p256`, ...
    pub kind: &'static str,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

/// What the TPM gives for one attestation of the bound key.
#[derive(Clone, Debug)]
pub struct KeyAttestation {
    /// Every EK certificate in the TCG NV indices.
    pub ek_certificates: Vec<EkCertificate>,
    /// The RSA EK's public area (`TPM2B_PUBLIC`), made afresh from the TCG default template:
    /// the caller checks it is the key of the RSA certificate.
    pub ek_public: Vec<u8>,
    /// The AK's public area, `TPM2B_PUBLIC`.
    pub ak_public: Vec<u8>,
    /// The AK's private area wrapped by the EK (`TPM2B_PRIVATE`): loadable in this TPM only.
    pub ak_private: Vec<u8>,
    /// The bound key's public area, `TPM2B_PUBLIC`.
    pub key_public: Vec<u8>,
    /// `TPMS_ATTEST` from `TPM2_Certify` (without the `TPM2B` size).
    pub attest: Vec<u8>,
    /// The AK's ECDSA signature over `attest`: `r` and `s`, each left-padded to 32 bytes.
    pub signature_r: [u8; 32],
    /// See `signature_r`.
    pub signature_s: [u8; 32],
}

impl TpmSigner {
    /// Attests this key: reads the EK certificates, makes an ECC P-256 AK under the RSA EK and
    /// has it certify the key with `qualifying_data` (at most 64 bytes; keybound passes a
    /// SHA-256) as the attestation's `extraData`.
    pub fn attest(&self, qualifying_data: &[u8]) -> Result<KeyAttestation, Error> {
        let mut guard = self.state.lock().expect("TPM context lock poisoned");
        let session = &mut *guard;
        if let (Some(auth), Some(fingerprint)) = (&self.config.auth, session.auth)
            && fingerprint.was_refused()
        {
            return Err(refused_before(auth, &self.source));
        }
        let ctx = &mut session.ctx;
        let ek_certificates = read_ek_certificates(ctx)?;
        if !ek_certificates
            .iter()
            .any(|c| c.nv_index == RSA_EK_CERTIFICATE_INDEX)
        {
            return Err(no_rsa_ek(&self.tcti.to_string(), &ek_certificates));
        }
        // The signer's context keeps the password session set; the EK and AK commands bring
        // their own sessions, and TPM2_StartAuthSession must go without one.
        let key = session.key;
        let made = ctx.execute_without_session(|ctx| {
            let ek = rsa_ek(ctx)?;
            let made = make_ak_and_certify(ctx, ek, key, qualifying_data);
            let _ = ctx.flush_context(ek.into());
            made
        });
        let Certified {
            ek_public,
            ak_public,
            ak_private,
            attest,
            signature,
        } = made.map_err(|step| self.attest_error(ctx, session.auth, step))?;
        let (key_public, _, _) = ctx
            .execute_without_session(|c| c.read_public(session.key))
            .map_err(|e| tpm_error(&e, format!("reading the public part of {}", self.source)))?;
        let Signature::EcDsa(ecdsa) = signature else {
            return Err(err(
                ErrorKind::Sign,
                "the TPM signed the attestation with another scheme than the ECDSA asked for",
            ));
        };
        let encode = |e: tss_esapi::Error, what: &str| tpm_error(&e, format!("encoding {what}"));
        Ok(KeyAttestation {
            ek_certificates,
            ek_public: tpm2b(&ek_public.marshall().map_err(|e| encode(e, "the EK"))?),
            ak_public: tpm2b(&ak_public.marshall().map_err(|e| encode(e, "the AK"))?),
            ak_private: tpm2b(ak_private.value()),
            key_public: tpm2b(&key_public.marshall().map_err(|e| encode(e, "the key"))?),
            attest: attest
                .marshall()
                .map_err(|e| encode(e, "the attestation"))?,
            signature_r: pad32(ecdsa.signature_r().value())?,
            signature_s: pad32(ecdsa.signature_s().value())?,
        })
    }

    /// What a failed AK or certify step means: the key's authorization value refused (never
    /// sent again), lockout, or a TPM error.
    fn attest_error(
        &self,
        ctx: &mut Context,
        auth: Option<Fingerprint>,
        (e, doing): (tss_esapi::Error, String),
    ) -> Error {
        if is_auth_failure(&e) {
            if let Some(fingerprint) = auth {
                fingerprint.remember_refused();
            }
            return refused_now(&e, &self.source, self.config.auth.as_ref());
        }
        if rc_kind(&e) == Some(Tss2ResponseCodeKind::Lockout) {
            return in_lockout(ctx);
        }
        tpm_error(&e, doing)
    }
}

/// A TPM step that failed, and what it was doing.
type Step<T> = Result<T, (tss_esapi::Error, String)>;

/// What one certification gives: the EK's public area, the AK (public and EK-wrapped private),
/// and the attestation with its signature.
struct Certified {
    ek_public: Public,
    ak_public: Public,
    ak_private: Private,
    attest: tss_esapi::structures::Attest,
    signature: Signature,
}

/// Makes the AK under `ek`, loads it, has it certify `key`, and flushes it.
fn make_ak_and_certify(
    ctx: &mut Context,
    ek: KeyHandle,
    key: KeyHandle,
    qualifying_data: &[u8],
) -> Step<Certified> {
    let step = |doing: &str| {
        let doing = doing.to_owned();
        move |e| (e, doing)
    };
    let (ek_public, _, _) = ctx
        .execute_without_session(|c| c.read_public(ek))
        .map_err(step("reading the EK's public area"))?;
    let created = ak::create_ak_2(
        ctx,
        ek,
        HashingAlgorithm::Sha256,
        AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        SignatureSchemeAlgorithm::EcDsa,
        None,
        DefaultKey,
    )
    .map_err(step("creating the attestation key under the EK"))?;
    let ak_handle = ak::load_ak(
        ctx,
        ek,
        None,
        created.out_private.clone(),
        created.out_public.clone(),
    )
    .map_err(step("loading the attestation key"))?;
    let data = Data::try_from(qualifying_data.to_vec())
        .map_err(step("the qualifying data (at most 64 bytes)"))?;
    let certified = ctx
        .execute_with_sessions(
            (
                Some(AuthSession::Password),
                Some(AuthSession::Password),
                None,
            ),
            |c| {
                c.certify(
                    ObjectHandle::from(key),
                    ak_handle,
                    data,
                    SignatureScheme::EcDsa {
                        hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
                    },
                )
            },
        )
        .map_err(step(
            "certifying the key with the attestation key (TPM2_Certify)",
        ));
    let _ = ctx.flush_context(ak_handle.into());
    let (attest, signature) = certified?;
    Ok(Certified {
        ek_public,
        ak_public: created.out_public,
        ak_private: created.out_private,
        attest,
        signature,
    })
}

/// Every EK certificate the TPM holds in the TCG indices.
pub(crate) fn read_ek_certificates(ctx: &mut Context) -> Result<Vec<EkCertificate>, Error> {
    let mut found = Vec::new();
    for (index, kind) in EK_CERTIFICATE_INDICES {
        let handle = NvIndexTpmHandle::new(index).expect("a TCG NV index");
        // tr_from_tpm_public runs without the password session (it crashes libtss2-esys 3.2.1).
        let object = match ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(handle)))
        {
            Ok(object) => object,
            Err(e) if rc_kind(&e) == Some(Tss2ResponseCodeKind::Handle) => continue,
            Err(e) => return Err(tpm_error(&e, format!("looking up NV index 0x{index:08x}"))),
        };
        let der = read_nv(ctx, object.into()).map_err(|e| {
            tpm_error(
                &e,
                format!("reading the EK certificate at NV index 0x{index:08x}"),
            )
        })?;
        found.push(EkCertificate {
            nv_index: index,
            kind,
            der,
        });
    }
    Ok(found)
}

/// An NV index's whole contents, read in chunks of 512 bytes (every TPM's NV buffer holds at
/// least that; tss-esapi's `nv::read_full` asks for the TPM's maximum, which libtss2 3.2 fails to
/// unmarshal from swtpm).
fn read_nv(ctx: &mut Context, index: NvIndexHandle) -> Result<Vec<u8>, tss_esapi::Error> {
    const CHUNK: usize = 512;
    let (public, _) = ctx.execute_without_session(|c| c.nv_read_public(index))?;
    let size = public.data_size();
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let want = (size - out.len()).min(CHUNK);
        // Both fit in u16: an NV index holds at most 2048 bytes here.
        let chunk = ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.nv_read(NvAuth::NvIndex(index), index, want as u16, out.len() as u16)
        })?;
        out.extend_from_slice(chunk.value());
    }
    Ok(out)
}

/// The RSA 2048 EK, made afresh from the TCG default template (the same seed gives the same
/// key, the one its certificate names).
fn rsa_ek(ctx: &mut Context) -> Step<KeyHandle> {
    ek::create_ek_object_2(
        ctx,
        AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        DefaultKey,
    )
    .map_err(|e| {
        (
            e,
            "creating the RSA endorsement key from the TCG default template".to_owned(),
        )
    })
}

fn no_rsa_ek(tcti: &str, found: &[EkCertificate]) -> Error {
    let held = if found.is_empty() {
        "none".to_owned()
    } else {
        found
            .iter()
            .map(|c| format!("{} at 0x{:08x}", c.kind, c.nv_index))
            .collect::<Vec<_>>()
            .join(", ")
    };
    err(
        ErrorKind::Unsupported,
        format!(
            "the TPM at {tcti} has no RSA 2048 EK certificate at NV index 0x01c00002 (EK certificates: {held}); \
             keybound makes the attestation key under the RSA EK. A TPM without EK certificates cannot \
             prove it is a TPM: provision one (swtpm: swtpm_setup --create-ek-cert)"
        ),
    )
}

fn pad32(v: &[u8]) -> Result<[u8; 32], Error> {
    let mut out = [0u8; 32];
    let start = 32usize.checked_sub(v.len()).ok_or_else(|| {
        err(
            ErrorKind::Sign,
            "the TPM returned an ECDSA signature value longer than P-256's",
        )
    })?;
    out[start..].copy_from_slice(v);
    Ok(out)
}

/// Answers the admin's challenge on the TPM `config` names: loads the AK (its `TPM2B_PUBLIC`
/// and EK-wrapped `TPM2B_PRIVATE`) under the RSA EK and runs `TPM2_ActivateCredential` on the
/// credential blob (`TPM2B_ID_OBJECT` contents) and encrypted seed (`TPM2B_ENCRYPTED_SECRET`
/// contents). Returns the credential the admin encrypted; only the TPM holding that EK, with
/// an AK of the name the admin bound the credential to, can recover it.
pub fn activate_credential(
    config: &TpmConfig,
    (ak_public, ak_private): (&[u8], &[u8]),
    credential_blob: &[u8],
    encrypted_secret: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let bad = |what: &str, e: tss_esapi::Error| {
        err(
            ErrorKind::Config,
            format!("the challenge holds an unreadable {what}: {e}"),
        )
    };
    let untpm2b = |bytes: &[u8], what: &str| -> Result<Vec<u8>, Error> {
        match bytes {
            [hi, lo, rest @ ..] if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() => {
                Ok(rest.to_vec())
            }
            _ => Err(err(
                ErrorKind::Config,
                format!("the challenge holds a malformed {what}"),
            )),
        }
    };
    let public = Public::unmarshall(&untpm2b(ak_public, "AK public area")?)
        .map_err(|e| bad("AK public area", e))?;
    let private = Private::try_from(untpm2b(ak_private, "AK private area")?)
        .map_err(|e| bad("AK private area", e))?;
    let blob = IdObject::try_from(credential_blob.to_vec()).map_err(|e| bad("credential", e))?;
    let secret =
        EncryptedSecret::try_from(encrypted_secret.to_vec()).map_err(|e| bad("secret", e))?;
    let (tcti, mut ctx) = connect(config)?;
    let ek = rsa_ek(&mut ctx).map_err(|(e, doing)| tpm_error(&e, doing))?;
    let result = activate_under(&mut ctx, ek, (public, private), blob, secret);
    let _ = ctx.flush_context(ek.into());
    result.map_err(|(e, doing)| match rc_kind(&e) {
        Some(
            Tss2ResponseCodeKind::Integrity
            | Tss2ResponseCodeKind::Binding
            | Tss2ResponseCodeKind::Value
            | Tss2ResponseCodeKind::Size,
        ) => err(
            ErrorKind::KeyNotFound,
            format!(
                "{doing} failed in the TPM at {tcti} ({e}): the challenge was made for another TPM's \
                 endorsement key or attestation key"
            ),
        ),
        _ => tpm_error(&e, format!("{doing} in the TPM at {tcti}")),
    })
}

/// Loads the AK under `ek` and activates the credential; flushes what it loaded.
fn activate_under(
    ctx: &mut Context,
    ek: KeyHandle,
    (public, private): (Public, Private),
    blob: IdObject,
    secret: EncryptedSecret,
) -> Step<Zeroizing<Vec<u8>>> {
    let ak_handle = ak::load_ak(ctx, ek, None, private, public)
        .map_err(|e| (e, "loading the attestation key under the EK".to_owned()))?;
    let result = activate(ctx, ek, ak_handle, blob, secret);
    let _ = ctx.flush_context(ak_handle.into());
    result
}

/// `TPM2_ActivateCredential`: the AK authorized by password, the EK by a policy session that
/// satisfied `PolicySecret(TPM_RH_ENDORSEMENT)` (the EK template's policy A).
fn activate(
    ctx: &mut Context,
    ek: KeyHandle,
    ak_handle: KeyHandle,
    blob: IdObject,
    secret: EncryptedSecret,
) -> Step<Zeroizing<Vec<u8>>> {
    let doing = |what: &str| {
        let what = what.to_owned();
        move |e| (e, what)
    };
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(doing("starting a policy session for the EK"))?
        .expect("a policy session handle");
    let (attributes, mask) = SessionAttributesBuilder::new()
        .with_decrypt(true)
        .with_encrypt(true)
        .build();
    let result = (|| {
        ctx.tr_sess_set_attributes(session, attributes, mask)
            .map_err(doing("setting the policy session's attributes"))?;
        let policy = PolicySession::try_from(session).map_err(doing("the policy session"))?;
        ctx.execute_with_nullauth_session(|c| {
            c.policy_secret(
                policy,
                AuthHandle::Endorsement,
                Default::default(),
                Default::default(),
                Default::default(),
                None,
            )
        })
        .map_err(doing(
            "satisfying the EK's policy (PolicySecret endorsement)",
        ))?;
        ctx.execute_with_sessions((Some(AuthSession::Password), Some(session), None), |c| {
            c.activate_credential(ak_handle, ek, blob, secret)
        })
        .map(|digest| Zeroizing::new(digest.value().to_vec()))
        .map_err(doing("TPM2_ActivateCredential"))
    })();
    let _ = ctx.flush_context(tss_esapi::handles::SessionHandle::from(session).into());
    result
}
