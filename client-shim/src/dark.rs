//! The driver's private export tables (`cuGetExportTable`): arrays of function pointers that NVIDIA's runtime,
//! cuBLAS and PyTorch fetch by UUID. They hold in-process callbacks, so they are implemented here, in the client.
//!
//! Layout: most tables start with their size in bytes, then one function pointer per slot. Slots whose meaning
//! is known (from public projects' tracing, see shared/reference/cuda-interposition.md) are implemented; every
//! other slot is a distinct logging stub from a pool, so a call through it says which table and slot it hit and
//! no slot is ever NULL. This module is the only place that turns integers into callable function pointers.
//!
//! The tables, their layouts and the slots' signatures are NVIDIA-private: no header declares them, so they are
//! written here by hand (the only NVIDIA signatures the shim types itself), with cuda.h's types where a slot's
//! argument is one (`CUmodule`, `CUcontext`).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use hmac::{KeyInit, Mac};
use vgpu_cuda_sys::driver::{CUcontext, CUmodule};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::ContextId;

use crate::log::{log, DEBUG, INFO, WARN};
use crate::{client, ffi, state};

pub type Uuid = [u8; 16];

/// What an unimplemented slot returns: 0 in tables whose other slots are known (their unknown slots are
/// tool hooks whose callers accept "nothing to do"), `CUDA_ERROR_NOT_SUPPORTED` in tables vGPU knows nothing of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StubAnswer {
    Zero,
    NotSupported,
}

/// A pool stub's signature: six integer arguments cover every slot seen; extra ones are ignored, as the
/// x86-64 and AArch64 calling conventions let a callee do.
// own ABI: NVIDIA-private export-table slots, declared by no header.
pub type SlotStub = extern "C" fn(usize, usize, usize, usize, usize, usize) -> CUresult;

extern "C" fn slot_stub<const K: usize>(a0: usize, a1: usize, a2: usize, a3: usize, a4: usize, a5: usize) -> CUresult {
    stub_called(K, [a0, a1, a2, a3, a4, a5])
}

include!(concat!(env!("OUT_DIR"), "/stub_pool.rs"));

/// Which table slot each handed-out pool stub fills.
struct StubOwner {
    table: String,
    slot: usize,
    answer: StubAnswer,
    reported: bool,
}

static NEXT_STUB: AtomicUsize = AtomicUsize::new(0);

fn owners() -> MutexGuard<'static, HashMap<usize, StubOwner>> {
    static OWNERS: OnceLock<Mutex<HashMap<usize, StubOwner>>> = OnceLock::new();
    OWNERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn stub_called(k: usize, args: [usize; 6]) -> CUresult {
    let mut owners = owners();
    let Some(o) = owners.get_mut(&k) else {
        return CUDA_ERROR_NOT_SUPPORTED;
    };
    // A tool-hook slot answered "nothing to do" is expected traffic (every PyTorch process calls TOOLS_TLS[2]):
    // `info`, not a warning. A slot answered NOT_SUPPORTED may change what the caller does: a warning, once.
    let first = match o.answer {
        StubAnswer::Zero => INFO,
        StubAnswer::NotSupported => WARN,
    };
    let level = if o.reported { DEBUG } else { first };
    o.reported = true;
    log!(
        level,
        "private export table {}[{}] called (args {:#x?}); vGPU does not implement it and returns {}",
        o.table,
        o.slot,
        args,
        if o.answer == StubAnswer::Zero {
            "0"
        } else {
            "CUDA_ERROR_NOT_SUPPORTED"
        }
    );
    match o.answer {
        StubAnswer::Zero => CUDA_SUCCESS,
        StubAnswer::NotSupported => CUDA_ERROR_NOT_SUPPORTED,
    }
}

/// A pool stub for `table[slot]`; when the pool is exhausted, one shared stub answers NOT_SUPPORTED.
fn stub_for(table: &str, slot: usize, answer: StubAnswer) -> usize {
    let k = NEXT_STUB.fetch_add(1, Ordering::Relaxed);
    match STUB_POOL.get(k) {
        Some(f) => {
            owners().insert(
                k,
                StubOwner {
                    table: table.to_string(),
                    slot,
                    answer,
                    reported: false,
                },
            );
            *f as usize
        }
        None => STUB_POOL[STUB_POOL.len() - 1] as usize,
    }
}

/// An implemented slot: its index and the address of its function.
type KnownSlot = (usize, fn() -> usize);

/// How a table is laid out and which of its slots vGPU implements.
struct Layout {
    name: &'static str,
    /// Word 0 holds the table's size in bytes (all but the context-local-storage table).
    size_word: bool,
    /// Slots including the size word.
    slots: usize,
    answer: StubAnswer,
    known: &'static [KnownSlot],
}

const CUDART_INTERFACE: Uuid = uuid(0x6bd5fb6c_5bf4e74a_8987d939_12fd9df9);
const TOOLS_RUNTIME_CALLBACK_HOOKS: Uuid = uuid(0xa094798c_2e742e74_93f20800_200c0a66);
const TOOLS_TLS: Uuid = uuid(0x42d85a81_23f6cb47_8298f6e7_8a3aecdc);
const CONTEXT_LOCAL_STORAGE: Uuid = uuid(0xc693336e_1121df11_a8c368f3_55d89593);
const CONTEXT_CHECKS: Uuid = uuid(0x263e8860_7cd26143_92f6bbd5_006dfa7e);
const INTEGRITY_CHECK: Uuid = uuid(0xd4082055_bde6704b_8d34ba12_3c66e1f2);
/// Requested first by cudart 13: [1] is where the runtime reports each API error it returns, as
/// (component "CUDA", 0, printf format, va_list), feeding the driver's error log (`cuLogs*`).
const CUDART_ERROR_LOG: Uuid = uuid(0xf8cff951_21468b4e_b9e2fb46_9e7c0dd9);
/// Requested in PyTorch processes through a directly `dlsym`'d `cuGetExportTable` (library unidentified).
const TORCH_69A2: Uuid = uuid(0x69a28e9f_24498b47_b030c5da_330ea4e9);
/// Requested by cuFFT: per-function and per-module queries (tools' names: "CU_ETID_ToolsModule").
const TOOLS_MODULE: Uuid = uuid(0x6e163fbe_b958444d_835ce182_aff1991e);
/// Requested by cuBLASLt.
const CUBLASLT_2131: Uuid = uuid(0x21318c60_97143248_8ca641ff_7324c8f2);

/// A UUID as the bytes the caller passes, from its conventional hex spelling.
const fn uuid(v: u128) -> Uuid {
    v.to_be_bytes()
}

fn layout(id: &Uuid) -> Option<Layout> {
    // Sizes are the real driver 580's (first word of each table, tools/traces/static-cudart-lookups.txt).
    let l = match *id {
        CUDART_INTERFACE => Layout {
            name: "CUDART_INTERFACE",
            size_word: true,
            slots: 13,
            answer: StubAnswer::NotSupported,
            known: &[
                (1, || get_module_from_cubin as *const () as usize),
                (2, || primary_ctx_get as *const () as usize),
                (6, || get_module_from_cubin_ext1 as *const () as usize),
                (7, || cudart_interface_noop as *const () as usize),
                (8, || get_module_from_cubin_ext2 as *const () as usize),
                (12, || load_compilers as *const () as usize),
            ],
        },
        TOOLS_RUNTIME_CALLBACK_HOOKS => Layout {
            name: "TOOLS_RUNTIME_CALLBACK_HOOKS",
            size_word: true,
            slots: 7,
            answer: StubAnswer::Zero,
            known: &[
                (2, || tools_buffer1 as *const () as usize),
                (6, || tools_buffer2 as *const () as usize),
            ],
        },
        TOOLS_TLS => Layout {
            name: "TOOLS_TLS",
            size_word: true,
            slots: 3,
            answer: StubAnswer::Zero,
            known: &[],
        },
        CONTEXT_LOCAL_STORAGE => Layout {
            name: "CONTEXT_LOCAL_STORAGE_V0301",
            size_word: false,
            slots: 4,
            answer: StubAnswer::NotSupported,
            known: &[
                (0, || cls_put as *const () as usize),
                (1, || cls_delete as *const () as usize),
                (2, || cls_get as *const () as usize),
            ],
        },
        CONTEXT_CHECKS => Layout {
            name: "CONTEXT_CHECKS",
            size_word: true,
            slots: 15,
            answer: StubAnswer::Zero,
            known: &[
                (2, || context_check as *const () as usize),
                (3, || context_check_fn3 as *const () as usize),
            ],
        },
        INTEGRITY_CHECK => Layout {
            name: "INTEGRITY_CHECK",
            size_word: true,
            slots: 3,
            answer: StubAnswer::NotSupported,
            known: &[(1, || integrity_check as *const () as usize)],
        },
        CUDART_ERROR_LOG => Layout {
            name: "f8cff951 (runtime error log)",
            size_word: true,
            slots: 3,
            answer: StubAnswer::Zero,
            known: &[(1, || runtime_error_log as *const () as usize)],
        },
        TORCH_69A2 => Layout {
            name: "69a28e9f",
            size_word: true,
            slots: 34,
            answer: StubAnswer::NotSupported,
            known: &[],
        },
        TOOLS_MODULE => Layout {
            name: "6e163fbe (tools module)",
            size_word: true,
            slots: 99,
            answer: StubAnswer::NotSupported,
            known: &[(7, || module_walk_functions as *const () as usize)],
        },
        CUBLASLT_2131 => Layout {
            name: "21318c60",
            size_word: true,
            slots: 93,
            answer: StubAnswer::NotSupported,
            known: &[
                (4, || cublaslt_2131_slot4 as *const () as usize),
                (39, || cublaslt_2131_slot39 as *const () as usize),
                (51, || cublaslt_2131_slot51 as *const () as usize),
            ],
        },
        _ => return None,
    };
    Some(l)
}

/// Tables handed out so far: UUID → address of word 0. Each is built once and lives for the process.
fn tables() -> MutexGuard<'static, HashMap<Uuid, usize>> {
    static TABLES: OnceLock<Mutex<HashMap<Uuid, usize>>> = OnceLock::new();
    TABLES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn build(l: &Layout) -> usize {
    let mut words: Vec<usize> = (0..l.slots)
        .map(|slot| match (slot, l.size_word) {
            (0, true) => l.slots * std::mem::size_of::<usize>(),
            _ => stub_for(l.name, slot, l.answer),
        })
        .collect();
    for &(slot, f) in l.known {
        words[slot] = f();
    }
    Box::leak(words.into_boxed_slice()).as_ptr() as usize
}

fn hex(id: &Uuid) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Slots given to a table vGPU knows nothing of, when the server cannot say its size either.
const UNKNOWN_TABLE_SLOTS: usize = 64;

/// The table for `id`. Unknown UUIDs are sized by asking the server's driver (`size`), and otherwise get
/// `UNKNOWN_TABLE_SLOTS` stubs; `size` returns `Err` when the server's driver has no such table.
pub fn get(id: &Uuid, size: impl FnOnce(&Uuid) -> CuResult<Option<u64>>) -> CuResult<usize> {
    if let Some(&t) = tables().get(id) {
        return Ok(t);
    }
    let table = match layout(id) {
        Some(l) => build(&l),
        None => {
            let name = hex(id);
            let (size_word, slots) = match size(id)? {
                Some(bytes) => (true, (bytes as usize / std::mem::size_of::<usize>()).max(1)),
                None => (false, UNKNOWN_TABLE_SLOTS),
            };
            log!(
                WARN,
                "private export table {name} is unknown to vGPU: {slots} logging stubs stand in for it"
            );
            let l = Layout {
                name: Box::leak(name.into_boxed_str()),
                size_word,
                slots,
                answer: StubAnswer::NotSupported,
                known: &[],
            };
            build(&l)
        }
    };
    // Another thread may have built the same table meanwhile: the first one stays, so the address is stable.
    Ok(*tables().entry(*id).or_insert(table))
}

// ---- CUDART_INTERFACE ----------------------------------------------------------------------------------

/// [1]: loads the module of a fat-binary wrapper (`__fatBinC_Wrapper_t`), as cudart before 12 did for every
/// kernel and some libraries still do.
extern "C" fn get_module_from_cubin(module: *mut CUmodule, wrapper: *const c_void) -> CUresult {
    crate::log::trace_call!("CUDART_INTERFACE[1] get_module_from_cubin");
    crate::api::code(crate::api::load_module_image(module, wrapper))
}

/// [6]: as [1], with three more arguments that are NULL/0 in every call seen.
extern "C" fn get_module_from_cubin_ext1(
    module: *mut CUmodule,
    wrapper: *const c_void,
    a3: *mut c_void,
    a4: *mut c_void,
    a5: u32,
) -> CUresult {
    crate::log::trace_call!("CUDART_INTERFACE[6] get_module_from_cubin_ext1");
    if !a3.is_null() || !a4.is_null() || a5 != 0 {
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    crate::api::code(crate::api::load_module_image(module, wrapper))
}

/// [8]: as [6], with the fat binary itself (not its wrapper) first.
extern "C" fn get_module_from_cubin_ext2(
    fatbin: *const c_void,
    module: *mut CUmodule,
    a3: *mut c_void,
    a4: *mut c_void,
    a5: u32,
) -> CUresult {
    crate::log::trace_call!("CUDART_INTERFACE[8] get_module_from_cubin_ext2");
    if !a3.is_null() || !a4.is_null() || a5 != 0 {
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    crate::api::code(crate::api::load_module_image(module, fatbin))
}

/// [2]: the device's primary context, without retaining or activating it.
extern "C" fn primary_ctx_get(out: *mut CUcontext, dev: i32) -> CUresult {
    crate::log::trace_call!("CUDART_INTERFACE[2] primary context");
    crate::api::code((|| {
        let s = client::session()?;
        if dev < 0 || dev as usize >= s.devices.len() {
            return Err(CUDA_ERROR_INVALID_DEVICE);
        }
        let ctx = state::primary_ctx_id(dev);
        state::write().contexts.insert(
            ctx,
            state::ContextInfo {
                device: dev,
                primary: true,
            },
        );
        ffi::write(out, ctx.get() as CUcontext)
    })())
}

/// [7]: does nothing observable.
extern "C" fn cudart_interface_noop(_a: usize) {}

/// [12]: loads the PTX compiler and friends natively; the server's driver has its own.
extern "C" fn load_compilers() -> CUresult {
    CUDA_SUCCESS
}

// ---- f8cff951: the runtime's error log ------------------------------------------------------------------

/// [1]: a message for the driver's error log. vGPU keeps no such log; the message shows at `debug`.
extern "C" fn runtime_error_log(
    component: *const std::ffi::c_char,
    _level: usize,
    format: *const std::ffi::c_char,
) -> CUresult {
    if crate::log::level() >= DEBUG {
        let text = |p| {
            ffi::cstr(p)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        log!(DEBUG, "runtime error log [{}]: {}", text(component), text(format));
    }
    CUDA_SUCCESS
}

// ---- TOOLS_RUNTIME_CALLBACK_HOOKS ------------------------------------------------------------------------

/// Zeroed buffers the tools hooks hand out: (address, element count). The callers only read them; they are
/// sized beyond the counts reported so that neither a byte nor a word reading of the count overruns.
fn tools_buffer(words: usize) -> usize {
    static BUFFERS: OnceLock<Mutex<HashMap<usize, usize>>> = OnceLock::new();
    let mut b = BUFFERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    *b.entry(words)
        .or_insert_with(|| Box::leak(vec![0u64; words].into_boxed_slice()).as_ptr() as usize)
}

extern "C" fn tools_buffer1(ptr: *mut usize, size: *mut usize) {
    let _ = ffi::write(ptr, tools_buffer(1024));
    let _ = ffi::write(size, 1024);
}

extern "C" fn tools_buffer2(ptr: *mut usize, size: *mut usize) {
    let _ = ffi::write(ptr, tools_buffer(14));
    let _ = ffi::write(size, 14);
}

// ---- CONTEXT_LOCAL_STORAGE -------------------------------------------------------------------------------

/// (context, key) → (value, destructor). A NULL context means the calling thread's current one.
type ClsMap = HashMap<(ContextId, usize), (usize, usize)>;

fn cls() -> MutexGuard<'static, ClsMap> {
    static CLS: OnceLock<Mutex<ClsMap>> = OnceLock::new();
    CLS.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn cls_ctx(ctx: *mut c_void) -> CuResult<ContextId> {
    match ctx as u64 {
        0 => match state::current_ctx() {
            state::NO_CONTEXT => Err(CUDA_ERROR_INVALID_CONTEXT),
            c => Ok(c),
        },
        c => Ok(ContextId(c)),
    }
}

extern "C" fn cls_put(ctx: *mut c_void, key: usize, value: usize, dtor: usize) -> CUresult {
    crate::api::code(cls_ctx(ctx).map(|c| {
        cls().insert((c, key), (value, dtor));
    }))
}

extern "C" fn cls_delete(ctx: *mut c_void, key: usize) -> CUresult {
    crate::api::code(cls_ctx(ctx).map(|c| {
        cls().remove(&(c, key));
    }))
}

extern "C" fn cls_get(value: *mut usize, ctx: *mut c_void, key: usize) -> CUresult {
    crate::api::code((|| {
        let c = cls_ctx(ctx)?;
        let v = cls().get(&(c, key)).map(|e| e.0).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        ffi::write(value, v)
    })())
}

/// Runs and forgets the destructors registered for `ctx` (due when a primary context is reset).
pub fn context_reset(ctx: ContextId) {
    let due: Vec<((ContextId, usize), (usize, usize))> = {
        let mut map = cls();
        let keys: Vec<_> = map.keys().filter(|k| k.0 == ctx).copied().collect();
        keys.into_iter()
            .filter_map(|k| map.remove(&k).map(|v| (k, v)))
            .collect()
    };
    for ((ctx, key), (value, dtor)) in due {
        if dtor != 0 {
            // own ABI: the runtime's context-local-storage destructor, a private-table contract.
            type Dtor = extern "C" fn(*mut c_void, usize, usize);
            // SAFETY: `dtor` is the non-NULL destructor the runtime registered through cls_put with this
            // signature (context, key, value); it was an `extern "C"` function pointer before it was stored.
            let f: Dtor = unsafe { std::mem::transmute::<usize, Dtor>(dtor) };
            f(ctx.get() as *mut c_void, key, value);
        }
    }
}

// ---- CONTEXT_CHECKS --------------------------------------------------------------------------------------

/// [2]: reports that the context needs no special handling (0), as every traced call saw.
extern "C" fn context_check(_ctx: *mut c_void, result: *mut u32, _out: *mut *const c_void) -> CUresult {
    crate::api::code(ffi::write(result, 0))
}

extern "C" fn context_check_fn3() -> CUresult {
    CUDA_SUCCESS
}

// ---- INTEGRITY_CHECK -------------------------------------------------------------------------------------

/// The key of the runtime's integrity check (the driver derives it from constants alone).
const INTEGRITY_KEY: [u8; 16] = [
    0x14, 0x6A, 0xDD, 0xAE, 0x53, 0xA9, 0xA7, 0x52, 0xAA, 0x08, 0x41, 0x36, 0x0B, 0xF5, 0x5A, 0x9F,
];

/// One device as the integrity check hashes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub uuid: [u8; 16],
    pub pci_domain: i32,
    pub pci_bus: i32,
    pub pci_device: i32,
}

/// What the runtime's integrity check is computed over.
#[derive(Clone, Debug)]
pub struct IntegrityInput {
    pub version: u32,
    pub unix_seconds: u64,
    pub driver_version: u32,
    pub pid: u32,
    pub tid: u32,
    pub cudart_table: usize,
    pub integrity_table: usize,
    pub function: usize,
    pub devices: Vec<DeviceIdentity>,
}

/// The runtime's integrity check: HMAC-MD2 (RFC 2104 over RFC 1319) keyed with `INTEGRITY_KEY`, over the
/// driver version, the runtime's version, process and thread ids, the addresses of the two tables and of
/// the check function, the time, then every device's UUID and PCI domain/bus/device — the state the driver
/// keeps, here as the shim reports it. Runtime versions ending in 0 or 1 get fixed answers.
pub fn integrity_hash(input: &IntegrityInput) -> [u64; 2] {
    match input.version % 10 {
        0 => return [0x3341181C03CB675C, 0x8ED383AA1F4CD1E8],
        1 => return [0x1841181C03CB675C, 0x8ED383AA1F4CD1E8],
        _ => {}
    }
    let Ok(mut mac) = <hmac::SimpleHmac<md2::Md2> as KeyInit>::new_from_slice(&INTEGRITY_KEY) else {
        return [0, 0];
    };
    // The driver hashes its in-memory structs: native byte order, pointers as 64-bit words.
    mac.update(&input.driver_version.to_ne_bytes());
    mac.update(&input.version.to_ne_bytes());
    mac.update(&input.pid.to_ne_bytes());
    mac.update(&input.tid.to_ne_bytes());
    mac.update(&(input.cudart_table as u64).to_ne_bytes());
    mac.update(&(input.integrity_table as u64).to_ne_bytes());
    mac.update(&(input.function as u64).to_ne_bytes());
    mac.update(&input.unix_seconds.to_ne_bytes());
    for d in &input.devices {
        mac.update(&d.uuid);
        mac.update(&d.pci_domain.to_ne_bytes());
        mac.update(&d.pci_bus.to_ne_bytes());
        mac.update(&d.pci_device.to_ne_bytes());
    }
    let out = mac.finalize().into_bytes();
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&out[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    [word(0), word(8)]
}

/// The devices as this shim reports them (`cuDeviceGetUuid`, `cuDeviceGetAttribute` PCI ids).
fn reported_devices() -> Vec<DeviceIdentity> {
    client::session()
        .map(|s| {
            s.devices
                .iter()
                .map(|d| {
                    let (pci_domain, pci_bus, pci_device) = crate::api::pci_location(d);
                    DeviceIdentity {
                        uuid: d.uuid,
                        pci_domain,
                        pci_bus,
                        pci_device,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

extern "C" fn integrity_check(version: u32, unix_seconds: u64, result: *mut [u64; 2]) -> CUresult {
    crate::log::trace_call!("INTEGRITY_CHECK[1]");
    log!(DEBUG, "integrity check for runtime version {version} at {unix_seconds}");
    let table = |id: &Uuid| get(id, |_| Ok(None)).unwrap_or(0);
    let input = IntegrityInput {
        version,
        unix_seconds,
        driver_version: crate::api::reported_driver_version() as u32,
        pid: std::process::id(),
        tid: ffi::pthread_self_id() as u32,
        cudart_table: table(&CUDART_INTERFACE),
        integrity_table: table(&INTEGRITY_CHECK),
        function: integrity_check as *const () as usize,
        devices: reported_devices(),
    };
    crate::api::code(ffi::write(result, integrity_hash(&input)))
}

// ---- 6e163fbe (tools module) --------------------------------------------------------------------------------
// Observed on driver 580 (H200, bench/results/2026-12-01-h200-cufft/trace/): cuFFT walks the kernels of each module
// it loads through slot 7 instead of looking them up one by one.

/// What slot 7 calls for each function: (the caller's data, the function's handle, its name); the result is
/// ignored by the driver.
// own ABI: slot 7's visitor, a private-table contract no header declares.
type FunctionVisitor = extern "C" fn(usize, usize, *const std::ffi::c_char);

/// [7](ctx, module, visit, data): calls `visit(data, function, name)` for every function of `module` (the
/// handles `cuModuleGetFunction` gives) and returns how many there were. The driver crashes on a NULL module
/// or context; here an unknown module visits nothing.
extern "C" fn module_walk_functions(_ctx: usize, module: usize, visit: Option<FunctionVisitor>, data: usize) -> usize {
    crate::log::trace_call!("6e163fbe[7] module_walk_functions");
    let Ok(functions) = crate::api::module_functions(module as CUmodule) else {
        return 0;
    };
    if let Some(visit) = visit {
        for &(function, name) in &functions {
            visit(data, function as usize, name);
        }
    }
    functions.len()
}

// ---- cuBLASLt's 21318c60 -----------------------------------------------------------------------------------
// Behaviour of the three slots cuBLASLt 13 calls during cublasLtCreate, as observed by the lupine project
// (its `lupine_private_export_slot_called`).

/// [4](flag, out): writes whether `flag` is non-zero.
extern "C" fn cublaslt_2131_slot4(flag: usize, out: *mut u64) -> CUresult {
    if out.is_null() {
        return CUDA_ERROR_UNKNOWN;
    }
    crate::api::code(ffi::write(out, (flag != 0) as u64))
}

/// [39](_, handle, out): writes 0.
extern "C" fn cublaslt_2131_slot39(_a0: usize, handle: usize, out: *mut u64) -> CUresult {
    if handle == 0 || out.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    crate::api::code(ffi::write(out, 0))
}

/// [51](_, key, out): hands out an opaque zeroed object; key !0 means "none" (CUDA_ERROR_INVALID_HANDLE).
extern "C" fn cublaslt_2131_slot51(_a0: usize, key: usize, out: *mut usize) -> CUresult {
    if out.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if key == usize::MAX {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    static OBJECT: OnceLock<usize> = OnceLock::new();
    let object = *OBJECT.get_or_init(|| Box::leak(vec![0u64; 64].into_boxed_slice()).as_ptr() as usize);
    crate::api::code(ffi::write(out, object))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(table: usize, slot: usize) -> usize {
        // Tables are leaked boxed slices of usize; reading a slot inside the layout's length is in bounds.
        let words = layout_len(table);
        assert!(slot < words);
        ffi::read((table + slot * 8) as *const usize).unwrap_or(0)
    }

    fn layout_len(table: usize) -> usize {
        tables()
            .iter()
            .find(|(_, &t)| t == table)
            .and_then(|(id, _)| layout(id))
            .map(|l| l.slots)
            .unwrap_or(0)
    }

    #[test]
    fn known_tables_have_the_real_sizes_and_no_null_slot() {
        for (id, bytes) in [
            (CUDART_ERROR_LOG, 24),
            (CUDART_INTERFACE, 104),
            (TOOLS_RUNTIME_CALLBACK_HOOKS, 56),
            (TOOLS_TLS, 24),
            (CONTEXT_CHECKS, 120),
            (INTEGRITY_CHECK, 24),
            (TORCH_69A2, 272),
            (CUBLASLT_2131, 744),
            (TOOLS_MODULE, 792),
        ] {
            let t = get(&id, |_| panic!("known table sized by the server")).expect("known table");
            assert_eq!(read(t, 0), bytes, "{}", hex(&id));
            for slot in 1..bytes / 8 {
                assert_ne!(read(t, slot), 0, "{}[{slot}] is NULL", hex(&id));
            }
            assert_eq!(get(&id, |_| Ok(None)), Ok(t), "address not stable");
        }
        let cls = get(&CONTEXT_LOCAL_STORAGE, |_| Ok(None)).expect("cls");
        assert_eq!(read(cls, 0), cls_put as *const () as usize);
    }

    #[test]
    fn unknown_tables_are_sized_by_the_server_or_refused() {
        let id = uuid(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(
            get(&id, |_| Err(CUDA_ERROR_INVALID_VALUE)),
            Err(CUDA_ERROR_INVALID_VALUE)
        );
        let t = get(&id, |_| Ok(Some(40))).expect("sized");
        let words = ffi::bytes(t as *const u8, 40).expect("readable");
        assert_eq!(&words[..8], &40u64.to_ne_bytes());
        assert!(words[8..].chunks(8).all(|w| w != [0u8; 8]));
        let stub = ffi::read((t + 8) as *const usize).expect("slot 1");
        assert!(STUB_POOL.iter().any(|f| *f as usize == stub));
    }

    #[test]
    fn integrity_hash_matches_the_drivers_construction() {
        let base = IntegrityInput {
            version: 13002,
            unix_seconds: 0x682b_9cee,
            driver_version: 13000,
            pid: 0x002f_a423,
            tid: 0xf79c_1000,
            cudart_table: 0x7fff_f695_8240,
            integrity_table: 0x7fff_f695_8220,
            function: 0x7fff_f2aa_f4a0,
            devices: vec![DeviceIdentity {
                uuid: [7; 16],
                pci_domain: 0,
                pci_bus: 2,
                pci_device: 0,
            }],
        };
        // Fixed answers for versions ending in 0 and 1.
        let fixed = IntegrityInput {
            version: 13000,
            ..base.clone()
        };
        assert_eq!(integrity_hash(&fixed), [0x3341181C03CB675C, 0x8ED383AA1F4CD1E8]);
        // Otherwise every input matters.
        let h = integrity_hash(&base);
        for changed in [
            IntegrityInput { pid: 1, ..base.clone() },
            IntegrityInput {
                unix_seconds: 1,
                ..base.clone()
            },
            IntegrityInput {
                devices: vec![],
                ..base.clone()
            },
            IntegrityInput {
                function: 1,
                ..base.clone()
            },
        ] {
            assert_ne!(integrity_hash(&changed), h);
        }
        // Pinned against an independent byte-at-a-time model of the driver's hash state machine (66-byte MD2
        // state: 48 bytes of X, 16 of checksum, position and last checksum byte; key xor 0x36, message,
        // finalise; then key xor 0x5c and the inner digest), written from the public descriptions.
        assert_eq!(h, [0xd2b1753066695f44, 0x72ac1f385c1585fb]);
        // MD2 itself (RFC 1319 test suite).
        use md2::Digest;
        assert_eq!(
            md2::Md2::digest(b"abc").to_vec(),
            hexbytes("da853b0d3f88d99b30283a69e6ded6bb")
        );
    }

    fn hexbytes(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
            .collect()
    }
}
