//! Where async device-to-host copies land: the host range each pending copy writes when its bytes arrive,
//! found by the id the server sends back with them.

use super::*;

/// Where the bytes of an async device-to-host copy must land: `rows` rows of `width` bytes, `pitch` apart
/// (one row for a plain copy). The server sends them packed.
#[derive(Clone, Copy, Debug)]
pub struct Landing {
    pub addr: usize,
    pub pitch: usize,
    pub width: usize,
    pub rows: usize,
    /// The server whose reply frames carry the bytes.
    pub server: usize,
}

impl Landing {
    pub(super) fn len(&self) -> usize {
        self.width * self.rows
    }
}

// Device-to-host async copies waiting for their data, by id.
static PENDING: OnceLock<Mutex<HashMap<PendingId, Landing>>> = OnceLock::new();
static NEXT_PENDING: AtomicU64 = AtomicU64::new(1);

pub(super) fn pending() -> MutexGuard<'static, HashMap<PendingId, Landing>> {
    PENDING
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Records where an async device-to-host copy's bytes must land; returns the id the server echoes.
pub fn pending_register(landing: Landing) -> PendingId {
    let id = PendingId(NEXT_PENDING.fetch_add(1, Ordering::Relaxed));
    pending().insert(id, landing);
    id
}

/// The server of an async device-to-host copy still under way whose bytes are due to land in [addr, addr+len).
pub fn pending_overlaps(addr: usize, len: usize) -> Option<usize> {
    pending().values().find_map(|l| {
        let end = l.addr + l.pitch * l.rows.saturating_sub(1) + l.width;
        (addr < end && l.addr < addr.saturating_add(len)).then_some(l.server)
    })
}

/// Forgets every async device-to-host copy still due (a primary-context reset discarded them on the server).
pub fn pending_clear() {
    pending().clear();
}

pub(super) fn pending_take(id: PendingId) -> Option<Landing> {
    pending().remove(&id)
}

// The TCP flusher: a batch must not sit unsent while the app computes, or the GPU would idle. A channel
// that becomes non-empty wakes this thread, which writes out batches still pending after a short delay.
// Each entry: the channel's server, and the channel.
