#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keybound_fuzz::attest_evidence(data));
