#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keybound_fuzz::tss2_key_file(data));
