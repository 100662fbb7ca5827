#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| serin_fuzz::webhook_response(data));
