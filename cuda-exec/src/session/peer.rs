//! Handlers: copies between GPU servers (`PeerRecv`, `PeerSend`, `PeerProbe`). The sending server streams the
//! device bytes to the receiving server over a connection of its own, so they never pass through the client.
//!
//! The client sends both halves at once with a fresh random token. The receiver registers the token with its
//! listener (`Registry::grant_peer`), which hands the sender's `MODE_PEER` connection to this session only against
//! it. On that connection, after the welcome: the receiver says whether it can take the copy (u32, 0 or a
//! CUresult); the sender answers with a `PeerHeader` (its own early error, or the length), the bytes, and its final
//! status; the receiver acknowledges with its final status once the bytes are on its device. Each side does its
//! part in its stream's order and holds its channel until the copy is done; errors latch on the receiver, which the
//! client asks. A server sends only to servers its operator listed (`vgpu server --peer`): a tenant cannot make
//! it open connections elsewhere.

use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicUsize, Ordering::AcqRel};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::*;
use vgpu_dataplane::wire::*;
use vgpu_dataplane::{shm_socket_path, Endpoint, Transport};
use zerocopy::{FromBytes, IntoBytes};

use super::channel::{Channel, Cx, Serve, Served, CHUNK};
use super::coll::Reduction;
use super::copy::Span;
use super::{ChannelEnd, Session};
use crate::backend::{HostBuffer, Stream};

/// How long a receiving copy waits for its sender's connection, once its grant is registered, unless the
/// server says otherwise (`vgpu server --peer-wait-s`).
const PEER_ARRIVAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections that arrived for a copy no longer waiting are dropped after this long.
const INBOX_KEEP: Duration = Duration::from_secs(60);
/// Most connections one session holds that no copy has taken yet (grants bound them already; this is the
/// worker's own bound).
const MAX_INBOX: usize = 64;
/// Idle connections a sending session keeps to one receiving session, and in all: a later copy between the same
/// two sessions reuses one instead of connecting, presenting its token first.
const POOL_PER_PEER: usize = 4;
const POOL_ALL: usize = 16;
/// Endpoints whose `allowed_peer` answer a session remembers (a tenant naming ever new ones is asked afresh).
const MAX_DECIDED: usize = 64;
/// Connections a receiving session keeps open after their copies, each waiting (on a thread) for a next token.
const MAX_KEPT: usize = 16;
/// While the session keeps connections, a receiving copy first waits this long for its sender to reuse one
/// before it registers a grant for a new connection (which costs a round trip to the listener, and another to
/// withdraw it when a kept connection comes after all).
const REUSE_GRACE: Duration = Duration::from_millis(5);
/// What a copy whose peer connection failed answers: nothing more specific describes a lost link between
/// servers. The server's log names the cause.
const PEER_LOST: CUresult = CUDA_ERROR_UNKNOWN;

type Token = [u8; 16];
/// A sender's connection, by the token it presented, with when it arrived and whether it came back from an
/// earlier copy (parked) rather than through the listener.
type Inbox = HashMap<Token, Arrival>;
/// Idle connections of a sending session, by (receiving server as dialled, receiving session).
type Pool = HashMap<(String, u64), Vec<Box<dyn Transport>>>;

struct Arrival {
    at: Instant,
    transport: Box<dyn Transport>,
    /// For a kept connection: where it goes back after its copy (its waiting thread), instead of a new thread.
    back: Option<std::sync::mpsc::Sender<Box<dyn Transport>>>,
}

/// A session's part in server-to-server copies: where it may send, and connections that arrived for it.
#[derive(Default)]
pub(super) struct Peers {
    allowed: OnceLock<(Vec<Endpoint>, Duration)>,
    inbox: Mutex<Inbox>,
    arrived: Condvar,
    pool: Mutex<Pool>,
    /// Connections kept open after their copies (waiting for a next token, or carrying a copy again).
    kept: AtomicUsize,
    /// `allowed_peer`'s answers by the endpoint asked for.
    decided: Mutex<HashMap<String, Option<Endpoint>>>,
}

impl Session {
    /// The servers this session may send copies to (the operator's `--peer` list) and how long a receiving copy
    /// waits for its sender; set once by the worker.
    pub fn allow_peers(&self, list: Vec<Endpoint>, wait: Duration) {
        let _ = self.peers.allowed.set((list, wait));
    }

    fn peer_wait(&self) -> Duration {
        self.peers.allowed.get().map_or(PEER_ARRIVAL_TIMEOUT, |(_, w)| *w)
    }

    /// A sending server's connection for the copy granted under `token` (the listener checked the grant).
    pub fn deliver_peer(&self, token: Token, transport: Box<dyn Transport>) {
        self.deliver(token, transport, None);
    }

    fn deliver(
        &self,
        token: Token,
        transport: Box<dyn Transport>,
        back: Option<std::sync::mpsc::Sender<Box<dyn Transport>>>,
    ) {
        let mut inbox = self.peers.inbox.lock().unwrap_or_else(|p| p.into_inner());
        // A kept connection dropped here (its copy never came) ends its thread, which forgets it.
        inbox.retain(|_, a| a.at.elapsed() < INBOX_KEEP);
        if inbox.len() >= MAX_INBOX {
            tracing::warn!("dropping a peer connection: {MAX_INBOX} already wait for their copies");
            return;
        }
        let arrival = Arrival {
            at: Instant::now(),
            transport,
            back,
        };
        inbox.insert(token, arrival);
        self.peers.arrived.notify_all();
    }

    fn take_peer(&self, token: &Token, wait: Duration) -> Option<Arrival> {
        let deadline = Instant::now() + wait;
        let mut inbox = self.peers.inbox.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(a) = inbox.remove(token) {
                return Some(a);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            inbox = self
                .peers
                .arrived
                .wait_timeout(inbox, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Keeps a connection whose copy ended cleanly: a thread waits for the sender's next token on it (the sender
    /// keeps it in its pool) and delivers it as that copy's connection; after the copy the connection goes back to
    /// the same thread (`back`). The thread ends, forgetting the connection, when the sender closes it or a
    /// copy does not hand it back. Past `MAX_KEPT` a new one is closed.
    fn park_peer(
        self: &Arc<Self>,
        transport: Box<dyn Transport>,
        back: Option<std::sync::mpsc::Sender<Box<dyn Transport>>>,
    ) {
        if let Some(back) = back {
            // The waiting thread ended only if the worker is going away; the connection goes with it.
            let _ = back.send(transport);
            return;
        }
        if self.peers.kept.fetch_add(1, AcqRel) >= MAX_KEPT {
            self.peers.kept.fetch_sub(1, AcqRel);
            return;
        }
        let session = self.clone();
        let (back, returned) = std::sync::mpsc::channel::<Box<dyn Transport>>();
        let spawned = std::thread::Builder::new()
            .name("vgpu-peer-idle".into())
            .spawn(move || {
                let mut transport = transport;
                loop {
                    let mut token = [0u8; 16];
                    if transport.recv_exact(&mut token).is_err() {
                        break;
                    }
                    session.deliver(token, transport, Some(back.clone()));
                    match returned.recv() {
                        Ok(t) => transport = t,
                        Err(_) => break,
                    }
                }
                session.peers.kept.fetch_sub(1, AcqRel);
            });
        if spawned.is_err() {
            self.peers.kept.fetch_sub(1, AcqRel);
        }
    }

    /// Waits for the sender's connection of the copy under `token`: a kept one, or a new one through the
    /// listener against a grant. Whether a grant was registered, with the connection.
    fn await_peer(&self, token: Token) -> CuResult<(Option<Arrival>, bool)> {
        if self.peers.kept.load(std::sync::atomic::Ordering::Acquire) > 0 {
            if let Some(a) = self.take_peer(&token, REUSE_GRACE) {
                return Ok((Some(a), false));
            }
        }
        self.registry()?.grant_peer(token)?;
        Ok((self.take_peer(&token, self.peer_wait()), true))
    }

    /// An idle connection to `key`'s session from an earlier copy, if any.
    fn pooled_peer(&self, key: &(String, u64)) -> Option<Box<dyn Transport>> {
        let mut pool = self.peers.pool.lock().unwrap_or_else(|p| p.into_inner());
        let idle = pool.get_mut(key)?.pop();
        pool.retain(|_, v| !v.is_empty());
        idle
    }

    /// Keeps a connection whose copy ended cleanly for the next copy to the same session (within the bounds).
    fn pool_peer(&self, key: (String, u64), transport: Box<dyn Transport>) {
        let mut pool = self.peers.pool.lock().unwrap_or_else(|p| p.into_inner());
        let all: usize = pool.values().map(Vec::len).sum();
        let mine = pool.entry(key).or_default();
        if mine.len() < POOL_PER_PEER && all < POOL_ALL {
            mine.push(transport);
        }
    }

    /// The endpoint to dial for `asked` when the operator listed that server, else `None`. The operator's own
    /// spelling is dialled (a name the client chose is only compared, never resolved again at connect time); a
    /// TLS pin comes from the operator's entry, else the client's.
    /// Decisions are remembered per endpoint (a copy would otherwise resolve names on every call).
    pub(super) fn allowed_peer(&self, asked: &Endpoint) -> Option<Endpoint> {
        let (listed, _) = self.peers.allowed.get()?;
        let key = asked.to_string();
        if let Some(known) = self.peers.decided.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return known.clone();
        }
        // The same spelling first; names are resolved only when none is.
        let entry = listed
            .iter()
            .find(|e| same_spelling(e, asked))
            .or_else(|| listed.iter().find(|e| same_server(e, asked)));
        let decision = entry.map(|entry| dialled(entry, asked));
        let mut decided = self.peers.decided.lock().unwrap_or_else(|p| p.into_inner());
        if decided.len() < MAX_DECIDED {
            decided.insert(key, decision.clone());
        }
        decision
    }
}

/// What is dialled for `asked` when `entry` allowed it: the entry's spelling, with the client's TLS pin where the
/// entry has none.
fn dialled(entry: &Endpoint, asked: &Endpoint) -> Endpoint {
    match (entry, asked) {
        (Endpoint::Tls { addr, sha256: None }, Endpoint::Tls { sha256, .. }) => Endpoint::Tls {
            addr: addr.clone(),
            sha256: sha256.clone(),
        },
        _ => entry.clone(),
    }
}

/// Whether two endpoints are written alike (a TLS pin aside).
fn same_spelling(a: &Endpoint, b: &Endpoint) -> bool {
    match (a, b) {
        (Endpoint::Tls { addr: x, .. }, Endpoint::Tls { addr: y, .. }) => x == y,
        _ => a == b,
    }
}

/// Whether two endpoints name the same server: the same transport, and the same address (as written, or
/// resolving to a common socket address) or shared-memory socket.
fn same_server(a: &Endpoint, b: &Endpoint) -> bool {
    let (x, y) = match (a, b) {
        (Endpoint::Tcp(x), Endpoint::Tcp(y))
        | (Endpoint::Rdma(x), Endpoint::Rdma(y))
        | (Endpoint::Tls { addr: x, .. }, Endpoint::Tls { addr: y, .. }) => (x, y),
        (Endpoint::Shm(x), Endpoint::Shm(y)) => return shm_socket_path(x) == shm_socket_path(y),
        _ => return false,
    };
    if x == y {
        return true;
    }
    let resolve = |s: &str| s.to_socket_addrs().map(|a| a.collect::<Vec<_>>()).unwrap_or_default();
    let ys = resolve(y);
    resolve(x).iter().any(|s| ys.contains(s))
}

/// The endpoint a `PeerSend`/`PeerProbe` tail names.
pub(super) fn endpoint_of(tail: &[u8]) -> CuResult<Endpoint> {
    let text = std::str::from_utf8(tail).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    Endpoint::parse(text).map_err(|_| CUDA_ERROR_INVALID_VALUE)
}

/// Dials the receiving server and presents the grant: the connection after its welcome.
fn connect_peer(target: &Endpoint, session: u64, token: Token) -> Result<Box<dyn Transport>, String> {
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        capabilities: CAPABILITIES,
        mode: MODE_PEER,
        pid: std::process::id(),
        session_id: session,
        secret: token,
        ..Default::default()
    };
    let mut t = vgpu_transports::connect(target, &encode_hello(&hello, &[])).map_err(|e| e.to_string())?;
    let mut head = [0u8; std::mem::size_of::<Welcome>()];
    t.recv_exact(&mut head).map_err(|e| e.to_string())?;
    let welcome = Welcome::read_from_bytes(&head[..]).map_err(|_| "short welcome".to_string())?;
    let mut tail = vec![0u8; welcome_tail_len(&welcome)?];
    t.recv_exact(&mut tail).map_err(|e| e.to_string())?;
    let (_, message) = decode_welcome_tail(&welcome, &tail)?;
    if welcome.status != STATUS_OK || welcome.version != PROTOCOL_VERSION {
        return Err(format!("refused: {message}"));
    }
    Ok(t)
}

fn recv_u32(t: &mut dyn Transport) -> Result<u32, String> {
    let mut word = [0u8; 4];
    t.recv_exact(&mut word).map_err(|e| e.to_string())?;
    Ok(u32::from_le_bytes(word))
}

fn send_u32(t: &mut dyn Transport, value: u32) -> Result<(), String> {
    t.send(&[&value.to_le_bytes()]).map_err(|e| e.to_string())
}

/// A `ChannelEnd` of the peer connection is the copy's failure, never the client channel's.
fn peer_end(e: ChannelEnd) -> String {
    e.to_string()
}

impl Channel {
    /// The stream, range and staging buffers of one half of a copy of `size` packed bytes.
    fn prepare_peer_half(
        &mut self,
        span: Span,
        size: CuResult<u64>,
        stream: StreamId,
        per_thread: bool,
    ) -> CuResult<(Stream, usize)> {
        let stream = self.stream(stream, per_thread)?;
        let size = size?;
        match span {
            Span::Bytes(at) => self.check_range(at, size)?,
            Span::Rows { at, pitch, width } => {
                if width == 0 || width > CHUNK as u64 || size % width != 0 {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                self.check_2d(at.0, pitch, width, size / width)?;
            }
        }
        let len = usize::try_from(size).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        self.ensure_staging()?;
        Ok((stream, len))
    }

    /// The receiving half once the sender is connected: `Ok` carries the copy's outcome and whether the connection
    /// ended the exchange cleanly (so it can carry another copy).
    fn receive_from_peer(
        &mut self,
        peer: &mut dyn Transport,
        prepared: CuResult<(Stream, usize)>,
        dst: Span,
        size: u64,
        reduce: Option<Reduction>,
    ) -> Result<(CuResult<()>, bool), String> {
        send_u32(peer, prepared.as_ref().err().map_or(0, |e| e.code()))?;
        let (stream, len) = match prepared {
            Ok(v) => v,
            Err(e) => return Ok((Err(e), true)),
        };
        let mut head = [0u8; std::mem::size_of::<PeerHeader>()];
        peer.recv_exact(&mut head).map_err(|e| e.to_string())?;
        let header = PeerHeader::read_from_bytes(&head[..]).map_err(|_| "short header".to_string())?;
        if header.status != 0 {
            return Ok((Err(CUresult::from_code(header.status)), true));
        }
        if header.size != size {
            return Err(format!(
                "the sender announced {} bytes for a copy of {size}",
                header.size
            ));
        }
        self.s().count_moved(size);
        let copied = match (reduce, dst) {
            (None, _) => self.htod_through_staging(peer, dst, len, stream),
            (Some(r), Span::Bytes(at)) => self.reduce_through_staging(peer, at, len, stream, r),
            (Some(_), Span::Rows { .. }) => return Err("a reduction of pitched rows".into()),
        }
        .map_err(peer_end)?;
        let sent = recv_u32(peer)?;
        let outcome = match (copied, sent) {
            (Err(e), _) => Err(e),
            (Ok(()), 0) => Ok(()),
            (Ok(()), code) => Err(CUresult::from_code(code)),
        };
        send_u32(peer, outcome.err().map_or(0, |e| e.code()))?;
        Ok((outcome, true))
    }
}

/// What the sending half of a copy uses: the session (its pool of connections) and two staging buffers of its own,
/// so a collective's send can run on a thread of its own while the channel receives.
pub(super) struct SendHalf<'a> {
    pub session: &'a Session,
    pub staging: &'a mut [HostBuffer],
}

impl SendHalf<'_> {
    /// The sending half once the receiver answered `go` (0: ready). `Ok(())`: the receiver heard the outcome (and
    /// reports it) and the connection can carry another copy.
    fn send_to_peer(
        &mut self,
        peer: &mut dyn Transport,
        go: u32,
        prepared: CuResult<(Stream, usize)>,
        src: Span,
        size: u64,
    ) -> Result<(), String> {
        if go != 0 {
            return Ok(());
        }
        let header = PeerHeader {
            status: prepared.as_ref().err().map_or(0, |e| e.code()),
            _pad: 0,
            size,
        };
        peer.send(&[header.as_bytes()]).map_err(|e| e.to_string())?;
        let Ok((stream, len)) = prepared else { return Ok(()) };
        self.session.count_moved(size);
        let b = &*self.session.backend;
        let error = super::copy::stream_out(b, self.staging, peer, src, len, stream, true).map_err(peer_end)?;
        send_u32(peer, error.map_or(0, |e| e.code()))?;
        recv_u32(peer).map(|_| ())
    }

    /// Sends over an idle connection of the pool (its token first), or over a new one; the connection that
    /// carried the copy, for the pool.
    fn send_copy(
        &mut self,
        target: &Endpoint,
        key: &(String, u64),
        (session, token): (u64, Token),
        (src, size): (Span, u64),
        prepared: CuResult<(Stream, usize)>,
    ) -> Result<Box<dyn Transport>, String> {
        if let Some(mut peer) = self.session.pooled_peer(key) {
            // The receiver may have let an idle connection go: then nothing was delivered, and a new one is made.
            let go = peer
                .send(&[&token])
                .map_err(|e| e.to_string())
                .and_then(|_| recv_u32(&mut *peer));
            if let Ok(go) = go {
                return self.send_to_peer(&mut *peer, go, prepared, src, size).map(|_| peer);
            }
        }
        let mut peer = connect_peer(target, session, token)?;
        let go = recv_u32(&mut *peer)?;
        self.send_to_peer(&mut *peer, go, prepared, src, size).map(|_| peer)
    }

    /// The whole sending half to `target`'s session `session` under `token`, the connection kept for the next
    /// copy to that session; a failed connection is the copy's `PEER_LOST` (the log names why).
    pub fn send(
        &mut self,
        target: &Endpoint,
        (session, token): (u64, Token),
        (src, size): (Span, u64),
        prepared: CuResult<(Stream, usize)>,
    ) -> CuResult<()> {
        // The pool's key: the receiving server as dialled, and the receiving session.
        let key = (target.to_string(), session);
        match self.send_copy(target, &key, (session, token), (src, size), prepared) {
            Ok(peer) => {
                self.session.pool_peer(key, peer);
                Ok(())
            }
            Err(why) => {
                tracing::warn!("a copy to {target} failed: {why}");
                Err(PEER_LOST)
            }
        }
    }
}

impl Channel {
    /// The receiving half of a copy of `size` packed bytes into `dst`, from the server presenting `token`.
    fn serve_peer_recv(
        &mut self,
        cx: &mut Cx<'_>,
        (dst, size): (Span, CuResult<u64>),
        stream: StreamId,
        token: Token,
    ) -> Served<Empty> {
        // This channel waits for the copy; the session's other channels need not wait for it to start.
        let session = self.session.clone();
        let _held = session.order.hold();
        session.order.advance(cx.header.seq);
        let prepared = self.prepare_peer_half(dst, size, stream, cx.per_thread);
        let size = *size.as_ref().unwrap_or(&0);
        Ok(self.receive(token, prepared, (dst, size), None).map(|_| Empty {}))
    }

    /// The whole receiving half: waits for the sender's connection under `token`, takes the bytes (reduced into
    /// `dst` where `reduce` says) and keeps the connection for the next copy from that sender.
    pub(super) fn receive(
        &mut self,
        token: Token,
        prepared: CuResult<(Stream, usize)>,
        (dst, size): (Span, u64),
        reduce: Option<Reduction>,
    ) -> CuResult<()> {
        // The grant is registered even for a copy that fails here, so the sender learns of it at once.
        let (arrival, granted) = self.s().await_peer(token)?;
        let Some(arrival) = arrival else {
            tracing::warn!(
                "a copy from another server never arrived ({:.1} s): its sender is unreachable or stuck",
                self.s().peer_wait().as_secs_f64()
            );
            return Err(PEER_LOST);
        };
        let (mut peer, back) = (arrival.transport, arrival.back);
        if back.is_some() && granted {
            // The sender reused a kept connection after all: the grant for a new one goes.
            if let Ok(link) = self.s().registry() {
                let _ = link.withdraw_peer(token);
            }
        }
        match self.receive_from_peer(&mut *peer, prepared, dst, size, reduce) {
            Ok((outcome, clean)) => {
                if clean {
                    self.session.park_peer(peer, back);
                }
                outcome
            }
            Err(why) => {
                // Dropping `back` ends the kept connection's thread.
                tracing::warn!("a copy from another server failed: {why}");
                Err(PEER_LOST)
            }
        }
    }
}

impl Serve<PeerRecv> for Channel {
    fn serve(&mut self, c: PeerRecv, cx: &mut Cx<'_>) -> Served<Empty> {
        self.serve_peer_recv(cx, (Span::Bytes(c.dst), Ok(c.size)), c.stream, c.token)
    }
}

impl Serve<PeerRecvRows> for Channel {
    fn serve(&mut self, c: PeerRecvRows, cx: &mut Cx<'_>) -> Served<Empty> {
        let dst = Span::Rows {
            at: c.dst,
            pitch: c.dst_pitch,
            width: c.width,
        };
        let size = c.width.checked_mul(c.height).ok_or(CUDA_ERROR_INVALID_VALUE);
        self.serve_peer_recv(cx, (dst, size), c.stream, c.token)
    }
}

impl Serve<PeerSend> for Channel {
    fn serve(&mut self, c: PeerSend, cx: &mut Cx<'_>) -> Served<Empty> {
        self.serve_peer_send(cx, (Span::Bytes(c.src), Ok(c.size)), c.stream, (c.session, c.token))
    }
}

impl Serve<PeerSendRows> for Channel {
    fn serve(&mut self, c: PeerSendRows, cx: &mut Cx<'_>) -> Served<Empty> {
        let src = Span::Rows {
            at: c.src,
            pitch: c.src_pitch,
            width: c.width,
        };
        let size = c.width.checked_mul(c.height).ok_or(CUDA_ERROR_INVALID_VALUE);
        self.serve_peer_send(cx, (src, size), c.stream, (c.session, c.token))
    }
}

impl Channel {
    /// The sending half of a copy of `size` packed bytes from `src` to the server in the call's tail, for the
    /// receiving session's grant `token`.
    fn serve_peer_send(
        &mut self,
        cx: &mut Cx<'_>,
        (src, size): (Span, CuResult<u64>),
        stream: StreamId,
        (session, token): (u64, Token),
    ) -> Served<Empty> {
        let owner = self.session.clone();
        let _held = owner.order.hold();
        owner.order.advance(cx.header.seq);
        let target = match endpoint_of(&self.tail) {
            Ok(e) => e,
            Err(e) => return Ok(Err(e)),
        };
        let Some(target) = self.s().allowed_peer(&target) else {
            return Ok(Err(CUDA_ERROR_NOT_PERMITTED));
        };
        let prepared = self.prepare_peer_half(src, size, stream, cx.per_thread);
        let size = *size.as_ref().unwrap_or(&0);
        let mut half = SendHalf {
            session: &self.session,
            staging: &mut self.staging,
        };
        Ok(half
            .send(&target, (session, token), (src, size), prepared)
            .map(|_| Empty {}))
    }
}

impl Serve<PeerProbe> for Channel {
    fn serve(&mut self, _c: PeerProbe, _cx: &mut Cx<'_>) -> Served<Empty> {
        let target = match endpoint_of(&self.tail) {
            Ok(e) => e,
            Err(e) => return Ok(Err(e)),
        };
        Ok(match self.s().allowed_peer(&target) {
            Some(_) => Ok(Empty {}),
            None => Err(CUDA_ERROR_NOT_PERMITTED),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(text: &str) -> Endpoint {
        Endpoint::parse(text).expect("endpoint")
    }

    #[test]
    fn endpoints_name_the_same_server_by_transport_and_address() {
        assert!(same_server(&e("tcp://127.0.0.1:7070"), &e("tcp://127.0.0.1:7070")));
        assert!(
            same_server(&e("tcp://localhost:7070"), &e("tcp://127.0.0.1:7070")),
            "resolved alike"
        );
        assert!(!same_server(&e("tcp://127.0.0.1:7070"), &e("tcp://127.0.0.1:7071")));
        assert!(
            !same_server(&e("tcp://127.0.0.1:7070"), &e("tls://127.0.0.1:7070")),
            "another transport"
        );
        assert!(same_server(&e("shm://a"), &e("shm://a")));
        assert!(!same_server(&e("shm://a"), &e("shm://b")));
        let pinned = format!("tls://127.0.0.1:7443#sha256={}", "ab".repeat(32));
        assert!(
            same_server(&e(&pinned), &e("tls://127.0.0.1:7443")),
            "a pin does not name another server"
        );
    }

    #[test]
    fn the_operators_spelling_is_dialled_and_its_pin_wins() {
        let s = Session::new(
            Arc::new(crate::emulated::EmulatedBackend::new()),
            super::super::Limits::default(),
        );
        let pin = "ab".repeat(32);
        let other = "cd".repeat(32);
        s.allow_peers(
            vec![
                e("tcp://127.0.0.1:7070"),
                e("tls://127.0.0.1:7443"),
                e(&format!("tls://127.0.0.1:7444#sha256={pin}")),
            ],
            Duration::from_secs(1),
        );
        assert_eq!(
            s.allowed_peer(&e("tcp://localhost:7070")),
            Some(e("tcp://127.0.0.1:7070"))
        );
        let asked = e(&format!("tls://127.0.0.1:7443#sha256={other}"));
        assert_eq!(
            s.allowed_peer(&asked),
            Some(asked.clone()),
            "the client's pin where the operator gave none"
        );
        let asked = e(&format!("tls://127.0.0.1:7444#sha256={other}"));
        assert_eq!(
            s.allowed_peer(&asked),
            Some(e(&format!("tls://127.0.0.1:7444#sha256={pin}")))
        );
        assert_eq!(s.allowed_peer(&e("tcp://127.0.0.1:9")), None);
        // Asked again: the remembered answers.
        assert_eq!(
            s.allowed_peer(&e("tcp://localhost:7070")),
            Some(e("tcp://127.0.0.1:7070"))
        );
        assert_eq!(s.allowed_peer(&e("tcp://127.0.0.1:9")), None);
        // Among entries that resolve alike, the one spelled as asked.
        let both = Session::new(
            Arc::new(crate::emulated::EmulatedBackend::new()),
            super::super::Limits::default(),
        );
        both.allow_peers(
            vec![e("tcp://localhost:7070"), e("tcp://127.0.0.1:7070")],
            Duration::from_secs(1),
        );
        assert_eq!(
            both.allowed_peer(&e("tcp://127.0.0.1:7070")),
            Some(e("tcp://127.0.0.1:7070"))
        );
    }
}
