//! Unified addressing across servers: in a process using several servers, each of its devices gets an address
//! window the client chooses (device g: `[base + g * size, base + (g + 1) * size)`), held reserved in this
//! process (so no host memory lands there) and given to the device's server, which places the device's
//! `cuMemAlloc`/`cuMemAllocPitch`/`cuMemAllocManaged` memory inside it (`VaWindow`; the server side is
//! `cuda-exec`'s `session::window`). Device addresses are then unique across every GPU of the process, and an
//! address says its device. Memory the drivers place themselves (module globals, pool allocations, the app's
//! own VMM reservations) is recorded with its device and refused where it would clash (`api::record_range`).
//!
//! On by default only when the session spans several servers (one server's driver keeps its addresses unique
//! already, and `cuMemAlloc` stays the driver's own there); `VGPU_VA_WINDOWS=1` turns them on for one server,
//! `0` off. `VGPU_VA_BASE` (hex) and `VGPU_VA_WINDOW_GIB` move and size them.

use std::sync::OnceLock;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::CAP_MULTI_SERVER;
use vgpu_dataplane::wire::VaWindow;

use crate::client::{Route, Session};
use crate::log::{log, WARN};

/// Where windows start: 32 TiB, far below the shim's pinned-memory arena (`mirror`) and the drivers' own
/// regions near the top of the address space.
pub const DEFAULT_BASE: u64 = 0x2000_0000_0000;
/// One window per device: 1 TiB, more than any GPU's memory.
pub const DEFAULT_WINDOW_GIB: u64 = 1024;
/// Windows end below this (the pinned-memory arena starts there).
const LIMIT: u64 = 0x4000_0000_0000;

/// The windows, by CUDA ordinal (`None`: that device has none).
static WINDOWS: OnceLock<Vec<Option<(u64, u64)>>> = OnceLock::new();

/// Whether the session's devices get windows.
fn wanted(session: &Session) -> bool {
    match std::env::var("VGPU_VA_WINDOWS").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => session.multi_server(),
    }
}

/// Window base and size from the environment (defaults otherwise); `Err` explains a bad setting.
fn layout(devices: usize) -> Result<(u64, u64), String> {
    let base = match std::env::var("VGPU_VA_BASE") {
        Ok(v) => u64::from_str_radix(v.trim_start_matches("0x"), 16)
            .map_err(|_| format!("VGPU_VA_BASE={v}: not a hexadecimal address"))?,
        Err(_) => DEFAULT_BASE,
    };
    let gib = match std::env::var("VGPU_VA_WINDOW_GIB") {
        Ok(v) => v
            .parse::<u64>()
            .map_err(|_| format!("VGPU_VA_WINDOW_GIB={v}: not a number"))?,
        Err(_) => DEFAULT_WINDOW_GIB,
    };
    let size = gib
        .checked_mul(1 << 30)
        .filter(|&s| s > 0)
        .ok_or("VGPU_VA_WINDOW_GIB is 0 or too large")?;
    let fits = size
        .checked_mul(devices as u64)
        .and_then(|all| base.checked_add(all))
        .is_some_and(|end| end <= LIMIT && base.is_multiple_of(2 << 20));
    if !fits {
        return Err(format!(
            "windows of {gib} GiB from {base:#x} do not fit below {LIMIT:#x} (2 MiB-aligned)"
        ));
    }
    Ok((base, size))
}

/// Chooses, reserves here and hands out every device's window (at `cuInit`, after the device numbering).
/// Windows that cannot be had are said once in the log; that device's memory is then placed by its driver.
pub fn setup(session: &Session) -> CuResult<()> {
    let mut windows = vec![None; session.devices.len()];
    if wanted(session) && !session.devices.is_empty() {
        match layout(session.devices.len()) {
            Ok((base, size)) => {
                for (g, slot) in windows.iter_mut().enumerate() {
                    *slot = claim(session, g, base + g as u64 * size, size);
                }
            }
            Err(why) => log!(WARN, "no address windows: {why}"),
        }
    }
    let _ = WINDOWS.set(windows);
    Ok(())
}

/// Reserves device `g`'s window here and gives it to its server; the window if both worked.
fn claim(session: &Session, g: usize, base: u64, size: u64) -> Option<(u64, u64)> {
    let place = session.placement[g];
    let server = &session.servers[place.server];
    if server.capabilities & CAP_MULTI_SERVER == 0 {
        log!(
            WARN,
            "{} takes no address windows; device {g}'s addresses are its driver's",
            server.endpoint
        );
        return None;
    }
    if !crate::ffi::reserve_range(base as usize, size as usize, false) {
        log!(
            WARN,
            "device {g}: its address window at {base:#x} (+{size:#x}) is taken in this process; its addresses are \
             its driver's"
        );
        return None;
    }
    let call = VaWindow {
        device: g as u32,
        _pad: 0,
        base,
        size,
    };
    match crate::client::call_on_primary(server, &call) {
        Ok(_) => Some((base, size)),
        Err(e) => {
            log!(
                WARN,
                "device {g}: its server refused the address window ({e}); its addresses are its driver's"
            );
            crate::ffi::release_range(base as usize, size as usize);
            None
        }
    }
}

/// Whether [addr, addr+len) lies inside one of this process's windows (reserved here, unused but for the
/// managed memory mapped into them).
pub fn reserved_here(addr: usize, len: usize) -> bool {
    let (addr, end) = (addr as u64, addr as u64 + len as u64);
    WINDOWS
        .get()
        .is_some_and(|w| w.iter().flatten().any(|&(b, s)| addr >= b && end <= b + s))
}

/// Device `dev`'s window, if it has one.
pub fn window(dev: i32) -> Option<(u64, u64)> {
    WINDOWS.get()?.get(usize::try_from(dev).ok()?).copied().flatten()
}

/// After an allocation the server placed: says once per device when a window exists but the server put the
/// memory elsewhere (its driver refused the fixed address), since addresses can then clash across servers.
pub fn check_placed(dev: i32, dptr: u64) {
    static SAID: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
    let Some((base, size)) = window(dev) else { return };
    if dptr >= base && dptr < base + size {
        return;
    }
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if *said & (1 << (dev as u64 % 64)) == 0 {
        *said |= 1 << (dev as u64 % 64);
        log!(
            WARN,
            "device {dev}: its server placed memory at {dptr:#x}, outside the device's address window; its driver \
             refused the window (see the server's log)"
        );
    }
}

/// Where a call about window memory goes, by the window holding `addr` (memory the client has not recorded yet,
/// or no longer: the device is known all the same).
pub fn route_of(addr: u64) -> Option<Route> {
    let w = WINDOWS.get()?;
    w.iter()
        .position(|x| x.is_some_and(|(b, s)| addr >= b && addr < b + s))
        .map(|g| Route::Device(g as i32))
}
