//! One error type for the crate ([`keybound_signer::Error`] with backend `pkcs11`), and what a
//! PKCS#11 return value means for the caller: a wrong PIN, a token that went away (worth a
//! reopen), a mechanism the token lacks, or a failed signature.

use cryptoki::error::{Error as CkError, RvError};
use keybound_signer::{Error, ErrorKind};

/// The backend's name, in errors and in the refused-PIN memory.
pub(crate) const BACKEND: &str = "pkcs11";

pub(crate) fn err(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, BACKEND, message)
}

/// What to make of a PKCS#11 error.
pub(crate) fn kind_of(e: &CkError) -> ErrorKind {
    match e {
        CkError::Pkcs11(rv, _) => match rv {
            RvError::PinIncorrect
            | RvError::PinLocked
            | RvError::PinExpired
            | RvError::PinInvalid
            | RvError::PinLenRange => ErrorKind::Auth,
            RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::ObjectHandleInvalid
            | RvError::KeyHandleInvalid
            | RvError::SessionCount
            | RvError::CryptokiNotInitialized => ErrorKind::Unavailable,
            RvError::MechanismInvalid
            | RvError::KeyTypeInconsistent
            | RvError::KeyFunctionNotPermitted => ErrorKind::Unsupported,
            _ => ErrorKind::Sign,
        },
        _ => ErrorKind::Sign,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_for_retries() {
        use cryptoki::context::Function;
        assert_eq!(
            kind_of(&CkError::Pkcs11(RvError::PinIncorrect, Function::Login)),
            ErrorKind::Auth
        );
        assert_eq!(
            kind_of(&CkError::Pkcs11(
                RvError::SessionHandleInvalid,
                Function::Sign
            )),
            ErrorKind::Unavailable
        );
        assert_eq!(
            kind_of(&CkError::Pkcs11(RvError::DeviceRemoved, Function::Sign)),
            ErrorKind::Unavailable
        );
        assert_eq!(
            kind_of(&CkError::Pkcs11(
                RvError::MechanismInvalid,
                Function::SignInit
            )),
            ErrorKind::Unsupported
        );
    }
}
