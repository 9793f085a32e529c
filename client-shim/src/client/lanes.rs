//! Lanes for a TCP or TLS channel (`CAP_LANES`): once a channel moves bulk data, it opens extra connections of its
//! own kind to its server and both ends stripe large transfers over all of them (`transports::striped`), since one
//! TCP stream tops out below a fat link's rate and one TLS stream at one core's cipher rate. `VGPU_TCP_STREAMS` sets
//! the streams per channel (default 4; 1: off).

use vgpu_transports::striped::Lane;

use super::*;

/// A channel opens its lanes once it has moved this many bytes, or is about to in one call: smaller transfers
/// gain less from striping than the extra connections cost.
pub(super) const LANE_AFTER: u64 = 8 << 20;
/// Most streams per channel (the main connection and its lanes).
const MAX_STREAMS: usize = vgpu_transports::striped::MAX_LANES + 1;
const DEFAULT_STREAMS: usize = 4;

/// Where a channel stands with its lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lanes {
    /// Not tried yet: the channel has not moved enough for them.
    Untried,
    /// Striped over lanes.
    Joined,
    /// Not used: not a TCP or TLS channel, compressed, turned off, or opening them failed (the channel goes on as it
    /// was).
    NotUsed,
}

/// Lanes per channel, from `VGPU_TCP_STREAMS` (streams, the main connection included).
fn lane_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| match std::env::var("VGPU_TCP_STREAMS") {
        Err(_) => DEFAULT_STREAMS - 1,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_STREAMS).contains(&n) => n - 1,
            _ => {
                log!(
                    WARN,
                    "VGPU_TCP_STREAMS={v:?}: must be 1 to {MAX_STREAMS}; using {DEFAULT_STREAMS}"
                );
                DEFAULT_STREAMS - 1
            }
        },
    })
}

/// Opens `count` lanes to `srv` for the channel whose join will name `token`, each a connection of the channel's own
/// kind (TCP, or TLS with the same pin) welcomed by the server; in index order. They are opened side by side, so a
/// long link costs one round trip (a TLS handshake's two), not one per lane.
fn connect_lanes(srv: &Server, token: &[u8; 16], count: usize) -> Result<Vec<Lane>, String> {
    std::thread::scope(|scope| {
        let opening: Vec<_> = (0..count as u32)
            .map(|index| scope.spawn(move || connect_lane(srv, token, index)))
            .collect();
        opening
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("lane thread panicked".into())))
            .collect()
    })
}

fn connect_lane(srv: &Server, token: &[u8; 16], index: u32) -> Result<Lane, String> {
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        capabilities: CAPABILITIES,
        mode: MODE_LANE,
        pid: std::process::id(),
        session_id: srv.session_id,
        secret: srv.secret,
        ..Default::default()
    };
    let mut credential = [0u8; LANE_CREDENTIAL];
    credential[..16].copy_from_slice(token);
    credential[16..].copy_from_slice(&index.to_le_bytes());
    let mut lane =
        vgpu_transports::connect(&srv.endpoint, &encode_hello(&hello, &credential)).map_err(|e| e.to_string())?;
    let mut head = [0u8; std::mem::size_of::<Welcome>()];
    lane.recv_exact(&mut head).map_err(|e| format!("welcome: {e}"))?;
    let welcome = Welcome::read_from_bytes(&head[..]).map_err(|_| "short welcome".to_string())?;
    let mut tail = vec![0u8; welcome_tail_len(&welcome)?];
    lane.recv_exact(&mut tail).map_err(|e| format!("welcome: {e}"))?;
    let (_, message) = decode_welcome_tail(&welcome, &tail)?;
    if welcome.status != STATUS_OK {
        return Err(format!("refused: {message}"));
    }
    Ok(lane)
}

/// Reports a lane failure once per process: the channels go on unstriped.
fn report(why: &str) {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    if !REPORTED.swap(true, Ordering::Relaxed) {
        log!(WARN, "channels stay on one TCP stream: {why}");
    }
}

impl Channel {
    /// Before a call that moves `coming` bytes: a TCP or TLS channel that has moved (or is about to move) enough gets
    /// its lanes, once. Must run before the call takes its request number, since the join is a request itself.
    pub(super) fn stripe_if_bulk(&mut self, srv: &Server, coming: usize) {
        if self.lanes != Lanes::Untried || self.transport.1.saturating_add(coming as u64) < LANE_AFTER {
            return;
        }
        self.lanes = Lanes::NotUsed;
        let count = lane_count();
        let network = matches!(srv.endpoint, Endpoint::Tcp(_) | Endpoint::Tls { .. });
        if count == 0
            || !network
            || srv.capabilities & CAP_LANES == 0
            || packing(&srv.endpoint).is_some()
            || self.broken
        {
            return;
        }
        let token: [u8; 16] = rand::random();
        let lanes = match connect_lanes(srv, &token, count) {
            Ok(lanes) => lanes,
            Err(why) => return report(&format!("cannot open lanes to {}: {why}", srv.endpoint)),
        };
        let fine = srv.capabilities & CAP_LANES_FINE != 0;
        let join = LanesJoin {
            token,
            count: count as u32,
            flags: if fine { LANES_FINE } else { 0 },
        };
        match self.call(srv, 0, &join, &[], None) {
            Ok(_) => {}
            Err(LOST) => return,
            Err(e) => return report(&format!("{} did not join the lanes ({e:?})", srv.endpoint)),
        }
        // The join's reply was the last unstriped frame both ways.
        let main = std::mem::replace(&mut self.transport.0, Box::new(Gone));
        match vgpu_transports::striped::Striped::new(main, lanes) {
            Ok(striped) => {
                let striped = striped.fine_pieces(fine);
                self.transport.0 = Box::new(striped);
                self.lanes = Lanes::Joined;
                stats::add(stats::STRIPED_CHANNELS, 1);
            }
            Err(e) => {
                // The server stripes from here on and the main transport is gone with `Striped::new`'s refusal.
                self.fail(&format!("lanes: {e}"));
            }
        }
    }
}

/// Stands in for a transport while it is being wrapped.
struct Gone;

impl Transport for Gone {
    fn send(&mut self, _: &[&[u8]]) -> Result<(), vgpu_dataplane::TransportError> {
        Err(vgpu_dataplane::TransportError::Closed)
    }
    fn recv_exact(&mut self, _: &mut [u8]) -> Result<(), vgpu_dataplane::TransportError> {
        Err(vgpu_dataplane::TransportError::Closed)
    }
    fn kind(&self) -> &'static str {
        "gone"
    }
}
