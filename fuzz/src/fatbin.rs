//! Module and library images as a GPU server reads them: the client shim's length probe, fat binary parsing (entries,
//! LZ4 and Zstandard decompression, `.nv.info` of cubins) and the emulated backend's loads, which build the
//! function table the client receives.
//!
//! Asserts: entries lie inside the image; decompression never exceeds `MAX_DECOMPRESSED`; a load that succeeds
//! yields a function table the client accepts (names, parameters inside the argument buffer) and that survives
//! the wire unchanged.

use bytes::BytesMut;
use vgpu_cuda_exec::backend::{Backend, DriverOps};
use vgpu_cuda_exec::emulated::EmulatedBackend;
use vgpu_dataplane::image::*;
use vgpu_dataplane::wire::{decode_function_table, encode_function_table, FunctionInfo};

pub fn run(data: &[u8]) {
    let _ = image_len(data);
    if let Image::FatBinary(entries) = classify(data) {
        let range = data.as_ptr_range();
        for e in &entries {
            let p = e.payload.as_ptr_range();
            assert!(
                range.start <= p.start && p.end <= range.end,
                "an entry outside the image"
            );
            if let Ok(content) = e.content() {
                assert!(content.len() as u64 <= MAX_DECOMPRESSED);
            }
            let _ = (e.ptx(), e.ptx_text());
        }
    }
    // A worker thread of its own per run: the emulated backend keeps the current context per thread.
    let image = data.to_vec();
    let loaded = std::thread::spawn(move || {
        let backend = EmulatedBackend::new();
        let mut tables = Vec::new();
        if let Ok((_, functions)) = backend.library_load(&image, 0) {
            tables.push(functions.into_iter().map(|f| f.info).collect::<Vec<_>>());
        }
        if let Ok(ctx) = backend.primary_ctx_retain(0) {
            if backend.ctx_set_current(ctx).is_ok() {
                if let Ok((_, functions)) = backend.module_load(&image) {
                    tables.push(functions.into_iter().map(|f| f.info).collect());
                }
            }
        }
        tables
    })
    .join();
    let tables = loaded.unwrap_or_else(|_| panic!("the emulated backend panicked loading an image"));
    for table in tables {
        crosses_the_wire(&table);
    }
}

/// The function table a load produced reaches the client intact and acceptable.
pub fn crosses_the_wire(table: &[FunctionInfo]) {
    let mut buf = BytesMut::new();
    encode_function_table(&mut buf, table);
    match decode_function_table(&buf) {
        Ok(back) => assert_eq!(back, table, "the function table changed on the wire"),
        Err(e) => panic!("the client would refuse the function table of a successful load: {e}"),
    }
}
