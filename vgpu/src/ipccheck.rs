//! `vgpu __ipccheck`: one side of a CUDA IPC exchange through whatever `libcuda.so.1` loads, for the tests that
//! share device memory between processes of one tenant and see it refused across tenants. `export` allocates and
//! fills memory, prints its `CUipcMemHandle` as hex, waits for a line on stdin, then prints what the memory holds
//! (an opener may have written it); `open HEX` opens the handle, reads it, writes it and closes it.

use std::io::{BufRead, Write};

use vgpu_cuda_sys::driver::{CUipcMemHandle, CUipcMem_flags};

use crate::cuda::Cuda;

const SIZE: usize = 1 << 20;
const EXPORTED: &[u8; 8] = b"exported";
const OPENED: &[u8; 8] = b"opened!!";

fn outcome(cuda: &Cuda, what: &str, r: vgpu_cuda_sys::driver::CUresult) -> String {
    cuda.check(what, r).err().unwrap_or_else(|| "ok".into())
}

pub fn export() -> Result<(), String> {
    let cuda = Cuda::load()?;
    cuda.open_device()?;
    let mut dptr = 0u64;
    let mut handle = CUipcMemHandle::default();
    // SAFETY (this block): documented driver calls with out-pointers to locals and a source buffer of the size
    // given.
    unsafe {
        cuda.check("cuMemAlloc", cuda.cuMemAlloc_v2(&mut dptr, SIZE))?;
        cuda.check(
            "cuMemcpyHtoD",
            cuda.cuMemcpyHtoD_v2(dptr, EXPORTED.as_ptr().cast(), EXPORTED.len()),
        )?;
        cuda.check("cuIpcGetMemHandle", cuda.cuIpcGetMemHandle(&mut handle, dptr))?;
    }
    let hex: String = handle.reserved.iter().map(|&c| format!("{:02x}", c as u8)).collect();
    println!("handle {hex}");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    let mut back = [0u8; 8];
    // SAFETY: copies 8 bytes into a local of that size.
    unsafe {
        cuda.check(
            "cuMemcpyDtoH",
            cuda.cuMemcpyDtoH_v2(back.as_mut_ptr().cast(), dptr, back.len()),
        )?
    };
    println!("after {}", String::from_utf8_lossy(&back));
    Ok(())
}

pub fn open(hex: &str) -> Result<(), String> {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect::<Option<_>>()
        .filter(|b: &Vec<u8>| b.len() == 64)
        .ok_or("the handle must be 64 bytes in hex")?;
    let mut handle = CUipcMemHandle::default();
    for (r, b) in handle.reserved.iter_mut().zip(&bytes) {
        *r = *b as std::ffi::c_char;
    }
    let cuda = Cuda::load()?;
    cuda.open_device()?;
    let mut dptr = 0u64;
    let flags = CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS.0;
    // SAFETY: out-pointer to a local; the handle is passed by value.
    let r = unsafe { cuda.cuIpcOpenMemHandle_v2(&mut dptr, handle, flags) };
    println!("open {}", outcome(&cuda, "cuIpcOpenMemHandle", r));
    if cuda.check("", r).is_err() {
        return Ok(());
    }
    let mut seen = [0u8; 8];
    // SAFETY (this block): copies of 8 bytes between locals of that size and the opened memory.
    unsafe {
        cuda.check(
            "cuMemcpyDtoH",
            cuda.cuMemcpyDtoH_v2(seen.as_mut_ptr().cast(), dptr, seen.len()),
        )?;
        cuda.check(
            "cuMemcpyHtoD",
            cuda.cuMemcpyHtoD_v2(dptr, OPENED.as_ptr().cast(), OPENED.len()),
        )?;
    }
    println!("read {}", String::from_utf8_lossy(&seen));
    // SAFETY: an address cuIpcOpenMemHandle returned.
    let r = unsafe { cuda.cuIpcCloseMemHandle(dptr) };
    println!("close {}", outcome(&cuda, "cuIpcCloseMemHandle", r));
    Ok(())
}
