//! What keybound's agent and its dev cluster both speak, kept once: Teleport's signature
//! algorithm suites ([`suite`]), how Teleport writes an identity into a certificate's subject
//! ([`subject`]), PEM certificates ([`pem`]), times as Teleport prints them ([`time`]), and text
//! from the other side on its way into a log line or an error ([`text`]).
//!
//! It sits below both: it depends on `keybound-signer` (for key algorithms) and nothing else of
//! keybound's.

#![forbid(unsafe_code)]

pub mod pem;
pub mod subject;
pub mod suite;
pub mod text;
pub mod time;
pub mod wsframe;
