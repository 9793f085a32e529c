//! The emulated backend's pinned host buffers (`cuMemHostAlloc`): each tied to the context current when it was made,
//! freed with that context's reset as the driver frees them, and freed with the backend as the process's exit would.
//!
//! Without the reset, a session that forgot its buffers after a primary-context reset (as it must: natively they
//! are gone) left them allocated here for the life of the process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::backend::HostBuffer;

#[derive(Default)]
pub(super) struct HostBuffers {
    /// Address → (length, context it was made in) of each buffer alive.
    live: Mutex<HashMap<usize, (usize, u64)>>,
    /// Host buffer bytes alive now, and the most there ever were: what the server held.
    live_bytes: AtomicU64,
    peak_bytes: AtomicU64,
    frees: AtomicU64,
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
        HostBuffer { ptr, len, ctx }
    }

    /// Frees the buffer at `ptr`; false when there is none (a reset took it), and nothing is freed twice.
    pub(super) fn free(&self, ptr: *mut u8) -> bool {
        let found = self.table().remove(&(ptr as usize));
        match found {
            Some((len, _)) => {
                self.release(ptr as usize, len);
                true
            }
            None => false,
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
