#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| serin_fuzz::template_render(data));
