//! Copies between devices of different servers (`cuMemcpyPeer`, `cuMemcpyDtoD`, unified `cuMemcpy`, 2D/3D peer
//! copies). Where both servers can (`CAP_PEER_COPY`) and the source server's operator lets it send to the
//! destination (`vgpu server --peer`, asked once per pair with `PeerProbe`), the bytes go server to server: the
//! destination server is told to expect the copy under a fresh random token (`PeerRecv`), the source server to
//! send it there (`PeerSend`), and nothing but those two small messages leaves this process; the servers keep the
//! connection for the next copy between the same two sessions. Otherwise (or with `VGPU_PEER_COPY=relay`, or for
//! copies under `VGPU_PEER_DIRECT_MIN` bytes) they are relayed through this process in chunks.

use std::collections::HashMap;
use std::sync::Mutex;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::{CAP_PEER_COPY, CAP_PEER_ROWS};
use vgpu_dataplane::wire::*;

use super::route_of_ptr;
use super::route_of_stream;
use crate::client::{self, Route};

/// Bytes relayed per round: bounds this process's buffer while keeping each call large.
const RELAY_CHUNK: usize = 8 << 20;

/// Server pairs (source, destination) already asked about: whether the source may send to the destination.
static DIRECT: Mutex<Option<HashMap<(usize, usize), bool>>> = Mutex::new(None);

/// Copies `n` bytes from `src` to `dst`, devices of two different servers; in `stream`'s order, or synchronously.
/// Directly between the servers where they can (see the module documentation); else each chunk is a synchronous
/// device-to-host copy on the source server and a synchronous host-to-device copy on the destination server,
/// after the stream's earlier work (an asynchronous relayed copy has finished when the call returns).
pub(crate) fn copy(flags: u16, dst: u64, src: u64, n: usize, stream: Option<StreamId>) -> CuResult<()> {
    let (to, from) = (route_of_ptr(dst), route_of_ptr(src));
    if n > 0 && n >= direct_min() && direct_path(client::server_index(from)?, client::server_index(to)?, 0)? {
        return direct(flags, Shape::Bytes { dst, src, n }, stream);
    }
    let flags = after_stream(flags, stream)?;
    relay(flags, dst, src, n)
}

/// Copies smaller than this are relayed even where the servers could copy directly (`VGPU_PEER_DIRECT_MIN`, in
/// bytes; default 0). A direct copy costs the client one round trip and the servers three between them; a relayed
/// one two client round trips and its bytes twice over the client's links: with the client on the servers' host
/// (loopback), small copies are faster relayed (see README).
fn direct_min() -> usize {
    static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MIN.get_or_init(|| {
        std::env::var("VGPU_PEER_DIRECT_MIN")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// Whether server `from` sends to server `to` itself: both announce `CAP_PEER_COPY` (and the capabilities `also`
/// names) and `from` answers its probe for `to`'s endpoint (its operator listed it). Asked once per pair and
/// remembered.
fn direct_path(from: usize, to: usize, also: u64) -> CuResult<bool> {
    if std::env::var("VGPU_PEER_COPY").is_ok_and(|v| v == "relay") {
        return Ok(false);
    }
    let s = client::session()?;
    let (Some(a), Some(b)) = (s.servers.get(from), s.servers.get(to)) else {
        return Err(CUDA_ERROR_INVALID_VALUE);
    };
    let need = CAP_PEER_COPY | also;
    if a.capabilities & b.capabilities & need != need {
        return Ok(false);
    }
    let known = DIRECT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(&(from, to))
        .copied();
    if let Some(allowed) = known {
        return Ok(allowed);
    }
    let endpoint = b.endpoint.to_string();
    let allowed = match client::call_to(Route::Server(from), 0, &PeerProbe {}, endpoint.as_bytes()) {
        Ok(_) => true,
        Err(CUDA_ERROR_NOT_PERMITTED) => {
            crate::log::log!(
                crate::log::INFO,
                "{} may not send to {endpoint} (not among its --peer servers): copies between them pass \
                 through this process",
                a.endpoint
            );
            false
        }
        Err(e) => return Err(e),
    };
    DIRECT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert((from, to), allowed);
    Ok(allowed)
}

/// What a server-to-server copy moves: `n` contiguous bytes, or pitched rows.
enum Shape {
    Bytes { dst: u64, src: u64, n: usize },
    Rows(Rows),
}

/// The server-to-server copy of `shape` from its source (on server route `from`) to its destination (on `to`).
/// Each half runs on `stream` where the stream belongs to its server, else on that server's legacy stream. A
/// synchronous copy (no stream) waits for the destination server's answer, which carries either side's error.
fn direct(flags: u16, shape: Shape, stream: Option<StreamId>) -> CuResult<()> {
    let (dst, src) = match &shape {
        Shape::Bytes { dst, src, .. } => (*dst, *src),
        Shape::Rows(r) => (r.dst, r.src),
    };
    let (to, from) = (route_of_ptr(dst), route_of_ptr(src));
    let s = client::session()?;
    let receiver = s
        .servers
        .get(client::server_index(to)?)
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let on = |route: Route| -> CuResult<(StreamId, u16)> {
        match stream {
            None => Ok((StreamId::NULL, flags)),
            Some(st) if client::server_index(route_of_stream(st))? == client::server_index(route)? => Ok((st, flags)),
            Some(_) => Ok((StreamId::NULL, flags & !FLAG_PER_THREAD)),
        }
    };
    let token: [u8; 16] = rand::random();
    let (recv_stream, recv_flags) = on(to)?;
    let (send_stream, send_flags) = on(from)?;
    let endpoint = receiver.endpoint.to_string();
    match shape {
        Shape::Bytes { n, .. } => {
            let size = n as u64;
            let recv = PeerRecv {
                dst: DevicePtr(dst),
                size,
                stream: recv_stream,
                token,
            };
            client::post_to(to, recv_flags, &recv, &[])?;
            let send = PeerSend {
                src: DevicePtr(src),
                size,
                stream: send_stream,
                session: receiver.session_id,
                token,
            };
            client::post_to(from, send_flags, &send, endpoint.as_bytes())?;
        }
        Shape::Rows(r) => {
            let recv = PeerRecvRows {
                dst: DevicePtr(r.dst),
                dst_pitch: r.dst_pitch,
                width: r.width,
                height: r.height,
                stream: recv_stream,
                token,
            };
            client::post_to(to, recv_flags, &recv, &[])?;
            let send = PeerSendRows {
                src: DevicePtr(r.src),
                src_pitch: r.src_pitch,
                width: r.width,
                height: r.height,
                stream: send_stream,
                session: receiver.session_id,
                token,
            };
            client::post_to(from, send_flags, &send, endpoint.as_bytes())?;
        }
    }
    // Both halves must be on the wire: each server waits for the other.
    client::flush_all()?;
    if stream.is_none() {
        client::call_to(to, flags, &Ping {}, &[])?;
    }
    Ok(())
}

/// Waits for `stream`'s queued work (if any) on its server; the flags for the synchronous copies that follow.
fn after_stream(flags: u16, stream: Option<StreamId>) -> CuResult<u16> {
    client::flush_all()?;
    if let Some(stream) = stream {
        super::stream::wait_for_stream(flags, stream)?;
        return Ok(flags & !FLAG_PER_THREAD);
    }
    Ok(flags)
}

/// The chunked relay of [src, src+n) on one server to [dst, dst+n) on another.
fn relay(flags: u16, dst: u64, src: u64, n: usize) -> CuResult<()> {
    let (to, from) = (route_of_ptr(dst), route_of_ptr(src));
    let mut buf = vec![0u8; n.min(RELAY_CHUNK)];
    let mut done = 0usize;
    while done < n {
        let len = (n - done).min(RELAY_CHUNK);
        let chunk = &mut buf[..len];
        let read = MemcpyDtoH {
            src: DevicePtr(src + done as u64),
            size: len as u64,
        };
        client::copy_to_host(from, flags, &read, chunk)?;
        let write = MemcpyHtoD {
            dst: DevicePtr(dst + done as u64),
            size: len as u64,
        };
        client::call_to(to, flags, &write, chunk)?;
        done += len;
    }
    Ok(())
}

/// A pitched copy between device memory of two servers: `height` rows of `width` bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rows {
    pub dst: u64,
    pub dst_pitch: u64,
    pub src: u64,
    pub src_pitch: u64,
    pub width: u64,
    pub height: u64,
}

/// `cuMemcpy2D`/`cuMemcpy3D` (one slice at a time) between devices of two servers: one copy when both sides are
/// contiguous (pitch = width); otherwise server to server as rows where both servers can (`CAP_PEER_ROWS`, rows of
/// at most `RELAY_CHUNK` bytes: the source server packs blocks of whole rows, the destination unpacks them), else
/// relayed through the client in such blocks (two requests a block), or one relay per row when a row alone is
/// larger.
pub(crate) fn copy_rows(flags: u16, rows: Rows, stream: Option<StreamId>) -> CuResult<()> {
    let w = usize::try_from(rows.width).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    let n = w
        .checked_mul(usize::try_from(rows.height).map_err(|_| CUDA_ERROR_INVALID_VALUE)?)
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if rows.dst_pitch == rows.width && rows.src_pitch == rows.width {
        return copy(flags, rows.dst, rows.src, n, stream);
    }
    let (to, from) = (route_of_ptr(rows.dst), route_of_ptr(rows.src));
    if n > 0
        && n >= direct_min()
        && w <= RELAY_CHUNK
        && direct_path(client::server_index(from)?, client::server_index(to)?, CAP_PEER_ROWS)?
    {
        return direct(flags, Shape::Rows(rows), stream);
    }
    let flags = after_stream(flags, stream)?;
    let at = |base: u64, pitch: u64, row: u64| {
        row.checked_mul(pitch)
            .and_then(|o| base.checked_add(o))
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    };
    if w == 0 || w > RELAY_CHUNK {
        for row in 0..rows.height {
            relay(
                flags,
                at(rows.dst, rows.dst_pitch, row)?,
                at(rows.src, rows.src_pitch, row)?,
                w,
            )?;
        }
        return Ok(());
    }
    let per_block = (RELAY_CHUNK / w) as u64;
    let mut packed = Vec::new();
    let mut row = 0;
    while row < rows.height {
        let k = per_block.min(rows.height - row);
        let read = Memcpy2D {
            src: at(rows.src, rows.src_pitch, row)?,
            src_pitch: rows.src_pitch,
            dst: 0,
            dst_pitch: 0,
            width: rows.width,
            height: k,
            direction: 1,
            _pad: 0,
        };
        packed.clear();
        client::call_with_tail_to(from, flags, &read, &[], &mut packed)?;
        if packed.len() as u64 != rows.width * k {
            return Err(CUDA_ERROR_UNKNOWN);
        }
        let write = Memcpy2D {
            src: 0,
            src_pitch: 0,
            dst: at(rows.dst, rows.dst_pitch, row)?,
            dst_pitch: rows.dst_pitch,
            width: rows.width,
            height: k,
            direction: 0,
            _pad: 0,
        };
        client::call_with_tail_to(to, flags, &write, &packed, &mut Vec::new())?;
        row += k;
    }
    Ok(())
}
