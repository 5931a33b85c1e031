//! End-to-end tests of the `keybound` binary and library against tools keybound did not write
//! (openssl, ssh-keygen, Python's cryptography and PyJWT). One binary, so it links once.

mod access;
#[cfg(feature = "tpm")]
mod access_tpm;
mod agent;
mod agent_health;
mod agent_pins;
mod agent_stalls;
mod agent_start;
mod agent_support;
#[cfg(feature = "tpm")]
mod attest;
mod authapi;
mod cli;
mod cluster;
mod cluster_process;
mod completions;
mod concurrency;
mod config;
mod dev_cluster_admin;
mod doctor;
mod faults;
mod federation;
mod flags;
mod fuzz_regressions;
mod giving_up;
mod heartbeats;
mod hostile;
mod hostile_server;
mod hostile_text;
mod interop;
mod intervals;
mod join;
mod keypair;
mod kube;
mod logs;
mod oneshot;
mod outputs;
mod pkcs11;
mod recipes;
mod rejoin;
mod secrets;
mod ssh_host;
mod ssh_proxy;
mod standard;
mod standard_devices;
mod standard_pkcs11;
#[cfg(feature = "tpm")]
mod standard_tpm;
#[cfg(feature = "tpm")]
mod standard_tpm_nv;
mod start;
mod support;
#[cfg(feature = "tpm")]
mod tpm;
mod upgrade;
mod workload_api;
mod workload_identity;
