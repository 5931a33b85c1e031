#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keybound_fuzz::private_key_pem(data));
