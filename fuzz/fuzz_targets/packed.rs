//! `cargo fuzz run packed`: see vgpu_fuzz::packed for what it feeds and what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::packed::run(data));
