//! `cargo fuzz run tickets`: see vgpu_fuzz::tickets for what it feeds and what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::tickets::run(data));
