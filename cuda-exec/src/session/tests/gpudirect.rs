//! GPUDirect RDMA's channel side, without an RDMA device: a transport that says it moves device memory and does so
//! through the backend's export (as the RDMA transport's registration does) stands between the channel and TCP.
//! Synchronous copies of 1 MiB or more into and out of a listed allocation take that path, as do asynchronous uploads
//! on an idle stream of the app's; smaller ones, uploads on the NULL stream, and memory freed since, do not. The RDMA transport's own half runs in the Soft-RoCE VM (`transports/tests/rdma.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};

use vgpu_dataplane::pinned;
use vgpu_dataplane::transport::TransportError;

use super::*;

/// Moves device bytes by mapping the exported memory, counting what it moved so.
struct DirectFake {
    inner: TcpTransport,
    sent: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
}

impl DirectFake {
    /// The mapping of the exported range holding `len` bytes at `addr`, and `addr`'s offset in it.
    fn map(addr: u64, len: usize) -> Option<(crate::sys::SharedRegion, usize)> {
        let range = pinned::DEVICE.find(addr as usize, len)?;
        let export = (pinned::device_exporter()?)(range.addr, range.len).ok()?;
        let at = export.offset as usize + (addr as usize - range.addr);
        let region = crate::sys::SharedRegion::map(&export.fd, export.offset as usize + export.len, 0).ok()?;
        Some((region, at))
    }
}

impl Transport for DirectFake {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        self.inner.send(parts)
    }
    fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        self.inner.recv_exact(buf)
    }
    fn kind(&self) -> &'static str {
        "direct-fake"
    }
    fn moves_device_memory(&self) -> bool {
        true
    }
    fn send_device(&mut self, addr: u64, len: usize) -> Result<bool, TransportError> {
        let Some((region, at)) = Self::map(addr, len) else {
            return Ok(false);
        };
        self.inner.send(&[&region.as_slice()[at..at + len]])?;
        self.sent.fetch_add(len, Ordering::Relaxed);
        Ok(true)
    }
    fn recv_device(
        &mut self,
        addr: u64,
        len: usize,
        _inline: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<bool, TransportError> {
        let Some((mut region, at)) = Self::map(addr, len) else {
            return Ok(false);
        };
        self.inner.recv_exact(&mut region.as_mut_slice()[at..at + len])?;
        self.received.fetch_add(len, Ordering::Relaxed);
        Ok(true)
    }
}

#[test]
fn copies_of_listed_memory_move_directly_and_the_rest_through_staging() {
    // Addresses of its own (virtual GPU 9): the device listing is the process's, and other tests' sessions place
    // their memory at the default addresses.
    let as_dyn: Arc<dyn crate::backend::Backend> = Arc::new(EmulatedBackend::with_identity(9));
    let session = Session::new(as_dyn.clone(), Limits::default());
    let line = crate::gpudirect::enable(&as_dyn, crate::gpudirect::Setting::On, Ok(()));
    assert!(line.starts_with("GPUDirect RDMA: on"), "{line}");
    let (sent, received) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let s = session.clone();
    let (fs, fr) = (sent.clone(), received.clone());
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let inner = TcpTransport::from_stream(stream).expect("server transport");
        let t = DirectFake {
            inner,
            sent: fs,
            received: fr,
        };
        // As a worker serves a connection: behind the stall watch, which follows the frames.
        let mut guarded = crate::stall::StallWatch::global(std::time::Duration::from_secs(60)).guard(t, fd);
        let _ = s.serve_channel(&mut guarded);
    });
    let t = TcpTransport::from_stream(TcpStream::connect(addr).expect("connect")).expect("transport");
    let mut c = Client {
        t,
        seq: 0,
        server: Some(server),
    };
    c.ok(&PrimaryCtxRetain {
        ctx: ContextId(0x1000),
        dev: 0,
        _pad: 0,
    });
    c.post(&CtxSetCurrent { ctx: ContextId(0x1000) });
    let mib = 1usize << 20;
    let d = c.ok(&MemAlloc { size: 4 * mib as u64 }).dptr.get();
    let data = pattern(2 * mib, 7);
    c.htod(d + 4096, &data).expect("upload");
    assert_eq!(
        received.load(Ordering::Relaxed),
        2 * mib,
        "the upload went into device memory directly"
    );
    assert_eq!(c.dtoh(d + 4096, 2 * mib as u64).expect("download"), data);
    assert_eq!(
        sent.load(Ordering::Relaxed),
        2 * mib,
        "the download was sent from device memory"
    );
    // Below 1 MiB: through staging, the same bytes.
    let small = pattern(512 << 10, 9);
    c.htod(d, &small).expect("small upload");
    assert_eq!(c.dtoh(d, small.len() as u64).expect("small download"), small);
    assert_eq!(
        (received.load(Ordering::Relaxed), sent.load(Ordering::Relaxed)),
        (2 * mib, 2 * mib)
    );
    // The direct bytes and the staged ones are one memory: a staged read sees what the direct upload wrote.
    assert_eq!(
        c.dtoh(d + 4096 + (512 << 10), 4096).expect("staged read"),
        data[512 << 10..(512 << 10) + 4096]
    );
    // Asynchronous uploads: on an idle stream of the app's own, directly (nothing queued can be ahead of them); on
    // the NULL stream, whose implicit ordering with other streams a query does not show, through host memory.
    let stream = StreamId(0x100);
    c.post(&StreamCreate {
        stream,
        flags: 1,
        priority: 0,
    });
    let later = pattern(2 * mib, 11);
    let upload = |dst: u64, size: usize, stream| MemcpyHtoDAsync {
        dst: DevicePtr(dst),
        size: size as u64,
        stream,
    };
    c.send(&upload(d + mib as u64, 2 * mib, stream), &later);
    c.ok(&StreamSynchronize { stream });
    assert_eq!(
        received.load(Ordering::Relaxed),
        4 * mib,
        "the async upload went in directly"
    );
    assert_eq!(c.dtoh(d + mib as u64, 2 * mib as u64).expect("download"), later);
    c.send(&upload(d, mib, StreamId::NULL), &later[..mib]);
    assert_eq!(c.dtoh(d, mib as u64).expect("download"), later[..mib]);
    assert_eq!(received.load(Ordering::Relaxed), 4 * mib, "on the NULL stream: staged");
    // Freed memory is no longer listed: its copies fail as before, none directly.
    c.ok(&MemFree { dptr: DevicePtr(d) });
    assert!(
        pinned::DEVICE.find(d as usize, 1).is_none(),
        "a freed allocation is unlisted"
    );
    assert_eq!(c.htod(d, &data), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(received.load(Ordering::Relaxed), 4 * mib);
    c.close();
}
