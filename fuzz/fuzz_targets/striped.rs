//! `cargo fuzz run striped`: see vgpu_fuzz::striped for what it feeds and what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::striped::run(data));
