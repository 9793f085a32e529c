//! `cargo fuzz run frames`: see vgpu_fuzz::frames for what it feeds and what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::frames::run(data));
