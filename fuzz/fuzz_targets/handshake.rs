//! `cargo fuzz run handshake`: see vgpu_fuzz::handshake for what it feeds and what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::handshake::run(data));
