//! TCP's background flusher: batched async calls of idle threads go out after a short delay, and a channel
//! about to send first writes out other threads' batches (cross-thread submission order).

use super::*;

type FlushEntry = (usize, Weak<Mutex<Channel>>);
static FLUSH_LIST: Mutex<Vec<FlushEntry>> = Mutex::new(Vec::new());

/// Before a channel sends, the calls other threads have batched for the same server go out first, so that server
/// sees work in the order the app submitted it across threads (an event recorded on one thread and waited for on
/// another, as PyTorch's autograd thread does, must reach the server in that order). A channel busy on another
/// thread is sending already.
pub(super) fn flush_other_channels(server: usize) {
    let others: Vec<Arc<Mutex<Channel>>> = {
        let list = FLUSH_LIST.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() < 2 {
            return;
        }
        list.iter()
            .filter(|(s, _)| *s == server)
            .filter_map(|(_, w)| w.upgrade())
            .collect()
    };
    for ch in others {
        if let Ok(mut other) = ch.try_lock() {
            let _ = other.flush_own();
        }
        release(ch);
    }
}

/// Lets go of a channel borrowed from the list. When its thread ended meanwhile this was its last holder, and
/// dropping it may wait for the server (an RDMA transport waits for reads of what it offered without waiting):
/// that must not happen on this thread, which may hold a request number it has not sent yet, so another one
/// drops it.
fn release(ch: Arc<Mutex<Channel>>) {
    if let Some(orphan) = Arc::into_inner(ch) {
        let _ = std::thread::Builder::new()
            .name("vgpu-channel-drop".into())
            .spawn(move || drop(orphan));
    }
}
static FLUSH_SIGNAL: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
static FLUSHER_STARTED: AtomicBool = AtomicBool::new(false);

pub(super) fn register_for_flushing(ch: &Arc<Mutex<Channel>>, server: usize) {
    FLUSH_LIST
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((server, Arc::downgrade(ch)));
    if !FLUSHER_STARTED.swap(true, Ordering::Relaxed) {
        let _ = std::thread::Builder::new().name("vgpu-flusher".into()).spawn(flusher);
    }
}

pub(super) fn wake_flusher() {
    if !FLUSHER_STARTED.load(Ordering::Relaxed) {
        return;
    }
    let (flag, cv) = &FLUSH_SIGNAL;
    *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
    cv.notify_one();
}

pub(super) fn flusher() {
    let delay = Duration::from_micros(
        std::env::var("VGPU_FLUSH_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50),
    );
    let (flag, cv) = &FLUSH_SIGNAL;
    loop {
        {
            let mut pending = flag.lock().unwrap_or_else(|p| p.into_inner());
            while !*pending {
                pending = cv.wait(pending).unwrap_or_else(|p| p.into_inner());
            }
            *pending = false;
        }
        loop {
            std::thread::sleep(delay);
            let list: Vec<_> = {
                let mut l = FLUSH_LIST.lock().unwrap_or_else(|p| p.into_inner());
                l.retain(|(_, w)| w.strong_count() > 0);
                l.iter().filter_map(|(_, w)| w.upgrade()).collect()
            };
            let mut again = false;
            for ch in list {
                match ch.try_lock() {
                    Ok(mut c) => {
                        let _ = c.flush();
                    }
                    // Its thread is in a call, which flushes; look again shortly in case it only appended.
                    Err(_) => again = true,
                }
                release(ch);
            }
            if !again {
                break;
            }
        }
    }
}
