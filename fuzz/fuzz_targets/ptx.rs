//! `cargo fuzz run ptx`: see vgpu_fuzz::ptx for what it feeds and what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::ptx::run(data));
