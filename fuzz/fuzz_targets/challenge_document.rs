#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keybound_fuzz::challenge_document(data));
