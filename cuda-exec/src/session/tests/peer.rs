//! Server-to-server copies over the wire, each half alone: the receiving session is driven by a raw client and
//! a test playing the sending server (and the listener that checks grants); the sending session by a raw client
//! against endpoints it may or may not reach. Hostile senders (a wrong length, an early error, nobody) end the
//! copy with an error and leave the client's channel working.

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::StreamId;
use vgpu_dataplane::wire::*;
use vgpu_dataplane::{Endpoint, Transport};
use vgpu_transports::tcp::TcpTransport;
use zerocopy::IntoBytes;

use super::{pattern, Client};
use crate::emulated::EmulatedBackend;
use crate::registry::{connect, Member, Registry};
use crate::session::{Limits, Session};

/// Crosses the staging chunk (8 MiB) so that the receiver's pipelining is exercised.
const N: usize = (9 << 20) + 5;
const TOKEN: [u8; 16] = [3; 16];

/// A session linked to `registry` that waits `wait` for senders and may send to `peers`.
pub(super) fn session(registry: &Arc<Registry>, id: u64, peers: Vec<Endpoint>, wait: Duration) -> Arc<Session> {
    let s = Session::new(Arc::new(EmulatedBackend::new()), Limits::default());
    let who = Member {
        session: id,
        tenant: "t".into(),
    };
    s.attach_registry(connect(registry, who).expect("registry link"));
    s.allow_peers(peers, wait);
    s
}

/// Two ends of a loopback TCP connection, as transports: (the sending server's, the receiving session's).
pub(super) fn pair() -> (TcpTransport, TcpTransport) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (b, _) = l.accept().expect("accept");
    (
        TcpTransport::from_stream(a).expect("transport"),
        TcpTransport::from_stream(b).expect("transport"),
    )
}

pub(super) fn word(t: &mut TcpTransport) -> u32 {
    let mut w = [0u8; 4];
    t.recv_exact(&mut w).expect("a status word");
    u32::from_le_bytes(w)
}

/// A receiving session with a client channel and `n` bytes of device memory; the grant for `TOKEN` posted and
/// taken as the listener would, and the sending end of its connection delivered.
fn receiving(dst_size: u64, copy_size: u64, wait: Duration) -> (Arc<Registry>, Client, u64, Option<TcpTransport>) {
    let r = Registry::new();
    let s = session(&r, 5, Vec::new(), wait);
    let mut c = Client::connect(&s);
    let dst = c.ok(&MemAlloc { size: dst_size }).dptr.get();
    c.post(&PeerRecv {
        dst: DevicePtr(dst),
        size: copy_size,
        stream: StreamId::NULL,
        token: TOKEN,
    });
    if wait < Duration::from_secs(1) {
        return (r, c, dst, None);
    }
    assert!(
        r.take_peer_grant(5, &TOKEN, Duration::from_secs(5)),
        "the receiver registered its grant"
    );
    let (sender, receiver) = pair();
    s.deliver_peer(TOKEN, Box::new(receiver));
    (r, c, dst, Some(sender))
}

#[test]
fn a_copy_from_another_server_lands_is_acknowledged_and_its_connection_is_kept() {
    let (r, mut c, dst, sender) = receiving(N as u64, N as u64, Duration::from_secs(5));
    let mut sender = sender.expect("connected");
    assert_eq!(word(&mut sender), 0, "the receiver is ready");
    let data = pattern(N, 9);
    let header = PeerHeader {
        status: 0,
        _pad: 0,
        size: N as u64,
    };
    sender
        .send(&[header.as_bytes(), &data, &0u32.to_le_bytes()])
        .expect("send");
    assert_eq!(word(&mut sender), 0, "acknowledged once on the device");
    c.ok(&Ping {});
    assert_eq!(c.dtoh(dst, N as u64).expect("read back"), data);
    // The receiver keeps the connection: the next copy's token comes first on it, and no new connection (nor a
    // grant left behind at the listener) is needed.
    let again = pattern(4096, 77);
    let token: [u8; 16] = [4; 16];
    c.post(&PeerRecv {
        dst: DevicePtr(dst),
        size: 4096,
        stream: StreamId::NULL,
        token,
    });
    sender.send(&[&token]).expect("token");
    assert_eq!(word(&mut sender), 0, "the kept connection carries the next copy");
    let header = PeerHeader {
        status: 0,
        _pad: 0,
        size: 4096,
    };
    sender
        .send(&[header.as_bytes(), &again, &0u32.to_le_bytes()])
        .expect("send");
    assert_eq!(word(&mut sender), 0);
    c.ok(&Ping {});
    assert_eq!(c.dtoh(dst, 4096).expect("read back"), again);
    assert!(
        !r.take_peer_grant(5, &token, Duration::ZERO),
        "no grant outlives a reused connection"
    );
    // The sender lets the connection go: the next copy comes through the listener again.
    drop(sender);
    let token: [u8; 16] = [5; 16];
    c.post(&PeerRecv {
        dst: DevicePtr(dst),
        size: 4096,
        stream: StreamId::NULL,
        token,
    });
    assert!(
        r.take_peer_grant(5, &token, Duration::from_secs(5)),
        "a grant for a new connection"
    );
}

#[test]
fn hostile_or_failing_senders_end_the_copy_with_an_error_and_the_channel_goes_on() {
    // A sender announcing another length is cut off; the copy fails.
    let (_r, mut c, dst, sender) = receiving(4096, 4096, Duration::from_secs(5));
    let mut sender = sender.expect("connected");
    assert_eq!(word(&mut sender), 0);
    let header = PeerHeader {
        status: 0,
        _pad: 0,
        size: 1 << 40,
    };
    sender.send(&[header.as_bytes()]).expect("send");
    assert_eq!(c.err(&Ping {}), CUDA_ERROR_UNKNOWN);
    c.htod(dst, &[1; 4096]).expect("the channel still works");
    // A sender that failed before reading (its source range was bad): its error is the copy's.
    let (_r, mut c, _, sender) = receiving(4096, 4096, Duration::from_secs(5));
    let mut sender = sender.expect("connected");
    assert_eq!(word(&mut sender), 0);
    let header = PeerHeader {
        status: CUDA_ERROR_INVALID_VALUE.code(),
        _pad: 0,
        size: 4096,
    };
    sender.send(&[header.as_bytes()]).expect("send");
    assert_eq!(c.err(&Ping {}), CUDA_ERROR_INVALID_VALUE);
    // A destination past the allocation: the receiver says so before any byte travels.
    let (_r, mut c, _, sender) = receiving(4096, 8192, Duration::from_secs(5));
    assert_eq!(word(&mut sender.expect("connected")), CUDA_ERROR_INVALID_VALUE.code());
    assert_eq!(c.err(&Ping {}), CUDA_ERROR_INVALID_VALUE);
    // Nobody comes: the copy gives up after the session's wait.
    let (_r, mut c, dst, _) = receiving(4096, 4096, Duration::from_millis(200));
    assert_eq!(c.err(&Ping {}), CUDA_ERROR_UNKNOWN);
    c.htod(dst, &[1; 4096]).expect("the channel still works");
}

#[test]
fn a_server_sends_only_to_the_peers_its_operator_listed() {
    let r = Registry::new();
    // Port 1 on loopback: listed, but nobody listens there.
    let listed = Endpoint::parse("tcp://127.0.0.1:1").expect("endpoint");
    let s = session(&r, 6, vec![listed], Duration::from_secs(1));
    let mut c = Client::connect(&s);
    let src = c.ok(&MemAlloc { size: 4096 }).dptr.get();
    let probe = |c: &mut Client, to: &str| c.call(&PeerProbe {}, to.as_bytes()).map(|_| ());
    assert_eq!(probe(&mut c, "tcp://127.0.0.1:1"), Ok(()));
    assert_eq!(probe(&mut c, "tcp://127.0.0.1:2"), Err(CUDA_ERROR_NOT_PERMITTED));
    assert_eq!(probe(&mut c, "shm://elsewhere"), Err(CUDA_ERROR_NOT_PERMITTED));
    assert_eq!(probe(&mut c, "not an endpoint://"), Err(CUDA_ERROR_INVALID_VALUE));
    let send = |c: &mut Client, to: &str| {
        let call = PeerSend {
            src: DevicePtr(src),
            size: 4096,
            stream: StreamId::NULL,
            session: 1,
            token: TOKEN,
        };
        c.send(&call, to.as_bytes());
        c.call(&Ping {}, &[]).map(|_| ())
    };
    assert_eq!(send(&mut c, "tcp://10.0.0.1:7070"), Err(CUDA_ERROR_NOT_PERMITTED));
    assert_eq!(
        send(&mut c, "tcp://127.0.0.1:1"),
        Err(CUDA_ERROR_UNKNOWN),
        "unreachable"
    );
    assert_eq!(
        send(&mut c, "tcp://127.0.0.1:1"),
        Err(CUDA_ERROR_UNKNOWN),
        "and again, the channel serves on"
    );
    // A session without a list (a server with no --peer) sends nowhere.
    let bare = session(&r, 7, Vec::new(), Duration::from_secs(1));
    let mut c = Client::connect(&bare);
    assert_eq!(probe(&mut c, "tcp://127.0.0.1:1"), Err(CUDA_ERROR_NOT_PERMITTED));
}
