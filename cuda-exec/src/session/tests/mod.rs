//! Session tests over the real wire protocol: a raw client (`Client`) speaks frames to a channel served on its own
//! thread over loopback TCP, as a worker serves a connection, against the emulated backend.

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use bytes::BytesMut;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;
use vgpu_dataplane::Transport;
use vgpu_transports::tcp::TcpTransport;
use zerocopy::{FromBytes, IntoBytes};

use crate::emulated::EmulatedBackend;
use crate::session::{Limits, Session};

mod coll;
mod gpudirect;
mod graph;
mod ipc;
mod limits;
mod multi;
mod peer;
mod peer_access;
mod vmm;

/// One client thread speaking the wire protocol to a channel of `session`.
pub(super) struct Client {
    t: TcpTransport,
    seq: u32,
    server: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    pub fn connect(session: &Arc<Session>) -> Client {
        let mut c = Client::connect_bare(session);
        // The primary context of device 0, current on this channel's thread (copies need one).
        c.ok(&PrimaryCtxRetain {
            ctx: ContextId(0x1000),
            dev: 0,
            _pad: 0,
        });
        c.post(&CtxSetCurrent { ctx: ContextId(0x1000) });
        c
    }

    /// A channel with no context current yet.
    pub fn connect_bare(session: &Arc<Session>) -> Client {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let s = session.clone();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut t = TcpTransport::from_stream(stream).expect("server transport");
            let _ = s.serve_channel(&mut t);
        });
        let t = TcpTransport::from_stream(TcpStream::connect(addr).expect("connect")).expect("transport");
        Client {
            t,
            seq: 0,
            server: Some(server),
        }
    }

    pub fn send<C: Call>(&mut self, c: &C, tail: &[u8]) {
        self.send_flagged(c, tail, 0);
    }

    /// `send` with header flags (`FLAG_PER_THREAD`, `FLAG_COLL_LANE`).
    pub fn send_flagged<C: Call>(&mut self, c: &C, tail: &[u8], flags: u16) {
        self.seq += 1;
        let mut buf = BytesMut::new();
        encode_request(&mut buf, self.seq, flags, c, tail);
        self.t.send(&[&buf]).expect("send");
    }

    /// Sends frames as they are (a hostile client's).
    pub fn send_raw(&mut self, parts: &[&[u8]]) {
        self.t.send(parts).expect("send");
    }

    /// The next result frame (pushed copies and printed output skipped): its code and payload.
    pub fn reply(&mut self) -> (u32, Vec<u8>) {
        self.reply_counting_pushes().0
    }

    /// The next result frame, and how many push frames came before it.
    fn reply_counting_pushes(&mut self) -> ((u32, Vec<u8>), usize) {
        let mut pushes = 0;
        loop {
            let mut head = [0u8; std::mem::size_of::<ReplyHeader>()];
            self.t.recv_exact(&mut head).expect("reply header");
            let h = ReplyHeader::read_from_bytes(&head[..]).expect("header layout");
            let mut payload = vec![0u8; h.len as usize];
            self.t.recv_exact(&mut payload).expect("reply payload");
            match h.kind {
                REPLY_KIND_RESULT => return ((h.result, payload), pushes),
                REPLY_KIND_PUSH => pushes += 1,
                _ => {}
            }
        }
    }

    /// A `Ping`, and the number of pushed copies that arrived before its reply.
    pub fn ping_counting_pushes(&mut self) -> usize {
        self.send(&Ping {}, &[]);
        let ((code, _), pushes) = self.reply_counting_pushes();
        assert_eq!(code, 0, "ping");
        pushes
    }

    pub fn post<C: AsyncCall>(&mut self, c: &C) {
        self.send(c, &[]);
    }

    /// A synchronous call: its CUresult and, on success, its reply body.
    pub fn call<C: SyncCall>(&mut self, c: &C, tail: &[u8]) -> CuResult<C::Reply> {
        self.send(c, tail);
        match self.reply() {
            (0, body) => Ok(C::Reply::read_from_prefix(&body).expect("reply body").0),
            (code, _) => Err(CUresult::from_code(code)),
        }
    }

    /// A synchronous call whose reply carries a tail after its body: the tail, or the call's error.
    pub fn call_tail<C: SyncCall>(&mut self, c: &C) -> CuResult<Vec<u8>> {
        self.send(c, &[]);
        match self.reply() {
            (0, body) => Ok(body[std::mem::size_of::<C::Reply>()..].to_vec()),
            (code, _) => Err(CUresult::from_code(code)),
        }
    }

    pub fn ok<C: SyncCall>(&mut self, c: &C) -> C::Reply {
        self.call(c, &[]).unwrap_or_else(|e| panic!("{c:?} failed with {e}"))
    }

    pub fn err<C: SyncCall>(&mut self, c: &C) -> CUresult {
        match self.call(c, &[]) {
            Ok(_) => panic!("{c:?} succeeded"),
            Err(e) => e,
        }
    }

    pub fn htod(&mut self, dst: u64, data: &[u8]) -> CuResult<()> {
        let c = MemcpyHtoD {
            dst: DevicePtr(dst),
            size: data.len() as u64,
        };
        self.call(&c, data).map(|_| ())
    }

    /// `cuMemcpyDtoH`: the reply carries the bytes, then a final status word.
    pub fn dtoh(&mut self, src: u64, size: u64) -> CuResult<Vec<u8>> {
        self.send(
            &MemcpyDtoH {
                src: DevicePtr(src),
                size,
            },
            &[],
        );
        let (code, mut payload) = self.reply();
        if code != 0 {
            return Err(CUresult::from_code(code));
        }
        let status = payload.split_off(payload.len() - 4);
        CUresult::from_code(u32::from_le_bytes([status[0], status[1], status[2], status[3]])).result()?;
        Ok(payload)
    }

    /// Closes the channel and waits for its server thread, which drops its reference to the session.
    pub fn close(mut self) {
        drop(self.t);
        if let Some(s) = self.server.take() {
            s.join().expect("server thread");
        }
    }
}

pub(super) fn emulated_session(limits: Limits) -> (Arc<EmulatedBackend>, Arc<Session>) {
    let backend = Arc::new(EmulatedBackend::new());
    let session = Session::new(backend.clone(), limits);
    (backend, session)
}

pub(super) fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// A byte-for-byte check that the table's declared tails are enforced before any handler runs.
#[test]
fn tails_are_held_to_the_call_table() {
    let (_backend, session) = emulated_session(Limits::default());
    let mut c = Client::connect(&session);
    // A name longer than MAX_NAME on a call whose tail is a name: the channel ends (the session survives).
    let long = vec![b'x'; MAX_NAME + 1];
    c.send(&ModuleGetGlobal { module: ModuleId(1) }, &long);
    let mut head = [0u8; 16];
    assert!(c.t.recv_exact(&mut head).is_err(), "the channel was closed");
    c.close();
    // A fresh channel of the same session still works.
    let mut d = Client::connect(&session);
    let a = d.ok(&MemAlloc { size: 4096 });
    d.htod(a.dptr.0, &pattern(4096, 1)).expect("copy on a new channel");
    d.close();
}

/// `cuMemcpyAtoA` end to end on the emulated backend: bytes move between two arrays, out-of-range and foreign
/// arrays are refused with the native codes.
#[test]
fn array_to_array_copies_move_bytes_and_check_bounds() {
    let (_backend, session) = emulated_session(Limits::default());
    let mut c = Client::connect(&session);
    let create = |id: u64| ArrayCreate {
        array: ArrayId(id),
        width: 256,
        height: 0,
        depth: 0,
        format: 0x20, // CU_AD_FORMAT_FLOAT: 4-byte elements
        channels: 1,
        flags: 0,
        _pad: 0,
    };
    c.ok(&create(0x10));
    c.ok(&create(0x20));
    let data = pattern(1024, 3);
    let put = ArrayCopy {
        array: ArrayId(0x10),
        width_bytes: 1024,
        height: 1,
        depth: 1,
        direction: 0,
        ..Default::default()
    };
    c.call(&put, &data).expect("host to array");
    c.ok(&MemcpyAtoA {
        dst: ArrayId(0x20),
        dst_offset: 512,
        src: ArrayId(0x10),
        src_offset: 0,
        size: 512,
    });
    let get = ArrayCopy {
        array: ArrayId(0x20),
        width_bytes: 1024,
        height: 1,
        depth: 1,
        direction: 1,
        ..Default::default()
    };
    c.send(&get, &[]);
    let (code, back) = c.reply();
    assert_eq!(code, 0);
    assert_eq!(&back[512..], &data[..512], "the copied half");
    assert!(back[..512].iter().all(|&b| b == 0), "the rest untouched");
    let past_end = MemcpyAtoA {
        dst: ArrayId(0x20),
        dst_offset: 768,
        src: ArrayId(0x10),
        src_offset: 0,
        size: 512,
    };
    assert_eq!(c.err(&past_end), CUDA_ERROR_INVALID_VALUE);
    let odd = MemcpyAtoA { size: 6, ..past_end };
    assert_eq!(
        c.err(&MemcpyAtoA { dst_offset: 0, ..odd }),
        CUDA_ERROR_INVALID_VALUE,
        "not whole elements"
    );
    let foreign = MemcpyAtoA {
        src: ArrayId(0x999),
        dst_offset: 0,
        ..past_end
    };
    assert_eq!(c.err(&foreign), CUDA_ERROR_INVALID_HANDLE);
    let _ = MemAccessDesc::default().as_bytes();
    c.close();
}

/// NVML's PCIe link and field values on the emulated backend: the device's fixed link, link counts of 0 and
/// NOT_SUPPORTED for fields it has no counter for; more fields than the bound end the channel.
#[test]
fn nvml_pcie_and_field_values_answer_for_the_emulated_device() {
    let (_backend, session) = emulated_session(Limits::default());
    let mut c = Client::connect(&session);
    let link = c.ok(&NvmlDevicePcie { device: 0, _pad: 0 });
    assert_eq!(
        link.valid,
        NVML_PCIE_CURR_GEN | NVML_PCIE_CURR_WIDTH | NVML_PCIE_MAX_GEN | NVML_PCIE_MAX_WIDTH
    );
    assert_eq!(
        (link.curr_gen, link.curr_width, link.max_gen, link.max_width),
        (5, 16, 5, 16)
    );
    assert_eq!(c.err(&NvmlDevicePcie { device: 3, _pad: 0 }), CUDA_ERROR_INVALID_DEVICE);
    let asked = [
        NvmlFieldRequest {
            field_id: vgpu_cuda_sys::nvml::NVML_FI_DEV_NVLINK_LINK_COUNT,
            scope_id: 0,
        },
        NvmlFieldRequest {
            field_id: 83,
            scope_id: 0,
        },
    ];
    let tail: Vec<u8> = asked.iter().flat_map(|f| f.as_bytes().to_vec()).collect();
    c.send(&NvmlFieldValues { device: 0, count: 2 }, &tail);
    let (code, body) = c.reply();
    assert_eq!(code, 0);
    let values: Vec<NvmlFieldValue> = body
        .chunks_exact(std::mem::size_of::<NvmlFieldValue>())
        .filter_map(|b| NvmlFieldValue::read_from_bytes(b).ok())
        .collect();
    assert_eq!(values.len(), 2);
    assert_eq!((values[0].field_id, values[0].nvml_return, values[0].value), (91, 0, 0));
    assert_eq!(
        (values[1].field_id, values[1].nvml_return),
        (83, 3),
        "NVML_ERROR_NOT_SUPPORTED"
    );
    let too_many = vec![0u8; (MAX_NVML_FIELDS + 1) * 8];
    c.send(
        &NvmlFieldValues {
            device: 0,
            count: (MAX_NVML_FIELDS + 1) as u32,
        },
        &too_many,
    );
    let mut head = [0u8; 16];
    assert!(c.t.recv_exact(&mut head).is_err(), "the channel was closed");
    c.close();
}

/// `MirrorDigest` hashes a host mirror chunk by chunk by the rule the client hashes what it pushed with; managed
/// memory too; a range the session does not own (past a mirror's end, or nowhere) is refused.
#[test]
fn mirror_digests_follow_the_shared_rule_and_stay_inside_mirrors() {
    use vgpu_dataplane::digest;
    let (_backend, session) = emulated_session(Limits::default());
    let mut c = Client::connect(&session);
    let size = 3 * digest::CHUNK as u64;
    let dptr = c
        .ok(&HostMirrorMap {
            addr: HostAddr(0x6100_0000_0000),
            size,
        })
        .dptr;
    let data = pattern(size as usize, 9);
    c.htod(dptr.0, &data).expect("fill the mirror");
    let hashes = |h: Vec<u64>| -> Vec<u8> { h.iter().flat_map(|v| v.to_le_bytes()).collect() };
    let whole = c.call_tail(&MirrorDigest { dptr, size });
    assert_eq!(whole, Ok(hashes(digest::chunk_hashes(&data))));
    let middle = c.call_tail(&MirrorDigest {
        dptr: dptr.offset(digest::CHUNK as u64),
        size: digest::CHUNK as u64,
    });
    assert_eq!(
        middle,
        Ok(hashes(vec![digest::chunk_hash(
            &data[digest::CHUNK..2 * digest::CHUNK]
        )]))
    );
    let past = MirrorDigest {
        dptr: dptr.offset(digest::CHUNK as u64),
        size,
    };
    assert_eq!(c.err(&past), CUDA_ERROR_INVALID_VALUE);
    // Managed memory is mirrored by the client the same way: its own memory is hashed too.
    let managed = c.ok(&MemAllocManaged {
        size: 4096,
        flags: 1,
        _pad: 0,
    });
    let zeros = c.call_tail(&MirrorDigest {
        dptr: managed.dptr,
        size: 4096,
    });
    assert_eq!(zeros, Ok(hashes(vec![digest::chunk_hash(&[0u8; 4096])])));
    // Memory the session does not own is refused.
    let beyond = MirrorDigest {
        dptr: DevicePtr(0x10),
        size: 4096,
    };
    assert_ne!(c.call_tail(&beyond), Ok(Vec::new()));
    assert!(c.call_tail(&beyond).is_err());
    c.close();
}
