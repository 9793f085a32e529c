//! GPUDirect RDMA on the server: whether a process lets its RDMA channels reach device memory directly, and the
//! exporter it hands the transports (`pinned::set_device_exporter`). `VGPU_GPUDIRECT`: `auto` (default), `on`, `off`.
//!
//! `auto` uses it where the real backend can export device memory as dma-bufs; the emulated backend takes part only
//! with `on`, exporting its memory as shared-memory files, which tests the whole path where no GPU and NIC exist.
//! A range the NIC refuses to register (no peer-memory support, alignment) is copied through pinned staging.

use std::sync::Arc;

use vgpu_dataplane::handshake::BACKEND_REAL;
use vgpu_dataplane::pinned;

use crate::backend::Backend;

/// What `VGPU_GPUDIRECT` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    Auto,
    On,
    Off,
}

impl Setting {
    /// Parses the setting's text (unset: `auto`).
    pub fn parse(text: Option<&str>) -> Result<Setting, String> {
        match text.map(str::trim) {
            None | Some("") | Some("auto") => Ok(Setting::Auto),
            Some("on") => Ok(Setting::On),
            Some("off") => Ok(Setting::Off),
            Some(other) => Err(format!("VGPU_GPUDIRECT={other}: expected auto, on or off")),
        }
    }

    /// The process's setting, from the environment.
    pub fn from_env() -> Result<Setting, String> {
        Setting::parse(std::env::var("VGPU_GPUDIRECT").ok().as_deref())
    }
}

/// Whether `backend`'s device memory is moved directly under `setting`, given whether this host has an active RDMA
/// port (`ports`), and the line the server reports.
pub fn decide(backend: &dyn Backend, setting: Setting, ports: Result<(), String>) -> (bool, String) {
    let staged = "host-device bytes of rdma:// channels go through pinned staging";
    let host = vgpu_transports::rdma::peer_memory();
    if setting == Setting::Off {
        return (
            false,
            format!("GPUDirect RDMA: off (VGPU_GPUDIRECT=off; {host}): {staged}"),
        );
    }
    if let Err(why) = ports {
        // Nothing could reach device memory: the process changes nothing (its VMM memory keeps its usual flags).
        return (false, format!("GPUDirect RDMA: not used ({why})"));
    }
    match backend.device_memory_export() {
        Err(why) => (
            false,
            format!("GPUDirect RDMA: not available ({why}; {host}): {staged}"),
        ),
        Ok(how) if setting == Setting::Auto && backend.kind() != BACKEND_REAL => (
            false,
            format!(
                "GPUDirect RDMA: not used on the emulated backend (VGPU_GPUDIRECT=on tests its path: {how}): {staged}"
            ),
        ),
        Ok(how) => (
            true,
            format!(
                "GPUDirect RDMA: on ({how}; {host}): synchronous copies between rdma:// clients and cuMemAlloc \
                 memory (uploads of 1 MiB or more, downloads larger than the ring) skip host memory where the RDMA \
                 device registers it"
            ),
        ),
    }
}

/// Decides for this process and, when on, lets its transports export `backend`'s listed device memory.
/// Returns the report line.
pub fn enable(backend: &Arc<dyn Backend>, setting: Setting, ports: Result<(), String>) -> String {
    let (on, line) = decide(&**backend, setting, ports);
    if on {
        let b = backend.clone();
        pinned::set_device_exporter(Box::new(move |addr, len| {
            b.export_device_memory(addr as u64, len)
                .map_err(|e| format!("cannot export {len} bytes of device memory at {addr:#x}: {e}"))
        }));
    }
    line
}

/// Whether this host has an active RDMA port.
pub fn host_ports() -> Result<(), String> {
    vgpu_transports::rdma::available().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulated::EmulatedBackend;

    #[test]
    fn the_setting_is_parsed_and_the_emulated_backend_joins_only_when_asked() {
        assert_eq!(Setting::parse(None), Ok(Setting::Auto));
        assert_eq!(Setting::parse(Some(" on ")), Ok(Setting::On));
        assert_eq!(Setting::parse(Some("off")), Ok(Setting::Off));
        let e = Setting::parse(Some("yes")).expect_err("refused");
        assert!(e.contains("VGPU_GPUDIRECT=yes"), "{e}");
        let b = EmulatedBackend::new();
        let (auto, line) = decide(&b, Setting::Auto, Ok(()));
        assert!(!auto && line.contains("not used on the emulated backend"), "{line}");
        let (on, line) = decide(&b, Setting::On, Ok(()));
        assert!(on && line.starts_with("GPUDirect RDMA: on"), "{line}");
        let (off, line) = decide(&b, Setting::Off, Ok(()));
        assert!(!off && line.contains("off"), "{line}");
        let (no_port, line) = decide(&b, Setting::On, Err("no RDMA devices".into()));
        assert!(!no_port && line.contains("no RDMA devices"), "{line}");
    }
}
