//! The versioned handshake: the client's `Hello` (raw on the socket, before the transport is set up) and the
//! server's `Welcome`, which carries every immutable device fact so that device queries never cross the wire.

use bytes::{BufMut, BytesMut};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const MAGIC: [u8; 4] = *b"VGPU";
/// Bumped whenever any encoding in this crate changes.
pub const PROTOCOL_VERSION: u32 = 2;
/// Capability bits: what this build can do beyond the base protocol.
pub const CAP_PUSH_DTOH: u64 = 1;
/// The server answers `NvmlDeviceStatus` and `NvmlSystemInfo` (a client asks an older server nothing: an
/// unknown operation would end its session).
pub const CAP_NVML: u64 = 2;
/// The server executes the virtual memory management calls (`MemCreate`, `MemMap`, ...; op codes 120 to 130).
pub const CAP_VMM: u64 = 4;
/// The server executes stream memory operations (`StreamMemOps`, op code 140).
pub const CAP_STREAM_MEM_OPS: u64 = 8;
/// The server holds CUDA graphs built by the client and launches them whole (`Graph*`, op codes 170 to 189):
/// conditional nodes need it. Without it the client replays graphs call by call and refuses conditional nodes.
pub const CAP_GRAPHS: u64 = 16;
/// The server answers `NvmlDevicePcie` and `NvmlFieldValues` (op codes 112 and 113).
pub const CAP_NVML_PCIE: u64 = 32;
/// The server executes the IPC calls (op codes 150 to 156) and runs an IPC registry.
pub const CAP_IPC: u64 = 64;
/// The server takes part in multi-server sessions: it follows the client's device numbering
/// (`SetDeviceNumbering`, op code 160).
pub const CAP_MULTI_SERVER: u64 = 1 << 8;
/// The server answers `MirrorDigest` (op code 88).
pub const CAP_MIRROR_DIGEST: u64 = 1 << 9;
/// The server copies device memory to and from other servers directly (`PeerRecv`, `PeerSend`, `PeerProbe`;
/// op codes 162 to 164) and accepts `MODE_PEER` connections.
pub const CAP_PEER_COPY: u64 = 1 << 10;
/// Compressed channel (`transports::packed`): in a hello, the client asks for it (`VGPU_COMPRESS=lz4`); in the
/// welcome, the server agrees, and after the welcome both ends speak packed frames. Not in `CAPABILITIES`: it is
/// asked for per channel.
pub const CAP_PACKED: u64 = 1 << 11;
/// With `CAP_PACKED` in a hello: compress only where it beats the link (`VGPU_COMPRESS=auto`), on both ends.
pub const CAP_PACKED_AUTO: u64 = 1 << 12;
/// The server answers peer-access questions and enables peer access between GPUs it holds (`DeviceCanAccessPeer`,
/// `DeviceP2PAttribute`, `CtxEnablePeerAccess`, `CtxDisablePeerAccess`).
pub const CAP_PEER_ACCESS: u64 = 1 << 13;
/// The server stripes a TCP or TLS channel's bulk bytes over extra connections of the same kind (`MODE_LANE` hellos,
/// `LanesJoin`, `transports::striped`).
pub const CAP_LANES: u64 = 1 << 14;
/// The server copies pitched rows to and from other servers directly (`PeerRecvRows`, `PeerSendRows`).
pub const CAP_PEER_ROWS: u64 = 1 << 15;
/// The server answers NVML's peer status between two of its devices (`NvmlP2PStatus`, op code 114).
pub const CAP_NVML_P2P: u64 = 1 << 16;
/// The server cuts striped segments shorter than the streams' 512 KiB pieces into as many equal pieces as there
/// are streams (`LanesJoin` with `LANES_FINE`, `transports::striped`).
pub const CAP_LANES_FINE: u64 = 1 << 17;
/// `LanesJoin::flags`: both ends use fine pieces (only sent to a server that announced `CAP_LANES_FINE`).
pub const LANES_FINE: u32 = 1;
/// The server runs collectives with other servers (`CollRun`, `vgpu_dataplane::coll`).
pub const CAP_COLL: u64 = 1 << 18;
pub const CAPABILITIES: u64 = CAP_PUSH_DTOH
    | CAP_PEER_ACCESS
    | CAP_NVML
    | CAP_VMM
    | CAP_STREAM_MEM_OPS
    | CAP_GRAPHS
    | CAP_NVML_PCIE
    | CAP_IPC
    | CAP_MULTI_SERVER
    | CAP_MIRROR_DIGEST
    | CAP_PEER_COPY
    | CAP_LANES
    | CAP_PEER_ROWS
    | CAP_NVML_P2P
    | CAP_LANES_FINE
    | CAP_COLL;

pub const MODE_NEW_SESSION: u32 = 0;
pub const MODE_ATTACH: u32 = 1;
/// Another GPU server delivering a copy: `session_id` names the receiving session and `secret` carries the
/// one-time token of its `PeerRecv` grant (no credential).
pub const MODE_PEER: u32 = 2;
/// An extra connection of one client channel (`CAP_LANES`): `session_id` and `secret` as for an attach, and a
/// credential of `LANE_CREDENTIAL` bytes: the 16-byte token the channel's `LanesJoin` will name, then the lane's
/// index (u32 LE).
pub const MODE_LANE: u32 = 3;
pub const LANE_CREDENTIAL: usize = 20;

/// Largest credential (static key or control-plane ticket) accepted in a hello.
pub const MAX_CREDENTIAL: usize = 16 * 1024;

/// First bytes on a new connection. A new session carries a credential; an attach (a further client thread)
/// carries the session id and secret the first connection's `Welcome` gave.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct Hello {
    pub magic: [u8; 4],
    pub version: u32,
    pub capabilities: u64,
    pub mode: u32,
    pub pid: u32,
    pub session_id: u64,
    pub secret: [u8; 16],
    pub credential_len: u32,
    pub _pad: u32,
}

/// Why a server refused a hello; carried in `Welcome::status` with a human-readable message.
pub const STATUS_OK: u32 = 0;
pub const STATUS_VERSION_MISMATCH: u32 = 1;
pub const STATUS_UNAUTHORIZED: u32 = 2;
pub const STATUS_NO_SUCH_SESSION: u32 = 3;
pub const STATUS_SERVER_ERROR: u32 = 4;
/// A bound was reached (the tenant's concurrent sessions, or connections awaiting authentication): retry later.
pub const STATUS_BUSY: u32 = 5;

pub const BACKEND_REAL: u32 = 0;
pub const BACKEND_EMULATED: u32 = 1;

/// Server's answer, sent over the ready transport. Followed by `device_count` `DeviceFacts` and then
/// `message_len` bytes of UTF-8 text (the refusal reason, or a banner).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct Welcome {
    pub magic: [u8; 4],
    pub version: u32,
    pub capabilities: u64,
    pub status: u32,
    pub backend: u32,
    pub session_id: u64,
    pub secret: [u8; 16],
    pub driver_version: i32,
    pub device_count: u32,
    pub message_len: u32,
    pub _pad: u32,
}

/// Device attributes are fetched for ids below this bound (CU_DEVICE_ATTRIBUTE_MAX is 149 in CUDA 13.0).
pub const DEVICE_ATTR_SLOTS: usize = 256;

/// Everything immutable about one device, gathered once per session.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct DeviceFacts {
    pub name: [u8; 256],
    pub uuid: [u8; 16],
    pub total_mem: u64,
    /// `cuDeviceGetAttribute` values, indexed by attribute.
    pub attrs: [i32; DEVICE_ATTR_SLOTS],
    /// Bit i set: attribute i is valid (the driver answered it without error).
    pub attr_valid: [u64; DEVICE_ATTR_SLOTS / 64],
}

impl Default for DeviceFacts {
    fn default() -> Self {
        DeviceFacts {
            name: [0; 256],
            uuid: [0; 16],
            total_mem: 0,
            attrs: [0; DEVICE_ATTR_SLOTS],
            attr_valid: [0; DEVICE_ATTR_SLOTS / 64],
        }
    }
}

impl DeviceFacts {
    pub fn name_str(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(self.name.len());
        std::str::from_utf8(&self.name[..end]).unwrap_or("?")
    }
    /// The UUID as NVIDIA's tools print it: `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub fn uuid_string(&self) -> String {
        let h: String = self.uuid.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "GPU-{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
    pub fn set_name(&mut self, name: &str) {
        self.name = [0; 256];
        let n = name.len().min(255);
        self.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    }
    pub fn attr(&self, attr: usize) -> Option<i32> {
        (attr < DEVICE_ATTR_SLOTS && self.attr_valid[attr / 64] & (1 << (attr % 64)) != 0).then(|| self.attrs[attr])
    }
    pub fn set_attr(&mut self, attr: usize, value: i32) {
        if attr < DEVICE_ATTR_SLOTS {
            self.attrs[attr] = value;
            self.attr_valid[attr / 64] |= 1 << (attr % 64);
        }
    }
}

/// Frames a hello for sending raw on a fresh socket: `[u32 LE length][Hello][credential]`.
pub fn encode_hello(hello: &Hello, credential: &[u8]) -> Vec<u8> {
    let mut h = *hello;
    h.credential_len = credential.len() as u32;
    let mut out = Vec::with_capacity(4 + std::mem::size_of::<Hello>() + credential.len());
    out.extend_from_slice(&((std::mem::size_of::<Hello>() + credential.len()) as u32).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(credential);
    out
}

/// Parses a hello payload (without its length prefix); returns it with its credential.
pub fn decode_hello(payload: &[u8]) -> Result<(Hello, Vec<u8>), String> {
    let (hello, rest) = Hello::read_from_prefix(payload).map_err(|_| "hello too short".to_string())?;
    if hello.magic != MAGIC {
        return Err("not a vGPU client (bad magic)".into());
    }
    let len = hello.credential_len as usize;
    if len > MAX_CREDENTIAL || len != rest.len() {
        return Err(format!(
            "credential length {len} does not match the {} bytes sent",
            rest.len()
        ));
    }
    Ok((hello, rest.to_vec()))
}

/// Encodes a welcome with its device facts and message.
pub fn encode_welcome(welcome: &Welcome, devices: &[DeviceFacts], message: &str) -> BytesMut {
    let mut w = *welcome;
    w.device_count = devices.len() as u32;
    w.message_len = message.len() as u32;
    let mut out = BytesMut::new();
    out.put_slice(w.as_bytes());
    for d in devices {
        out.put_slice(d.as_bytes());
    }
    out.put_slice(message.as_bytes());
    out
}

/// Most devices one server may report.
pub const MAX_DEVICES: u32 = 64;
pub const MAX_MESSAGE: u32 = 64 * 1024;

/// Bytes that follow a `Welcome` header, or an error if it announces absurd sizes.
pub fn welcome_tail_len(welcome: &Welcome) -> Result<usize, String> {
    if welcome.magic != MAGIC {
        return Err("not a vGPU server (bad magic in welcome)".into());
    }
    if welcome.device_count > MAX_DEVICES || welcome.message_len > MAX_MESSAGE {
        return Err("welcome announces too many devices or too long a message".into());
    }
    Ok(welcome.device_count as usize * std::mem::size_of::<DeviceFacts>() + welcome.message_len as usize)
}

/// Splits a welcome's tail into device facts and message.
pub fn decode_welcome_tail(welcome: &Welcome, tail: &[u8]) -> Result<(Vec<DeviceFacts>, String), String> {
    let facts_len = welcome.device_count as usize * std::mem::size_of::<DeviceFacts>();
    if tail.len() != welcome_tail_len(welcome)? {
        return Err("welcome tail has the wrong length".into());
    }
    let (facts, msg) = tail.split_at(facts_len);
    let devices = facts
        .chunks_exact(std::mem::size_of::<DeviceFacts>())
        .map(|c| DeviceFacts::read_from_bytes(c).map_err(|_| "bad device facts".to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((devices, String::from_utf8_lossy(msg).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_rejects_bad_input() {
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            pid: 42,
            ..Default::default()
        };
        let framed = encode_hello(&hello, b"key-123");
        let len = u32::from_le_bytes([framed[0], framed[1], framed[2], framed[3]]) as usize;
        assert_eq!(len, framed.len() - 4);
        let (back, cred) = decode_hello(&framed[4..]).expect("decodes");
        assert_eq!(back.pid, 42);
        assert_eq!(cred, b"key-123");
        assert!(decode_hello(&framed[4..framed.len() - 1]).is_err());
        let mut bad = framed[4..].to_vec();
        bad[0] = b'X';
        assert!(decode_hello(&bad).is_err());
        snapshot!(framed.iter().map(|b| format!("{b:02x}")).collect::<String>());
    }

    #[test]
    fn welcome_carries_devices_and_message() {
        let mut dev = DeviceFacts::default();
        dev.set_name("NVIDIA H100 80GB HBM3");
        dev.set_attr(75, 9);
        dev.total_mem = 80 << 30;
        let w = Welcome {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            driver_version: 13000,
            ..Default::default()
        };
        let enc = encode_welcome(&w, &[dev], "hello");
        let (head, tail) = Welcome::read_from_prefix(&enc).expect("header");
        assert_eq!(welcome_tail_len(&head), Ok(tail.len()));
        let (devs, msg) = decode_welcome_tail(&head, tail).expect("tail");
        assert_eq!(devs[0].name_str(), "NVIDIA H100 80GB HBM3");
        assert_eq!(devs[0].attr(75), Some(9));
        assert_eq!(devs[0].attr(76), None);
        assert_eq!(msg, "hello");
        let absurd = Welcome {
            device_count: 1000,
            ..head
        };
        assert!(welcome_tail_len(&absurd).is_err());
    }
}
