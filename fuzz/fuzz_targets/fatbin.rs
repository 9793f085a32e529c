//! `cargo fuzz run fatbin`: see vgpu_fuzz::fatbin for what it feeds and what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::fatbin::run(data));
