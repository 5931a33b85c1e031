//! The commands, one file each: what `keybound <command>` does with its parsed flags.

pub mod attest;
pub mod configure;
pub mod dev_cluster;
pub mod doctor;
pub mod generate;
pub mod keypair;
pub mod kube;
pub mod signer_list;
pub mod ssh_proxy;
pub mod start;
