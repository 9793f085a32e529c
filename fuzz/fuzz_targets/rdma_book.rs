//! `cargo fuzz run rdma_book`: see vgpu_fuzz::rdma_book for what it feeds and what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::rdma_book::run(data));
