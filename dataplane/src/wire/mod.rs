//! Message encodings: a 16-byte frame header, then one fixed-layout little-endian body per remoted call, then a
//! raw tail (kernel arguments, copy data, module images, names) that is never serialized, only appended.
//!
//! The calls themselves are rows of one table (`calls.rs`, `call_table!`); this module turns each row into a
//! struct, an `Op` code and a `Call` impl. Reply bodies and shared value types live in `types.rs`, the function
//! table a module load returns in `function_table.rs`.

use bytes::{BufMut, BytesMut};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub use crate::ids::*;

#[macro_use]
mod calls;
mod function_table;
mod graph;
mod ipc;
mod types;

pub use function_table::*;
pub use graph::*;
pub use ipc::*;
pub use types::*;

/// Largest fixed body any call has; a header announcing more is malformed.
pub const MAX_BODY: usize = 256;
/// Header flag: the call came through a `_ptds`/`_ptsz` entry point (per-thread default stream semantics).
pub const FLAG_PER_THREAD: u16 = 1;
/// Header flag of `CollRun`: run on the stream's lane, the app's stream held on the GPU behind it, the channel going
/// on (a collective issued inside an NCCL group); without it the channel waits for the collective
/// (`cuda-exec/src/session/lane.rs`, `VGPU_COLL_WAIT`).
pub const FLAG_COLL_LANE: u16 = 2;

/// Precedes every request. `len` counts body and tail; `body_len` the fixed body alone.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct RequestHeader {
    pub len: u32,
    pub op: u16,
    pub flags: u16,
    pub body_len: u32,
    pub seq: u32,
}

impl RequestHeader {
    /// Bytes after the fixed body.
    pub fn tail_len(&self) -> usize {
        (self.len - self.body_len) as usize
    }
}

/// Kind of server→client frame: the reply to the pending synchronous call, or data for an earlier async copy.
pub const REPLY_KIND_RESULT: u32 = 0;
pub const REPLY_KIND_PUSH: u32 = 1;
/// A frame of bytes the server's driver printed to its standard output for this session (device-side
/// `printf`): the client writes them to the app's own stdout, where the native driver prints them.
pub const REPLY_KIND_STDOUT: u32 = 2;

/// Precedes every server→client frame. `len` counts the bytes after the header.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct ReplyHeader {
    pub len: u32,
    pub result: u32,
    pub kind: u32,
    pub seq: u32,
}

impl ReplyHeader {
    /// The call's outcome as a CUresult (the wire carries its number).
    pub fn status(&self) -> crate::cuerr::CUresult {
        crate::cuerr::CUresult::from_code(self.result)
    }
}

/// Body of a push frame: the client's pending device-to-host copy `id` completed; `len` bytes follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct PushHeader {
    pub pending_id: u64,
    pub len: u64,
}

/// A malformed frame. The server ends the session that sent it; the client treats it as a lost server.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("unknown operation code {0}")]
    UnknownOp(u16),
    #[error("body of {got} bytes where operation {op:?} has {want}")]
    BodySize { op: Op, got: usize, want: usize },
    #[error("frame header inconsistent: len {len}, body_len {body_len}")]
    BadHeader { len: u32, body_len: u32 },
    #[error("tail of {got} bytes where at most {max} are allowed for {op:?}")]
    TailTooLong { op: Op, got: usize, max: usize },
    #[error("{0}")]
    Malformed(&'static str),
}

/// One remoted call: its body layout, operation code, whether the client waits for a reply, and its tail.
pub trait Call: IntoBytes + FromBytes + Immutable + KnownLayout + Copy + Sized + std::fmt::Debug {
    const OP: Op;
    /// Synchronous calls get a reply frame; asynchronous ones never do (their errors latch on the server).
    const SYNC: bool;
    /// What follows the fixed body.
    const TAIL: Tail;
    /// The fixed reply body of a synchronous call (`Empty` when only the CUresult matters).
    type Reply: IntoBytes + FromBytes + Immutable + KnownLayout + Copy + Default;
}

/// A call the client waits for: only these may be sent with a function that awaits a reply.
pub trait SyncCall: Call {}
/// A call sent without waiting: only these may be queued in a batch.
pub trait AsyncCall: Call {}

/// The tail that follows a call's fixed body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Nothing: a frame announcing a tail is malformed.
    None,
    /// At most this many bytes, read whole before the call is served (memory grows with what arrives).
    Bytes(usize),
    /// Bulk data the server reads itself, piece by piece, into its own buffers (copies).
    Streamed,
}

/// Largest kernel argument buffer (CUDA 12.1+ allows 32764 bytes of parameters).
pub const MAX_ARGS: usize = 32 * 1024;
/// Largest symbol name a call carries.
pub const MAX_NAME: usize = 4096;
/// Largest module or library image (fat binaries of big libraries reach hundreds of MiB).
pub const MAX_IMAGE: usize = crate::image::MAX_IMAGE as usize;
/// Largest block-size table of `OccupancyPotentialBlockSize` (one u64 per block size up to 1024).
pub const MAX_BLOCK_TABLE: usize = 1024 * 8;
/// Largest array copy one call carries.
pub const MAX_ARRAY_COPY: usize = 1 << 30;
/// Largest texture/surface descriptor tail.
pub const MAX_TEX_DESCS: usize = RESOURCE_DESC_LEN + TEXTURE_DESC_LEN + RESOURCE_VIEW_DESC_LEN;
/// Largest `MemSetAccess` tail.
pub const MAX_ACCESS_BYTES: usize = MAX_ACCESS_DESCS * std::mem::size_of::<MemAccessDesc>();
/// Largest `StreamMemOps` tail.
pub const MAX_MEM_OP_BYTES: usize = MAX_MEM_OPS * std::mem::size_of::<MemOp>();
/// `SetDeviceNumbering`'s tail: a pair of u32 for each device a server may report.
pub const MAX_NUMBERING_BYTES: usize = crate::handshake::MAX_DEVICES as usize * 8;
/// Longest endpoint text a server-to-server copy names (`tls://host:port#sha256=...` fits many times over).
pub const MAX_PEER_ENDPOINT: usize = 512;

/// What a sending server writes first on a peer connection: its own outcome so far (0, or the CUresult that
/// stops the copy before any byte) and the length that follows. Then `size` bytes, then the sender's final
/// status (u32); the receiver answers with its own final status (u32) once the bytes are on its device.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct PeerHeader {
    pub status: u32,
    pub _pad: u32,
    pub size: u64,
}

/// Reply body of calls that return only a CUresult.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct Empty {}

/// Turns the call table's rows into wire structs, `Op` codes and `Call` impls.
macro_rules! define_calls {
    ($(
        $(#[$doc:meta])*
        $name:ident = $op:literal, $mode:ident $(, $tail:ident $(($max:expr))?)? { $($field:ident : $ty:ty),* $(,)? }
            -> $reply:ty $(=> $backend:ident ( $($barg:ident : $bty:ty),* ) = $driver:ident)?;
    )*) => {
        /// Operation codes, one per remoted call.
        #[repr(u16)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Op { $( $name = $op, )* }

        impl Op {
            pub fn from_u16(v: u16) -> Result<Op, WireError> {
                match v { $( $op => Ok(Op::$name), )* other => Err(WireError::UnknownOp(other)) }
            }
            /// Size of the fixed body of this operation.
            pub fn body_len(self) -> usize {
                match self { $( Op::$name => std::mem::size_of::<$name>(), )* }
            }
            pub fn is_sync(self) -> bool {
                match self { $( Op::$name => <$name as Call>::SYNC, )* }
            }
            /// What follows this operation's fixed body.
            pub fn tail(self) -> Tail {
                match self { $( Op::$name => <$name as Call>::TAIL, )* }
            }
            pub const ALL: &'static [Op] = &[ $( Op::$name, )* ];
        }

        $(
            $(#[$doc])*
            #[repr(C)]
            #[derive(Debug, Clone, Copy, Default, PartialEq, IntoBytes, FromBytes, Immutable, KnownLayout)]
            pub struct $name { $( pub $field: $ty, )* }

            impl Call for $name {
                const OP: Op = Op::$name;
                const SYNC: bool = define_calls!(@sync $mode);
                const TAIL: Tail = define_calls!(@tail $($tail $(($max))?)?);
                type Reply = $reply;
            }
            define_calls!(@marker $mode $name);
        )*
    };
    (@sync sync) => { true };
    (@sync async) => { false };
    (@marker sync $name:ident) => { impl SyncCall for $name {} };
    (@marker async $name:ident) => { impl AsyncCall for $name {} };
    (@tail) => { Tail::None };
    (@tail streamed) => { Tail::Streamed };
    (@tail bytes($max:expr)) => { Tail::Bytes($max) };
}

call_table!(define_calls);

/// Builds the header of a request whose tail has `tail_len` bytes.
pub fn request_header<C: Call>(seq: u32, flags: u16, tail_len: usize) -> RequestHeader {
    let body_len = std::mem::size_of::<C>() as u32;
    RequestHeader {
        len: body_len + tail_len as u32,
        op: C::OP as u16,
        flags,
        body_len,
        seq,
    }
}

/// Appends one whole request (header, body, tail) to a batch buffer.
pub fn encode_request<C: Call>(buf: &mut BytesMut, seq: u32, flags: u16, call: &C, tail: &[u8]) {
    let header = request_header::<C>(seq, flags, tail.len());
    buf.reserve(std::mem::size_of::<RequestHeader>() + header.len as usize);
    buf.put_slice(header.as_bytes());
    buf.put_slice(call.as_bytes());
    buf.put_slice(tail);
}

/// Checks a received request header: known op, body of that op's exact size, no length overflow.
pub fn check_request_header(header: &RequestHeader) -> Result<Op, WireError> {
    let op = Op::from_u16(header.op)?;
    if header.body_len > header.len {
        return Err(WireError::BadHeader {
            len: header.len,
            body_len: header.body_len,
        });
    }
    let want = op.body_len();
    if header.body_len as usize != want {
        return Err(WireError::BodySize {
            op,
            got: header.body_len as usize,
            want,
        });
    }
    Ok(op)
}

/// Reads a call's fixed body.
pub fn decode_body<C: Call>(body: &[u8]) -> Result<C, WireError> {
    C::read_from_bytes(body).map_err(|_| WireError::BodySize {
        op: C::OP,
        got: body.len(),
        want: std::mem::size_of::<C>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn op_codes_are_unique_and_bodies_small() {
        let mut seen = std::collections::HashSet::new();
        for op in Op::ALL {
            assert!(seen.insert(*op as u16), "duplicate op {op:?}");
            assert!(op.body_len() <= MAX_BODY, "{op:?} body too large");
            assert_eq!(op.body_len() % 8, 0, "{op:?} body not 8-byte aligned in size");
            assert_eq!(Op::from_u16(*op as u16), Ok(*op));
        }
        assert_eq!(Op::from_u16(0xffff), Err(WireError::UnknownOp(0xffff)));
    }

    #[test]
    fn launch_encoding_is_pinned() {
        let mut buf = BytesMut::new();
        let call = LaunchKernel {
            function: FunctionId(0x1001),
            stream: StreamId::PER_THREAD,
            dims: LaunchDims {
                grid: [4, 1, 1],
                block: [256, 1, 1],
                shared_mem: 0,
                cooperative: 0,
            },
        };
        encode_request(&mut buf, 7, 0, &call, &[0xaa, 0xbb, 0xcc, 0xdd, 0, 0, 0, 0]);
        snapshot!(hex(&buf));
    }

    #[test]
    fn memcpy_and_alloc_encodings_are_pinned() {
        let mut buf = BytesMut::new();
        encode_request(
            &mut buf,
            1,
            FLAG_PER_THREAD,
            &MemcpyHtoD {
                dst: DevicePtr(0x7f00_0000_1000),
                size: 3,
            },
            b"abc",
        );
        encode_request(&mut buf, 2, 0, &MemAlloc { size: 1 << 20 }, &[]);
        snapshot!(hex(&buf));
    }

    #[test]
    fn vmm_encodings_are_pinned() {
        // The fixed fields keep cuda.h's order and offsets up to the win32 pointer (which does not travel).
        assert_eq!(std::mem::size_of::<MemAllocProp>(), 24);
        assert_eq!(std::mem::size_of::<MemAccessDesc>(), 12);
        let prop = MemAllocProp {
            alloc_type: 1,
            handle_types: 1,
            location_type: MEM_LOCATION_DEVICE,
            location_id: 0,
            gpu_direct_rdma: 1,
            ..Default::default()
        };
        let mut buf = BytesMut::new();
        let create = MemCreate {
            handle: AllocHandleId(0x10_0040),
            size: 2 << 20,
            flags: 0,
            prop,
        };
        encode_request(&mut buf, 3, 0, &create, &[]);
        let access = MemAccessDesc {
            location_type: MEM_LOCATION_DEVICE,
            location_id: 0,
            flags: 3,
        };
        let set = MemSetAccess {
            ptr: DevicePtr(0x7d00_0000_0000),
            size: 6 << 20,
            count: 1,
            _pad: 0,
        };
        encode_request(&mut buf, 4, 0, &set, access.as_bytes());
        snapshot!(hex(&buf));
    }

    #[test]
    fn header_checks_reject_malformed_frames() {
        let good = request_header::<MemAlloc>(1, 0, 0);
        assert_eq!(check_request_header(&good), Ok(Op::MemAlloc));
        let bad_body = RequestHeader {
            body_len: 16,
            len: 16,
            ..good
        };
        assert!(matches!(
            check_request_header(&bad_body),
            Err(WireError::BodySize { .. })
        ));
        let inverted = RequestHeader {
            body_len: 8,
            len: 4,
            ..good
        };
        assert!(matches!(
            check_request_header(&inverted),
            Err(WireError::BadHeader { .. })
        ));
        let unknown = RequestHeader { op: 999, ..good };
        assert_eq!(check_request_header(&unknown), Err(WireError::UnknownOp(999)));
        assert!(decode_body::<MemAlloc>(&[0u8; 7]).is_err());
        assert_eq!(decode_body::<MemAlloc>(&42u64.to_le_bytes()), Ok(MemAlloc { size: 42 }));
    }

    #[test]
    fn function_table_round_trips_and_rejects_truncation() {
        let fns = vec![
            FunctionInfo {
                name: "vecadd".into(),
                params: vec![(0, 8), (8, 8), (16, 8), (24, 4)],
                attrs: [1; FUNC_ATTR_COUNT],
            },
            FunctionInfo {
                name: "empty".into(),
                params: vec![],
                attrs: [0; FUNC_ATTR_COUNT],
            },
        ];
        let mut buf = BytesMut::new();
        encode_function_table(&mut buf, &fns);
        assert_eq!(decode_function_table(&buf), Ok(fns.clone()));
        assert_eq!(fns[0].args_size(), 28);
        for cut in 0..buf.len() {
            assert!(
                decode_function_table(&buf[..cut]).is_err(),
                "truncation at {cut} accepted"
            );
        }
        let mut huge = BytesMut::new();
        huge.put_u32_le(u32::MAX);
        assert!(decode_function_table(&huge).is_err());
    }
}
