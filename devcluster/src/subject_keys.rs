//! The subject keys a client sends for its certificates, with Teleport's parse errors: PEM and
//! `authorized_keys` text (the legacy join RPC, `GenerateUserCerts`), or PKIX DER and an SSH
//! wire blob (`JoinService.Join`).

use tonic::Status;

/// `keys.ParsePublicKey`: PEM `PUBLIC KEY` (PKIX) or `RSA PUBLIC KEY` (PKCS#1), to PKIX DER.
pub(crate) fn pem_public_key_to_spki(pem: &[u8]) -> Result<Vec<u8>, Status> {
    use rsa::pkcs1::DecodeRsaPublicKey as _;
    use rsa::pkcs8::EncodePublicKey as _;
    let bad = |e: String| Status::invalid_argument(format!("parsing public TLS key: {e}"));
    let (label, der) = pem_rfc7468::decode_vec(pem).map_err(|e| bad(e.to_string()))?;
    match label {
        "PUBLIC KEY" => Ok(der),
        "RSA PUBLIC KEY" => rsa::RsaPublicKey::from_pkcs1_der(&der)
            .map_err(|e| bad(e.to_string()))?
            .to_public_key_der()
            .map(|d| d.into_vec())
            .map_err(|e| bad(e.to_string())),
        other => Err(bad(format!("unexpected PEM type {other:?}"))),
    }
}

/// `ssh.ParseAuthorizedKey`: an `authorized_keys` line to the key's SSH wire blob.
pub(crate) fn authorized_key_to_wire(line: &[u8]) -> Result<Vec<u8>, Status> {
    ssh_key::PublicKey::from_openssh(String::from_utf8_lossy(line).trim())
        .and_then(|k| k.to_bytes())
        .map_err(|e| Status::invalid_argument(format!("ssh: failed to parse public key: {e}")))
}

/// `makeBotCertsParams`: the TLS key must be PKIX DER and the SSH key a wire blob.
pub(crate) fn check_der_and_wire(
    tls_public_key: &[u8],
    ssh_public_key: &[u8],
) -> Result<(), Status> {
    spki::SubjectPublicKeyInfoRef::try_from(tls_public_key)
        .map_err(|e| Status::unknown(format!("x509: failed to parse public key: {e}")))?;
    ssh_key::PublicKey::from_bytes(ssh_public_key)
        .map_err(|e| Status::unknown(format!("ssh: failed to parse public key: {e}")))?;
    Ok(())
}
