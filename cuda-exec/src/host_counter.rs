//! A counter in pinned host memory that a stream can wait on (`Backend::stream_wait_counter`): how the server holds
//! the app's stream behind work it runs on a thread of its own (a collective between servers) without blocking.
//!
//! The device polls the word (`cuStreamWaitValue32` with a cyclic greater-or-equal); host threads wait on a condition
//! variable. Values only grow, in wrapping order, so one counter serves every hold of one worker in turn.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

use crate::backend::HostBuffer;

pub struct HostCounter {
    /// The pinned buffer holding the word (the backend's `host_alloc`; freed by its owner through `into_buffer`).
    buffer: HostBuffer,
    /// Offset of the 4-byte-aligned word in `buffer`.
    at: usize,
    lock: Mutex<()>,
    changed: Condvar,
    /// The word's device address, once a backend asked the driver for it.
    pub device_addr: OnceLock<u64>,
}

// SAFETY: the word is only accessed through atomics; the buffer is owned by the counter and freed once, by its owner.
unsafe impl Sync for HostCounter {}

impl HostCounter {
    /// A counter at 0 in `buffer` (at least 8 bytes of host memory from the backend's `host_alloc`).
    pub fn new(buffer: HostBuffer) -> Option<HostCounter> {
        let at = buffer.ptr.align_offset(std::mem::align_of::<AtomicU32>());
        if at.checked_add(4).is_none_or(|end| end > buffer.len) {
            return None;
        }
        let counter = HostCounter {
            buffer,
            at,
            lock: Mutex::new(()),
            changed: Condvar::new(),
            device_addr: OnceLock::new(),
        };
        counter.word().store(0, Ordering::Release);
        Some(counter)
    }

    fn word(&self) -> &AtomicU32 {
        // SAFETY: `at` is aligned for a u32 and lies with its 4 bytes inside the buffer (checked in `new`), which
        // lives as long as `self`; the word is only ever accessed atomically (the device reads it too).
        unsafe { AtomicU32::from_ptr(self.buffer.ptr.add(self.at).cast::<u32>()) }
    }

    /// The host address of the word (what the driver maps to a device address).
    pub fn host_addr(&self) -> *mut u8 {
        self.buffer.ptr.wrapping_add(self.at)
    }

    pub fn get(&self) -> u32 {
        self.word().load(Ordering::Acquire)
    }

    /// Whether the counter reached `value`, in wrapping order (as the driver's cyclic comparison reads it).
    pub fn reached(&self, value: u32) -> bool {
        (self.get().wrapping_sub(value) as i32) >= 0
    }

    /// Sets the counter (never backwards, in wrapping order) and wakes every host waiter.
    pub fn set(&self, value: u32) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.word().fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            ((value.wrapping_sub(now) as i32) > 0).then_some(value)
        });
        self.changed.notify_all();
    }

    /// Blocks until the counter reaches `value`.
    pub fn wait_for(&self, value: u32) {
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while !self.reached(value) {
            guard = self.changed.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The buffer, for its owner to free with the backend that allocated it.
    pub fn into_buffer(self) -> HostBuffer {
        self.buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn counter() -> HostCounter {
        let bytes: &'static mut [u8] = Box::leak(vec![0u8; 64].into_boxed_slice());
        let buffer = HostBuffer {
            ptr: bytes.as_mut_ptr().wrapping_add(1),
            len: 63,
            ctx: 0,
            epoch: 0,
        };
        HostCounter::new(buffer).expect("room for an aligned word")
    }

    #[test]
    fn values_only_grow_in_wrapping_order_and_wake_waiters() {
        let c = Arc::new(counter());
        assert!(c.reached(0));
        assert!(!c.reached(1));
        c.set(3);
        c.set(2);
        assert_eq!(c.get(), 3, "never backwards");
        c.set(u32::MAX);
        assert_eq!(c.get(), 3, "u32::MAX is before 3 in wrapping order");
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || c.wait_for(7))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished(), "7 not reached yet");
        c.set(7);
        waiter.join().expect("woken");
        assert!(c.reached(5) && c.reached(7) && !c.reached(8));
    }

    #[test]
    fn a_buffer_without_room_for_a_word_is_refused() {
        let bytes: &'static mut [u8] = Box::leak(vec![0u8; 8].into_boxed_slice());
        let at = bytes.as_ptr().align_offset(4);
        let buffer = HostBuffer {
            ptr: bytes.as_mut_ptr().wrapping_add(at + 1),
            len: 3,
            ctx: 0,
            epoch: 0,
        };
        assert!(HostCounter::new(buffer).is_none());
    }
}
