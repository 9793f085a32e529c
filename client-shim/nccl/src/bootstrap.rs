//! Bringing a communicator's ranks together before its first collective: `ncclGetUniqueId` opens a listener whose
//! address and a fresh random secret go into the 128-byte id, which the program hands to every rank (its own
//! store); each rank connects, presents the secret with its rank and its GPU server (endpoint, session), and gets
//! back every rank's. The listener serves one communicator and ends.
//!
//! Everything read from a connection is bounded and checked; a connection without the secret is dropped.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

/// `ncclUniqueId`'s bytes.
pub const ID_LEN: usize = 128;
const ID_MAGIC: [u8; 8] = *b"vgpuNCL1";
/// Most ranks one communicator may have.
pub const MAX_RANKS: u32 = 4096;
/// Longest server endpoint a rank may announce (as `MAX_PEER_ENDPOINT`).
const MAX_ENDPOINT: usize = 512;
/// How long the listener waits for every rank, and a rank for the table (NCCL's own bootstrap also waits for the
/// slowest rank; `VGPU_NCCL_TIMEOUT_S` changes it).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// One rank's GPU server: where the other ranks' servers send to it, and its session there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub endpoint: String,
    pub session: u64,
}

/// What a unique id holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id {
    pub secret: [u8; 16],
    pub root: SocketAddr,
}

impl Id {
    pub fn encode(&self) -> [u8; ID_LEN] {
        let mut out = [0u8; ID_LEN];
        out[..8].copy_from_slice(&ID_MAGIC);
        out[8..24].copy_from_slice(&self.secret);
        let addr = self.root.to_string();
        // A socket address's text is at most 47 bytes (IPv6 with port): it always fits.
        let n = addr.len().min(ID_LEN - 25);
        out[24] = n as u8;
        out[25..25 + n].copy_from_slice(&addr.as_bytes()[..n]);
        out
    }

    pub fn decode(bytes: &[u8; ID_LEN]) -> Result<Id, String> {
        if bytes[..8] != ID_MAGIC {
            return Err("not a unique id made by vGPU's ncclGetUniqueId".into());
        }
        let n = usize::from(bytes[24]);
        let text = bytes
            .get(25..25 + n)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or("a unique id with a damaged address")?;
        let root = text
            .parse()
            .map_err(|_| format!("a unique id with a bad address {text:?}"))?;
        let mut secret = [0u8; 16];
        secret.copy_from_slice(&bytes[8..24]);
        Ok(Id { secret, root })
    }
}

fn timeout() -> Duration {
    std::env::var("VGPU_NCCL_TIMEOUT_S")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
}

/// The address the other ranks reach this process at: `VGPU_NCCL_ADDR`; else the interface this host uses toward
/// `MASTER_ADDR` (set by `torchrun` and `torch.distributed`'s env setup); else loopback.
fn own_address() -> Result<IpAddr, String> {
    if let Ok(text) = std::env::var("VGPU_NCCL_ADDR") {
        return text
            .trim()
            .parse()
            .map_err(|_| format!("VGPU_NCCL_ADDR={text:?}: must be an IP address"));
    }
    if let Ok(master) = std::env::var("MASTER_ADDR") {
        let toward = (master.trim(), 9u16).to_socket_addrs().ok().and_then(|mut a| a.next());
        if let Some(toward) = toward {
            let local = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
                .and_then(|u| u.connect(toward).and_then(|_| u.local_addr()));
            if let Ok(local) = local {
                return Ok(local.ip());
            }
        }
    }
    Ok(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A fresh id, with its listener serving on a thread of its own until the communicator is complete.
pub fn new_id() -> Result<Id, String> {
    let ip = own_address()?;
    let listener = TcpListener::bind((ip, 0)).map_err(|e| format!("cannot listen on {ip}: {e}"))?;
    let root = listener.local_addr().map_err(|e| e.to_string())?;
    let id = Id {
        secret: rand::random(),
        root,
    };
    let secret = id.secret;
    std::thread::Builder::new()
        .name("vgpu-nccl-root".into())
        .spawn(move || {
            if let Err(why) = serve_root(&listener, &secret, timeout()) {
                eprintln!("vGPU NCCL: the bootstrap at {root} ended: {why}");
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(id)
}

/// One rank's hello: magic, secret, nranks, rank, session, endpoint.
fn encode_hello(secret: &[u8; 16], nranks: u32, rank: u32, me: &Member) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + me.endpoint.len());
    out.extend_from_slice(&ID_MAGIC);
    out.extend_from_slice(secret);
    out.extend_from_slice(&nranks.to_le_bytes());
    out.extend_from_slice(&rank.to_le_bytes());
    put_member(&mut out, me);
    out
}

fn put_member(out: &mut Vec<u8>, m: &Member) {
    out.extend_from_slice(&m.session.to_le_bytes());
    out.extend_from_slice(&(m.endpoint.len() as u16).to_le_bytes());
    out.extend_from_slice(m.endpoint.as_bytes());
}

fn read_array<const N: usize>(r: &mut impl Read) -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    r.read_exact(&mut b).map_err(|e| e.to_string())?;
    Ok(b)
}

fn read_member(r: &mut impl Read) -> Result<Member, String> {
    let session = u64::from_le_bytes(read_array(r)?);
    let len = usize::from(u16::from_le_bytes(read_array(r)?));
    if len == 0 || len > MAX_ENDPOINT {
        return Err(format!("an endpoint of {len} bytes"));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text).map_err(|e| e.to_string())?;
    let endpoint = String::from_utf8(text).map_err(|_| "an endpoint that is not text".to_string())?;
    Ok(Member { endpoint, session })
}

/// Collects every rank's hello, then sends each the table of all ranks.
fn serve_root(listener: &TcpListener, secret: &[u8; 16], wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut ranks: Vec<Option<(TcpStream, Member)>> = Vec::new();
    let mut expected: Option<u32> = None;
    loop {
        if let Some(n) = expected {
            if ranks.iter().filter(|r| r.is_some()).count() == n as usize {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(format!("not every rank came within {} s", wait.as_secs()));
        }
        let mut conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let Ok((nranks, rank, member)) = read_hello(&mut conn, secret) else {
            continue; // not one of ours: dropped
        };
        let n = *expected.get_or_insert(nranks);
        if nranks != n || rank >= n || ranks.get(rank as usize).is_some_and(Option::is_some) {
            let _ = conn.write_all(&1u32.to_le_bytes());
            continue;
        }
        ranks.resize_with(n as usize, || None);
        ranks[rank as usize] = Some((conn, member));
    }
    let mut table = Vec::new();
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&(ranks.len() as u32).to_le_bytes());
    for (_, m) in ranks.iter().flatten() {
        put_member(&mut table, m);
    }
    for (conn, _) in ranks.iter_mut().flatten() {
        let _ = conn.write_all(&table);
    }
    Ok(())
}

fn read_hello(conn: &mut TcpStream, secret: &[u8; 16]) -> Result<(u32, u32, Member), String> {
    let magic: [u8; 8] = read_array(conn)?;
    let theirs: [u8; 16] = read_array(conn)?;
    if magic != ID_MAGIC || &theirs != secret {
        return Err("not a rank of this communicator".into());
    }
    let nranks = u32::from_le_bytes(read_array(conn)?);
    let rank = u32::from_le_bytes(read_array(conn)?);
    if nranks == 0 || nranks > MAX_RANKS {
        return Err(format!("{nranks} ranks"));
    }
    Ok((nranks, rank, read_member(conn)?))
}

/// Joins the communicator of `id` as `rank` of `nranks`: every rank's server, in rank order.
pub fn join(id: &Id, nranks: u32, rank: u32, me: &Member) -> Result<Vec<Member>, String> {
    let wait = timeout();
    let deadline = Instant::now() + wait;
    let mut conn = loop {
        match TcpStream::connect_timeout(&id.root, Duration::from_secs(5)) {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => return Err(format!("cannot reach rank 0 at {}: {e}", id.root)),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let _ = conn.set_nodelay(true);
    conn.write_all(&encode_hello(&id.secret, nranks, rank, me))
        .map_err(|e| e.to_string())?;
    let _ = conn.set_read_timeout(Some(wait));
    let status = u32::from_le_bytes(read_array(&mut conn).map_err(|e| format!("waiting for the other ranks: {e}"))?);
    if status != 0 {
        return Err(format!(
            "rank 0 refused rank {rank} of {nranks} (another rank count, or the rank taken twice)"
        ));
    }
    let count = u32::from_le_bytes(read_array(&mut conn)?);
    if count != nranks {
        return Err(format!("rank 0 answered {count} ranks for {nranks}"));
    }
    (0..count).map(|_| read_member(&mut conn)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_strangers_are_refused() {
        let id = Id {
            secret: [3; 16],
            root: "127.0.0.1:4567".parse().expect("addr"),
        };
        assert_eq!(Id::decode(&id.encode()), Ok(id.clone()));
        let mut bad = id.encode();
        bad[0] ^= 1;
        assert!(Id::decode(&bad).is_err());
        let mut bad = id.encode();
        bad[24] = 200;
        assert!(Id::decode(&bad).is_err());
    }

    #[test]
    fn three_ranks_meet_and_a_stranger_does_not_count() {
        let id = new_id().expect("id");
        // A connection without the secret is dropped, not counted.
        let mut stranger = TcpStream::connect(id.root).expect("connect");
        stranger.write_all(&[0u8; 64]).expect("write");
        let handles: Vec<_> = (0..3u32)
            .map(|r| {
                let id = id.clone();
                std::thread::spawn(move || {
                    let me = Member {
                        endpoint: format!("tcp://127.0.0.1:{}", 7000 + r),
                        session: 100 + u64::from(r),
                    };
                    join(&id, 3, r, &me)
                })
            })
            .collect();
        for h in handles {
            let table = h.join().expect("thread").expect("join");
            assert_eq!(table.len(), 3);
            for (r, m) in table.iter().enumerate() {
                assert_eq!(m.session, 100 + r as u64);
                assert_eq!(m.endpoint, format!("tcp://127.0.0.1:{}", 7000 + r));
            }
        }
    }

    #[test]
    fn a_rank_taken_twice_is_refused() {
        let id = new_id().expect("id");
        let me = Member {
            endpoint: "tcp://127.0.0.1:1".into(),
            session: 1,
        };
        let first = {
            let (id, me) = (id.clone(), me.clone());
            std::thread::spawn(move || join(&id, 2, 0, &me))
        };
        std::thread::sleep(Duration::from_millis(100));
        let twice = join(&id, 2, 0, &me).expect_err("refused");
        assert!(twice.contains("refused"), "{twice}");
        let other = join(&id, 2, 1, &me).expect("rank 1");
        assert_eq!(other.len(), 2);
        assert!(first.join().expect("thread").is_ok());
    }
}
