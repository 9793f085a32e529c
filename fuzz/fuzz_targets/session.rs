//! `cargo fuzz run session`: see vgpu_fuzz::session for what it feeds and what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::session::run(data));
