//! Lanes of striped channels (`CAP_LANES`): extra connections (TCP, or TLS) a client opens for one channel, parked
//! here by the worker until that channel's `LanesJoin` takes them, after which the channel speaks
//! `transports::striped`.
//!
//! Parked lanes are bounded per session and forgotten after a while, so a client that opens lanes and never joins
//! them (or a hostile one) holds at most `MAX_PARKED` descriptors for at most `PARK_KEEP`.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;
use vgpu_transports::striped::{Lane, MAX_LANES};

use super::channel::{Channel, Cx, Serve, Served};
use super::Session;

/// Most lanes parked at once per session (every channel's, before their joins).
const MAX_PARKED: usize = 64;
/// A parked lane not joined within this long is dropped.
const PARK_KEEP: Duration = Duration::from_secs(10);
/// How long a join waits for lanes still on their way (their welcome may be sent before they are parked).
const JOIN_WAIT: Duration = Duration::from_secs(2);

struct Parked {
    token: [u8; 16],
    index: u32,
    lane: Lane,
    at: Instant,
}

/// The lanes waiting for their channel's join.
#[derive(Default)]
pub(crate) struct LaneBox {
    parked: Mutex<Vec<Parked>>,
    arrived: Condvar,
}

impl Session {
    /// A lane the listener admitted for this session (the client's session secret checked), welcomed: parked until
    /// the join naming `token` takes it.
    pub fn deliver_lane(&self, token: [u8; 16], index: u32, lane: Lane) {
        let mut parked = self.lanes.parked.lock().unwrap_or_else(|p| p.into_inner());
        parked.retain(|l| l.at.elapsed() < PARK_KEEP);
        if parked.len() >= MAX_PARKED || index as usize >= MAX_LANES {
            tracing::warn!("dropping a lane (index {index}): {MAX_PARKED} already wait, or the index is out of range");
            return;
        }
        parked.push(Parked {
            token,
            index,
            lane,
            at: Instant::now(),
        });
        self.lanes.arrived.notify_all();
    }

    /// Lanes 0..count of `token`, in index order, once all are parked (waiting up to `wait`); `None` if they do not
    /// all come, in which case those that did are dropped.
    fn take_lanes(&self, token: &[u8; 16], count: usize, wait: Duration) -> Option<Vec<Lane>> {
        let deadline = Instant::now() + wait;
        let mut parked = self.lanes.parked.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let complete = (0..count as u32).all(|i| parked.iter().any(|l| &l.token == token && l.index == i));
            let now = Instant::now();
            if complete || now >= deadline {
                let (mine, rest): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut *parked)
                    .into_iter()
                    .partition(|l| &l.token == token);
                *parked = rest;
                if !complete {
                    return None;
                }
                let mut lanes: Vec<Option<Lane>> = (0..count).map(|_| None).collect();
                for l in mine {
                    // A duplicate index (a client's mistake) keeps the first; out-of-range ones are dropped.
                    if let Some(slot @ None) = lanes.get_mut(l.index as usize) {
                        *slot = Some(l.lane);
                    }
                }
                return lanes.into_iter().collect();
            }
            parked = self
                .lanes
                .arrived
                .wait_timeout(parked, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Serve<LanesJoin> for Channel {
    fn serve(&mut self, call: LanesJoin, cx: &mut Cx<'_>) -> Served<Empty> {
        let count = call.count as usize;
        // Network channels only (shared memory and RDMA move bytes faster than striping would help).
        let kind = cx.t.kind();
        let known_flags = call.flags & !vgpu_dataplane::handshake::LANES_FINE == 0;
        if self.striped || !known_flags || !(1..=MAX_LANES).contains(&count) || !matches!(kind, "tcp" | "tls") {
            return Ok(Err(CUDA_ERROR_NOT_SUPPORTED));
        }
        let wait = self.s().limits.peer_wait.map_or(JOIN_WAIT, |w| w.min(JOIN_WAIT));
        match self.s().take_lanes(&call.token, count, wait) {
            // A lane of another kind (a clear TCP lane beside a TLS channel) would carry its bytes unprotected.
            Some(lanes) if lanes.iter().any(|l| l.kind() != kind) => Ok(Err(CUDA_ERROR_NOT_SUPPORTED)),
            Some(lanes) => {
                self.joined_lanes = Some((lanes, call.flags & vgpu_dataplane::handshake::LANES_FINE != 0));
                Ok(Ok(Empty::default()))
            }
            None => Ok(Err(CUDA_ERROR_NOT_SUPPORTED)),
        }
    }
}
