//! The emulated backend's pinned host buffers (`cuMemHostAlloc`): each tied to the context current when it was made,
//! freed with that context's reset as the driver frees them, and freed with the backend as the process's exit would.
//!
//! Without the reset, a session that forgot its buffers after a primary-context reset (as it must: natively they
//! are gone) left them allocated here for the life of the process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::EmulatedBackend;
use crate::backend::HostBuffer;

/// The backend's pinned-buffer readings, for tests and the fuzz targets.
impl EmulatedBackend {
    /// The most host buffer bytes alive at once so far (staging, queued copies, pools).
    pub fn host_peak(&self) -> u64 {
        self.host.peak()
    }

    /// Host buffer bytes alive now (zero once every session that used the backend has ended).
    pub fn host_live(&self) -> u64 {
        self.host.live()
    }

    /// Frees of pinned buffers that were not alive (double frees, or frees of what a context's end took): zero
    /// unless the session lost track of a buffer.
    pub fn host_stale_frees(&self) -> u64 {
        self.host.stale_frees()
    }

    /// How many host buffers were freed so far (on the GPU each free waits for the device's queued work).
    pub fn host_frees(&self) -> u64 {
        self.host.frees()
    }
}

#[derive(Default)]
pub(super) struct HostBuffers {
    /// Address → (length, context it was made in) of each buffer alive.
    live: Mutex<HashMap<usize, (usize, u64)>>,
    /// Host buffer bytes alive now, and the most there ever were: what the server held.
    live_bytes: AtomicU64,
    peak_bytes: AtomicU64,
    frees: AtomicU64,
    /// Frees of a pointer that is no buffer (any more): on the driver a double free, or a free of memory a context's
    /// end took, which could be someone else's buffer by then. Counted, for tests to assert none happen.
    stale_frees: AtomicU64,
}

impl HostBuffers {
    /// A zeroed buffer of `len` bytes (at least one) made in context `ctx`.
    pub(super) fn alloc(&self, len: usize, ctx: u64) -> HostBuffer {
        let mut bytes = vec![0u8; len.max(1)].into_boxed_slice();
        let ptr = bytes.as_mut_ptr();
        std::mem::forget(bytes);
        self.table().insert(ptr as usize, (len, ctx));
        let live = self.live_bytes.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
        self.peak_bytes.fetch_max(live, Ordering::Relaxed);
        vgpu_dataplane::pinned::add(ptr as usize, len); // as the real backend lists its pinned buffers
        HostBuffer {
            ptr,
            len,
            ctx,
            epoch: 0,
        }
    }

    /// Frees the buffer at `ptr`; when there is none (freed before, or taken by a context's end) nothing is freed
    /// and the stale free is counted.
    pub(super) fn free(&self, ptr: *mut u8) {
        let found = self.table().remove(&(ptr as usize));
        match found {
            Some((len, _)) => self.release(ptr as usize, len),
            None => {
                self.stale_frees.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Frees every buffer made in context `ctx` (its reset); how many there were.
    pub(super) fn free_context(&self, ctx: u64) -> usize {
        let gone: Vec<(usize, usize)> = {
            let mut table = self.table();
            let gone: Vec<(usize, usize)> = table
                .iter()
                .filter(|(_, &(_, c))| c == ctx)
                .map(|(&ptr, &(len, _))| (ptr, len))
                .collect();
            for (ptr, _) in &gone {
                table.remove(ptr);
            }
            gone
        };
        for &(ptr, len) in &gone {
            self.release(ptr, len);
        }
        gone.len()
    }

    pub(super) fn peak(&self) -> u64 {
        self.peak_bytes.load(Ordering::Relaxed)
    }

    pub(super) fn live(&self) -> u64 {
        self.live_bytes.load(Ordering::Relaxed)
    }

    pub(super) fn stale_frees(&self) -> u64 {
        self.stale_frees.load(Ordering::Relaxed)
    }

    pub(super) fn frees(&self) -> u64 {
        self.frees.load(Ordering::Relaxed)
    }

    fn release(&self, ptr: usize, len: usize) {
        self.live_bytes.fetch_sub(len as u64, Ordering::Relaxed);
        self.frees.fetch_add(1, Ordering::Relaxed);
        vgpu_dataplane::pinned::remove(ptr);
        // SAFETY: ptr came from `alloc` (a boxed slice of max(len, 1) bytes, forgotten there) and was just taken out
        // of the table, so it is freed exactly once.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr as *mut u8, len.max(1))) });
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<usize, (usize, u64)>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for HostBuffers {
    fn drop(&mut self) {
        let all: Vec<(usize, usize)> = self.table().drain().map(|(ptr, (len, _))| (ptr, len)).collect();
        for (ptr, len) in all {
            self.release(ptr, len);
        }
    }
}
