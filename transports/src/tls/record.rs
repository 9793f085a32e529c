//! The TLS 1.3 record layer of the `tls://` transport (RFC 8446 §5), run by vGPU itself once rustls has done the
//! handshake: so a connection's keys can move to a session's worker process, and records are sized for bulk.
//!
//! Sending seals 16 KiB records from the caller's memory into an output buffer (encryption is the copy) and writes
//! up to 256 KiB of records per system call. Receiving reads whatever the socket holds into one buffer and opens
//! each record straight into the caller's memory when it fits there (decryption is the copy), else in place.
//! Key updates are answered and sent; alerts end the channel.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vgpu_dataplane::transport::{Transport, TransportError};

use super::keys::{DirectionKeys, Suite, MAX_SECRET, TAG_LEN};
use crate::{io_to_transport, send_all};

#[path = "pipeline.rs"]
mod pipeline;

const HEADER: usize = 5;
/// Largest plaintext of one record (2^14).
const MAX_PLAIN: usize = 16 * 1024;
/// Largest record body a peer may send (RFC 8446 §5.2: 2^14 + 256).
const MAX_CIPHERTEXT: usize = MAX_PLAIN + 256;
/// Received bytes are read into a buffer this large; one read can bring many records.
const IN_BUF: usize = 256 * 1024;
/// Sealed records are written once this many bytes are ready (and at the end of every `send`).
const FLUSH_AT: usize = 256 * 1024;
/// Room for sealed records: below `FLUSH_AT` before a record, so one full record and a key update always fit.
const OUT_BUF: usize = FLUSH_AT + 2 * (HEADER + MAX_CIPHERTEXT);

const TYPE_ALERT: u8 = 21;
const TYPE_HANDSHAKE: u8 = 22;
const TYPE_APPDATA: u8 = 23;
const HS_NEW_SESSION_TICKET: u8 = 4;
const HS_KEY_UPDATE: u8 = 24;

/// Which end of the handshake this is: the client sends with the client's traffic secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

/// A connection's record-protection state between two processes: the suite, both traffic secrets and the next
/// sequence numbers. The listener hands it to a session's worker with the socket (`encode`/`decode`).
#[derive(Clone, PartialEq, Eq)]
pub struct ResumeState {
    suite: Suite,
    tx_secret: [u8; MAX_SECRET],
    tx_seq: u64,
    rx_secret: [u8; MAX_SECRET],
    rx_seq: u64,
}

impl std::fmt::Debug for ResumeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ResumeState({:?}, tx {}, rx {})",
            self.suite, self.tx_seq, self.rx_seq
        )
    }
}

impl Drop for ResumeState {
    fn drop(&mut self) {
        self.tx_secret.fill(0);
        self.rx_secret.fill(0);
        std::hint::black_box((&self.tx_secret, &self.rx_secret));
    }
}

/// Bytes of an encoded `ResumeState`.
pub const RESUME_LEN: usize = 2 + 2 * (8 + MAX_SECRET);

impl ResumeState {
    /// `[u16 suite][u64 tx seq][48 tx secret][u64 rx seq][48 rx secret]`, little-endian.
    pub fn encode(&self) -> [u8; RESUME_LEN] {
        let mut out = [0u8; RESUME_LEN];
        out[0..2].copy_from_slice(&self.suite.code().to_le_bytes());
        out[2..10].copy_from_slice(&self.tx_seq.to_le_bytes());
        out[10..58].copy_from_slice(&self.tx_secret);
        out[58..66].copy_from_slice(&self.rx_seq.to_le_bytes());
        out[66..114].copy_from_slice(&self.rx_secret);
        out
    }

    pub fn decode(bytes: &[u8; RESUME_LEN]) -> Result<ResumeState, TransportError> {
        let suite = Suite::from_code(u16::from_le_bytes([bytes[0], bytes[1]]))
            .ok_or_else(|| TransportError::Protocol("TLS resume state names an unknown cipher suite".into()))?;
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let mut tx_secret = [0u8; MAX_SECRET];
        tx_secret.copy_from_slice(&bytes[10..58]);
        let mut rx_secret = [0u8; MAX_SECRET];
        rx_secret.copy_from_slice(&bytes[66..114]);
        Ok(ResumeState {
            suite,
            tx_seq: u64_at(2),
            tx_secret,
            rx_seq: u64_at(58),
            rx_secret,
        })
    }
}

/// A TLS 1.3 connection after its handshake: the `tls://` transport. Made by [`super::connect`] (client),
/// [`super::TlsAcceptor::accept`] (server) or [`TlsTransport::resume`] (a worker taking over a connection).
pub struct TlsTransport {
    stream: TcpStream,
    pub(super) tx: DirectionKeys,
    pub(super) rx: DirectionKeys,
    /// Sealed records not yet written: `out[..out_len]`.
    out: Box<[u8]>,
    out_len: usize,
    inbuf: Box<[u8]>,
    /// Received bytes not yet opened: `inbuf[in_start..in_end]`.
    in_start: usize,
    in_end: usize,
    /// Plaintext of the last opened record not yet handed out: `inbuf[plain_pos..plain_end]`.
    plain_pos: usize,
    plain_end: usize,
    /// Read only as far as the current record (the listener reads a hello and hands the socket on with nothing
    /// of the client's next records consumed).
    read_ahead: bool,
    /// The peer asked for a key update: ours goes out before the next record we send.
    pub(super) owe_key_update: bool,
    deadline: Option<Instant>,
    spin: Duration,
    /// Send close_notify when dropped (not after the connection was handed to another process).
    notify_on_drop: bool,
    /// Buffers of the two-thread path for large transfers (`pipeline`), kept for the next one.
    batches: Vec<Box<[u8]>>,
}

impl TlsTransport {
    pub(crate) fn new(stream: TcpStream, tx: DirectionKeys, rx: DirectionKeys) -> io::Result<TlsTransport> {
        stream.set_nodelay(true)?;
        Ok(TlsTransport {
            stream,
            tx,
            rx,
            // Zeroed allocations come from fresh pages: only what a connection uses becomes resident.
            out: vec![0u8; OUT_BUF].into_boxed_slice(),
            out_len: 0,
            inbuf: vec![0u8; IN_BUF].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
            plain_pos: 0,
            plain_end: 0,
            read_ahead: true,
            owe_key_update: false,
            deadline: None,
            spin: crate::tcp::spin_budget(),
            notify_on_drop: true,
            batches: Vec::new(),
        })
    }

    /// Takes over a connection another process set up: `state` came from that side's [`Self::into_resume`].
    pub fn resume(stream: TcpStream, state: &ResumeState) -> Result<TlsTransport, TransportError> {
        let tx = DirectionKeys::new(state.suite, &state.tx_secret[..state.suite.secret_len()], state.tx_seq)
            .map_err(TransportError::Protocol)?;
        let rx = DirectionKeys::new(state.suite, &state.rx_secret[..state.suite.secret_len()], state.rx_seq)
            .map_err(TransportError::Protocol)?;
        Ok(TlsTransport::new(stream, tx, rx)?)
    }

    /// Gives up the connection for another process: its socket and record state. Refused while anything the
    /// peer sent is buffered here (it would be lost) or a key update is owed.
    pub fn into_resume(mut self) -> Result<(TcpStream, ResumeState), TransportError> {
        if self.in_start != self.in_end || self.plain_pos != self.plain_end || self.owe_key_update {
            return Err(TransportError::Protocol(
                "the TLS peer sent more than its hello before the server answered".into(),
            ));
        }
        self.set_deadline(None)?;
        let stream = self.stream.try_clone()?;
        let mut tx_secret = [0u8; MAX_SECRET];
        tx_secret[..self.tx.secret().len()].copy_from_slice(self.tx.secret());
        let mut rx_secret = [0u8; MAX_SECRET];
        rx_secret[..self.rx.secret().len()].copy_from_slice(self.rx.secret());
        let state = ResumeState {
            suite: self.tx.suite(),
            tx_secret,
            tx_seq: self.tx.seq,
            rx_secret,
            rx_seq: self.rx.seq,
        };
        tx_secret.fill(0);
        rx_secret.fill(0);
        self.notify_on_drop = false;
        Ok((stream, state))
    }

    /// Whether anything the peer sent is buffered here beyond what was received (the connection cannot be handed
    /// on then: see `into_resume`).
    pub fn has_buffered_input(&self) -> bool {
        self.in_start != self.in_end || self.plain_pos != self.plain_end
    }

    /// The negotiated cipher suite's IANA code point (0x1301, 0x1302 or 0x1303).
    pub fn suite_code(&self) -> u16 {
        self.tx.suite().code()
    }

    /// The underlying socket, e.g. for the peer address in logs.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// With `Some`, every read and write fails once `deadline` passes (used until the hello is in); `None`
    /// clears the socket timeouts again.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        self.deadline = deadline;
        if deadline.is_none() {
            self.stream.set_read_timeout(None)?;
            self.stream.set_write_timeout(None)?;
        }
        Ok(())
    }

    /// Whether reads may fetch beyond the current record (default: yes).
    pub fn set_read_ahead(&mut self, on: bool) {
        self.read_ahead = on;
    }

    /// Sets both socket timeouts to what is left before the deadline; fails if it has passed.
    fn arm_deadline(&self) -> Result<(), TransportError> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            self.stream.set_read_timeout(Some(left))?;
            self.stream.set_write_timeout(Some(left))?;
        }
        Ok(())
    }

    fn write_out(&mut self) -> Result<(), TransportError> {
        if self.out_len == 0 {
            return Ok(());
        }
        self.arm_deadline()?;
        let r = send_all(self.stream.as_raw_fd(), &[&self.out[..self.out_len]]).map_err(|e| self.io_error(e));
        self.out_len = 0;
        r
    }

    fn io_error(&self, e: io::Error) -> TransportError {
        if self.deadline.is_some() && matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
            return timed_out();
        }
        io_to_transport(e)
    }

    /// Appends one sealed record of `content_type` holding `pieces` (at most `MAX_PLAIN` bytes in all), and a key
    /// update after it when the key has sealed its share of records.
    fn seal_record(&mut self, content_type: u8, pieces: &[&[u8]]) -> Result<(), TransportError> {
        debug_assert!(self.out_len + 2 * HEADER + MAX_CIPHERTEXT + KEY_UPDATE_RECORD <= OUT_BUF);
        let out = &mut self.out[self.out_len..];
        let mut n = seal_to(&mut self.tx, content_type, pieces, out)?;
        if self.tx.seq >= self.tx.suite().records_per_key() {
            n += key_update_to(&mut self.tx, false, &mut out[n..])?;
        }
        self.out_len += n;
        Ok(())
    }

    /// Sends a KeyUpdate under the current key, then moves the sending side to the next one.
    pub(super) fn queue_key_update(&mut self, request_peer_update: bool) -> Result<(), TransportError> {
        self.out_len += key_update_to(&mut self.tx, request_peer_update, &mut self.out[self.out_len..])?;
        Ok(())
    }

    /// Reads at least `need` more bytes into `inbuf` (exactly `need` without read-ahead), making room first.
    fn fill(&mut self, need: usize) -> Result<(), TransportError> {
        if self.in_end + need > self.inbuf.len() {
            self.inbuf.copy_within(self.in_start..self.in_end, 0);
            self.in_end -= self.in_start;
            self.in_start = 0;
        }
        let target = self.in_end + need;
        while self.in_end < target {
            let limit = if self.read_ahead { self.inbuf.len() } else { target };
            let n = if self.deadline.is_some() {
                self.arm_deadline()?;
                match io::Read::read(&mut self.stream, &mut self.inbuf[self.in_end..limit]) {
                    Ok(0) => return Err(TransportError::Closed),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.io_error(e)),
                }
            } else {
                crate::tcp::read_some(&mut self.stream, &mut self.inbuf[self.in_end..limit], self.spin)?
            };
            self.in_end += n;
        }
        Ok(())
    }

    /// Opens the next record. Application data goes straight into `dest` when the whole record fits there
    /// (returns how many bytes it placed), else becomes the pending plaintext in `inbuf` (returns 0); key updates,
    /// tickets and alerts are dealt with here.
    fn next_record(&mut self, dest: &mut [u8]) -> Result<usize, TransportError> {
        let avail = self.in_end - self.in_start;
        if avail < HEADER {
            self.fill(HEADER - avail)?;
        }
        let mut header = [0u8; HEADER];
        header.copy_from_slice(&self.inbuf[self.in_start..self.in_start + HEADER]);
        let len = record_len(&header)?;
        let avail = self.in_end - self.in_start;
        if avail < HEADER + len {
            self.fill(HEADER + len - avail)?;
        }
        let body = self.in_start + HEADER;
        self.in_start = body + len;
        let inner_len = len - TAG_LEN;
        if inner_len <= dest.len() {
            self.rx
                .open_into(&header, &self.inbuf[body..body + len], &mut dest[..inner_len])
                .map_err(TransportError::Protocol)?;
            let (content_type, content_len) = content_type_of(&dest[..inner_len])?;
            if content_type == TYPE_APPDATA {
                return Ok(content_len);
            }
            // A control record (rare): handle it from inbuf, where its body is still free to overwrite.
            self.inbuf[body..body + content_len].copy_from_slice(&dest[..content_len]);
            self.control_record(content_type, body, body + content_len)?;
            return Ok(0);
        }
        let inner_len = self
            .rx
            .open(&header, &mut self.inbuf[body..body + len])
            .map_err(TransportError::Protocol)?;
        let (content_type, content_len) = content_type_of(&self.inbuf[body..body + inner_len])?;
        if content_type == TYPE_APPDATA {
            self.plain_pos = body;
            self.plain_end = body + content_len;
            return Ok(0);
        }
        self.control_record(content_type, body, body + content_len)?;
        Ok(0)
    }

    /// An alert or post-handshake message whose content is `inbuf[start..end]`.
    fn control_record(&mut self, content_type: u8, start: usize, end: usize) -> Result<(), TransportError> {
        match content_type {
            TYPE_ALERT => match &self.inbuf[start..end] {
                [_, 0] => Err(TransportError::Closed),
                [_, code] => Err(protocol(alert_text(*code))),
                _ => Err(protocol("malformed TLS alert".into())),
            },
            TYPE_HANDSHAKE => self.handshake_messages(start, end),
            other => Err(protocol(format!(
                "unexpected TLS content type {other} after the handshake"
            ))),
        }
    }

    /// Post-handshake messages: KeyUpdate (both sides) and NewSessionTicket (ignored; vGPU servers send none).
    fn handshake_messages(&mut self, mut at: usize, end: usize) -> Result<(), TransportError> {
        while at < end {
            if end - at < 4 {
                return Err(protocol("truncated TLS handshake message".into()));
            }
            let kind = self.inbuf[at];
            let len = u32::from_be_bytes([0, self.inbuf[at + 1], self.inbuf[at + 2], self.inbuf[at + 3]]) as usize;
            let next = at + 4 + len;
            if next > end {
                return Err(protocol("TLS handshake message split across records".into()));
            }
            match kind {
                HS_KEY_UPDATE if len == 1 && next == end => {
                    let requested = match self.inbuf[at + 4] {
                        0 => false,
                        1 => true,
                        _ => return Err(protocol("malformed TLS KeyUpdate".into())),
                    };
                    self.rx.update().map_err(TransportError::Protocol)?;
                    self.owe_key_update |= requested;
                }
                HS_NEW_SESSION_TICKET => {}
                other => return Err(protocol(format!("unexpected TLS handshake message {other}"))),
            }
            at = next;
        }
        Ok(())
    }

    /// Receives a hello framed as `[u32 LE length][payload]` (as `read_raw_hello` does on a plain socket),
    /// refusing a length above `max`; the hello must end a record, so nothing after it is read.
    pub fn recv_hello(&mut self, max: usize) -> Result<Vec<u8>, TransportError> {
        let mut len = [0u8; 4];
        self.recv_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > max {
            return Err(protocol(format!("hello of {len} bytes exceeds the limit of {max}")));
        }
        let mut payload = vec![0u8; len];
        self.recv_exact(&mut payload)?;
        Ok(payload)
    }
}

/// Bytes of a sealed KeyUpdate record.
const KEY_UPDATE_RECORD: usize = HEADER + 5 + 1 + TAG_LEN;

/// Seals one record of `content_type` holding `pieces` (at most `MAX_PLAIN` bytes in all) at the start of `out`;
/// returns its length. A record of one piece is sealed from the caller's memory; several are gathered first.
fn seal_to(
    tx: &mut DirectionKeys,
    content_type: u8,
    pieces: &[&[u8]],
    out: &mut [u8],
) -> Result<usize, TransportError> {
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    let body_len = len + 1 + TAG_LEN;
    let header = [TYPE_APPDATA, 3, 3, (body_len >> 8) as u8, body_len as u8];
    let (head, body) = out[..HEADER + body_len].split_at_mut(HEADER);
    head.copy_from_slice(&header);
    if let [piece] = pieces {
        let (ciphertext, type_and_tag) = body.split_at_mut(len);
        tx.seal_into(&header, piece, content_type, ciphertext, type_and_tag)
            .map_err(TransportError::Protocol)?;
    } else {
        let mut at = 0;
        for p in pieces {
            body[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        body[len] = content_type;
        let (inner, tag_out) = body.split_at_mut(len + 1);
        let tag = tx.seal(&header, inner).map_err(TransportError::Protocol)?;
        tag_out.copy_from_slice(&tag);
    }
    Ok(HEADER + body_len)
}

/// Seals a KeyUpdate at the start of `out` under the current key, then moves `tx` to the next key; returns the
/// record's length. The message has a record of its own, so it always ends its record (RFC 8446 §5.1).
fn key_update_to(tx: &mut DirectionKeys, request_peer_update: bool, out: &mut [u8]) -> Result<usize, TransportError> {
    let msg = [HS_KEY_UPDATE, 0, 0, 1, request_peer_update as u8];
    let n = seal_to(tx, TYPE_HANDSHAKE, &[&msg[..4], &msg[4..]], out)?;
    tx.update().map_err(TransportError::Protocol)?;
    Ok(n)
}

/// Checks a record header: an application-data record of TLS 1.3 of a plausible length; returns that length.
fn record_len(header: &[u8; HEADER]) -> Result<usize, TransportError> {
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    if header[0] != TYPE_APPDATA || header[1] != 3 || header[2] != 3 {
        return Err(protocol(format!(
            "not a TLS 1.3 application record (type {}, version {}.{})",
            header[0], header[1], header[2]
        )));
    }
    if !(TAG_LEN + 1..=MAX_CIPHERTEXT).contains(&len) {
        return Err(protocol(format!("TLS record of {len} bytes")));
    }
    Ok(len)
}

/// What a fatal alert after the handshake means for a vGPU client or server.
fn alert_text(code: u8) -> String {
    match code {
        116 => "the server requires a client certificate (mutual TLS): set VGPU_TLS_CLIENT_CERT and \
                VGPU_TLS_CLIENT_KEY"
            .into(),
        42..=46 | 48 => format!("the TLS peer rejected the certificate presented (alert {code})"),
        49 => "the TLS peer denied access (alert 49)".into(),
        _ => format!("the TLS peer sent alert {code}"),
    }
}

/// The content type of an inner plaintext (content, type byte, zero padding) and the content's length.
fn content_type_of(inner: &[u8]) -> Result<(u8, usize), TransportError> {
    let at = inner
        .iter()
        .rposition(|&b| b != 0)
        .ok_or_else(|| protocol("TLS record without a content type".into()))?;
    if at > MAX_PLAIN {
        return Err(protocol(format!("TLS record of {at} plaintext bytes")));
    }
    Ok((inner[at], at))
}

fn protocol(msg: String) -> TransportError {
    TransportError::Protocol(msg)
}

fn timed_out() -> TransportError {
    TransportError::Io(io::Error::new(
        io::ErrorKind::TimedOut,
        "the TLS peer did not finish in time",
    ))
}

impl Transport for TlsTransport {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        if self.owe_key_update {
            self.owe_key_update = false;
            self.queue_key_update(false)?;
        }
        // Gather the parts into records of MAX_PLAIN bytes; a record may span parts.
        let mut pieces: [&[u8]; 8] = [&[]; 8];
        let mut count = 0;
        let mut filled = 0;
        for part in parts {
            if part.len() >= pipeline::PIPELINE_MIN && self.deadline.is_none() && pipeline::enabled() {
                if count > 0 {
                    self.seal_record(TYPE_APPDATA, &pieces[..count])?;
                    count = 0;
                    filled = 0;
                }
                self.write_out()?;
                self.send_pipelined(part)?;
                continue;
            }
            let mut rest: &[u8] = part;
            while !rest.is_empty() {
                let take = rest.len().min(MAX_PLAIN - filled);
                pieces[count] = &rest[..take];
                count += 1;
                filled += take;
                rest = &rest[take..];
                if filled == MAX_PLAIN || count == pieces.len() {
                    self.seal_record(TYPE_APPDATA, &pieces[..count])?;
                    count = 0;
                    filled = 0;
                    if self.out_len >= FLUSH_AT {
                        self.write_out()?;
                    }
                }
            }
        }
        if count > 0 {
            self.seal_record(TYPE_APPDATA, &pieces[..count])?;
        }
        self.write_out()
    }

    fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        let mut filled = 0;
        while filled < buf.len() {
            if self.plain_pos == self.plain_end {
                let left = buf.len() - filled;
                if left >= pipeline::PIPELINE_MIN && self.read_ahead && self.deadline.is_none() && pipeline::enabled() {
                    filled += self.recv_pipelined(&mut buf[filled..])?;
                } else {
                    filled += self.next_record(&mut buf[filled..])?;
                }
                continue;
            }
            let n = (self.plain_end - self.plain_pos).min(buf.len() - filled);
            buf[filled..filled + n].copy_from_slice(&self.inbuf[self.plain_pos..self.plain_pos + n]);
            self.plain_pos += n;
            filled += n;
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "tls"
    }
}

impl Drop for TlsTransport {
    fn drop(&mut self) {
        if !self.notify_on_drop {
            return;
        }
        // close_notify (warning, 0), best effort: never block a thread that is going away.
        self.out_len = 0;
        if self.seal_record(TYPE_ALERT, &[&[1, 0]]).is_ok() {
            let _ = crate::sys::send_nonblocking(self.stream.as_raw_fd(), &self.out[..self.out_len]);
        }
    }
}
