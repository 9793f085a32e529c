//! Large transfers on two threads: while one thread seals (or opens) a batch of records, a second one writes the
//! previous batch to the socket (or reads the next one). Each side then costs the larger of the crypto and the
//! kernel's copy rather than their sum, which is what keeps TLS near plain TCP's bandwidth on hosts with cores to
//! spare. Batches are owned buffers passed through channels; the threads are scoped to the one transfer.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread;

use vgpu_dataplane::transport::TransportError;

use super::{
    content_type_of, key_update_to, protocol, record_len, seal_to, TlsTransport, HEADER, MAX_CIPHERTEXT, MAX_PLAIN,
    TAG_LEN, TYPE_APPDATA,
};
use crate::{io_to_transport, send_all};

/// Transfers at least this large go through the pipeline.
pub(super) const PIPELINE_MIN: usize = 1 << 20;
/// Records per batch (512 KiB of plaintext).
const BATCH_RECORDS: usize = 32;
/// A batch buffer: its records, a key update after each, sealed.
const BATCH_BUF: usize = BATCH_RECORDS * (2 * HEADER + MAX_CIPHERTEXT + 6 + TAG_LEN);
/// A read batch is handed on once it holds this much (or the transfer needs no more).
const READ_FILL: usize = 256 * 1024;

/// A batch buffer with the bytes of it in use.
type Batch = (Box<[u8]>, usize);
/// What the reader thread leaves: the start of a record it did not finish, and the buffers it still holds.
type ReadRest = (Vec<u8>, Vec<Box<[u8]>>);

/// Whether large transfers use a second thread: `VGPU_TLS_PIPELINE=1`/`0`, else when the host has at least four
/// cores (with fewer, the second thread mostly competes with the peer's).
pub(super) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| match std::env::var("VGPU_TLS_PIPELINE").ok().as_deref() {
        Some("1") | Some("on") => true,
        Some("0") | Some("off") => false,
        _ => thread::available_parallelism().is_ok_and(|n| n.get() >= 4),
    })
}

impl TlsTransport {
    fn take_batches(&mut self) -> Vec<Box<[u8]>> {
        let mut b = std::mem::take(&mut self.batches);
        while b.len() < 2 {
            b.push(vec![0u8; BATCH_BUF].into_boxed_slice());
        }
        b
    }

    /// Seals `data` in batches while a second thread writes the previous batch. Called with nothing waiting in
    /// `out`, so the stream's order is kept.
    pub(super) fn send_pipelined(&mut self, data: &[u8]) -> Result<(), TransportError> {
        debug_assert_eq!(self.out_len, 0);
        let fd = self.stream.as_raw_fd();
        let mut free = self.take_batches();
        let (full_tx, full_rx) = sync_channel::<Batch>(1);
        let (empty_tx, empty_rx) = sync_channel::<Box<[u8]>>(2);
        let (sealed, written) = thread::scope(|s| {
            let writer = s.spawn(move || write_batches(fd, full_rx, empty_tx));
            let mut sealed = Ok(());
            for chunk in data.chunks(BATCH_RECORDS * MAX_PLAIN) {
                let Some(mut buf) = free.pop().or_else(|| empty_rx.recv().ok()) else {
                    break; // the writer failed: its error says why
                };
                match self.seal_batch(chunk, &mut buf) {
                    Ok(len) => {
                        if full_tx.send((buf, len)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        sealed = Err(e);
                        free.push(buf);
                        break;
                    }
                }
            }
            drop(full_tx);
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the TLS writer thread panicked")));
            (sealed, written)
        });
        free.extend(empty_rx.try_iter());
        self.batches = free;
        sealed?;
        written.map_err(|e| self.io_error(e))
    }

    /// Seals `chunk` into `buf` as full records (a key update after any record that exhausts its key).
    fn seal_batch(&mut self, chunk: &[u8], buf: &mut [u8]) -> Result<usize, TransportError> {
        let mut at = 0;
        for piece in chunk.chunks(MAX_PLAIN) {
            at += seal_to(&mut self.tx, TYPE_APPDATA, &[piece], &mut buf[at..])?;
            if self.tx.seq >= self.tx.suite().records_per_key() {
                at += key_update_to(&mut self.tx, false, &mut buf[at..])?;
            }
        }
        Ok(at)
    }

    /// Receives into `dest` while a second thread reads the next batch of records; returns how much of `dest` it
    /// filled (the last records, which the reader may not fetch, are left to the ordinary path). Called with no
    /// plaintext pending; whatever ciphertext was buffered starts the first batch.
    pub(super) fn recv_pipelined(&mut self, dest: &mut [u8]) -> Result<usize, TransportError> {
        let carry = self.inbuf[self.in_start..self.in_end].to_vec();
        self.in_start = 0;
        self.in_end = 0;
        // The peer must still send at least this many bytes (records are never smaller than their plaintext):
        // reading no more than that can never wait for bytes that are not coming.
        let allowed = dest.len().saturating_sub(carry.len());
        let fd = self.stream.as_raw_fd();
        let free = self.take_batches();
        let (full_tx, full_rx) = sync_channel::<Batch>(1);
        let (empty_tx, empty_rx) = sync_channel::<Box<[u8]>>(2);
        for b in free {
            let _ = empty_tx.send(b);
        }
        let (opened, read) = thread::scope(|s| {
            let reader = s.spawn(move || read_batches(fd, carry, allowed, empty_rx, full_tx));
            let mut filled = 0;
            let mut opened = Ok(());
            let mut returned = Vec::new();
            for (buf, len) in full_rx.iter() {
                let r = self.open_batch(&buf[..len], &mut dest[filled..]);
                if let Err(back) = empty_tx.send(buf) {
                    returned.push(back.0);
                }
                match r {
                    Ok(n) => filled += n,
                    Err(e) => {
                        opened = Err(e);
                        break;
                    }
                }
            }
            if opened.is_err() {
                // The channel is over; wake the reader if it waits for bytes.
                crate::sys::shutdown_read(fd);
            }
            drop(empty_tx);
            drop(full_rx);
            let read = reader
                .join()
                .unwrap_or_else(|_| Err(TransportError::Protocol("the TLS reader thread panicked".into())));
            (opened.map(|()| (filled, returned)), read)
        });
        let (filled, returned) = opened?;
        let (carry, mut batches) = read?;
        batches.extend(returned);
        self.batches = batches;
        // The reader stopped within a record: it continues on the ordinary path.
        self.inbuf[..carry.len()].copy_from_slice(&carry);
        self.in_end = carry.len();
        Ok(filled)
    }

    /// Opens every record of `records` (whole records only) into `dest` in order; returns the bytes placed.
    fn open_batch(&mut self, mut records: &[u8], dest: &mut [u8]) -> Result<usize, TransportError> {
        let mut filled = 0;
        while !records.is_empty() {
            let mut header = [0u8; HEADER];
            header.copy_from_slice(&records[..HEADER]);
            let len = record_len(&header)?;
            let body = &records[HEADER..HEADER + len];
            records = &records[HEADER + len..];
            let inner_len = len - TAG_LEN;
            let out = dest
                .get_mut(filled..filled + inner_len)
                .ok_or_else(|| protocol("a TLS record overruns the data expected".into()))?;
            self.rx
                .open_into(&header, body, out)
                .map_err(TransportError::Protocol)?;
            let (content_type, content_len) = content_type_of(out)?;
            if content_type == TYPE_APPDATA {
                filled += content_len;
            } else {
                // A key update or an alert between data records: handled where control records are.
                self.inbuf[..content_len].copy_from_slice(&out[..content_len]);
                self.control_record(content_type, 0, content_len)?;
            }
        }
        Ok(filled)
    }
}

/// The writer thread: writes each sealed batch, hands the buffer back.
fn write_batches(fd: RawFd, full: Receiver<Batch>, empty: SyncSender<Box<[u8]>>) -> io::Result<()> {
    for (buf, len) in full.iter() {
        send_all(fd, &[&buf[..len]])?;
        if empty.send(buf).is_err() {
            break;
        }
    }
    Ok(())
}

/// The reader thread: fills batches with whole records (a record cut at a batch's end starts the next one),
/// reading at most `allowed` bytes; returns the bytes of a last, incomplete record and the unused buffers.
fn read_batches(
    fd: RawFd,
    mut carry: Vec<u8>,
    mut allowed: usize,
    empty: Receiver<Box<[u8]>>,
    full: SyncSender<Batch>,
) -> Result<ReadRest, TransportError> {
    let mut spare = Vec::new();
    while allowed > 0 {
        let Ok(mut buf) = empty.recv() else { break };
        buf[..carry.len()].copy_from_slice(&carry);
        let mut len = carry.len();
        while allowed > 0 && len < buf.len() && len - carry.len() < READ_FILL {
            let want = (buf.len() - len).min(allowed);
            let n = read_some(fd, &mut buf[len..len + want])?;
            len += n;
            allowed -= n;
        }
        let whole = whole_records(&buf[..len])?;
        carry = buf[whole..len].to_vec();
        if whole == 0 {
            spare.push(buf);
            continue;
        }
        if full.send((buf, whole)).is_err() {
            break;
        }
    }
    spare.extend(empty.try_iter());
    Ok((carry, spare))
}

/// The length of the prefix of `bytes` made of whole records (headers checked).
fn whole_records(bytes: &[u8]) -> Result<usize, TransportError> {
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let mut header = [0u8; HEADER];
        header.copy_from_slice(&bytes[at..at + HEADER]);
        let len = record_len(&header)?;
        if bytes.len() - at < HEADER + len {
            break;
        }
        at += HEADER + len;
    }
    debug_assert!(bytes.len() - at < HEADER + MAX_CIPHERTEXT);
    Ok(at)
}

fn read_some(fd: RawFd, buf: &mut [u8]) -> Result<usize, TransportError> {
    loop {
        match crate::sys::recv_blocking(fd, buf) {
            Ok(0) => return Err(TransportError::Closed),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_to_transport(e)),
        }
    }
}
