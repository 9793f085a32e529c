//! Finding this end's RDMA device, port and GID, and the queue-pair setup record both ends exchange over the
//! setup TCP connection.

use super::*;

/// (port number, GID table length) of every active port of a device.
pub(super) fn active_ports(ctx: &Arc<DeviceContext>) -> Vec<(u8, u32)> {
    let Ok(attr) = ctx.query_device() else {
        return Vec::new();
    };
    (1..=attr.phys_port_cnt())
        .filter_map(|p| {
            let pa = ctx.query_port(p).ok()?;
            (pa.port_state() == PortState::Active).then(|| (p, pa.gid_tbl_len().max(0) as u32))
        })
        .collect()
}

/// The device, port and GID this end uses.
pub(super) struct Local {
    pub(super) ctx: Arc<DeviceContext>,
    pub(super) name: String,
    pub(super) port: u8,
    pub(super) gid_index: u32,
    pub(super) gid: Gid,
    pub(super) lid: u16,
    pub(super) mtu: u32,
    pub(super) max_wr: u32,
    pub(super) max_cqe: u32,
    /// RDMA READs this end may have in flight as initiator / serve at once as responder.
    pub(super) init_read_depth: u32,
    pub(super) dest_read_depth: u32,
}

pub(super) fn gid_matches(gid: &Gid, ip: IpAddr) -> bool {
    let as_v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    Ipv6Addr::from(*gid) == as_v6
}

/// Picks the device, port and GID for a connection whose local TCP address is `ip`.
pub(super) fn open_local(ip: IpAddr) -> Result<Local, TransportError> {
    let want_dev = std::env::var("VGPU_RDMA_DEVICE").ok().filter(|d| !d.is_empty());
    let want_gid: Option<u32> = match std::env::var("VGPU_RDMA_GID_INDEX") {
        Ok(v) => Some(v.trim().parse().map_err(|_| {
            TransportError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("VGPU_RDMA_GID_INDEX={v:?}: must be a GID table index (a number)"),
            ))
        })?),
        Err(_) => None,
    };
    let list = DeviceList::new().map_err(|e| rdma_err("no RDMA stack (is rdma-core installed?)", e))?;
    // (context, name, port, gid index, gid); the first exact address match wins, else the first active port.
    let mut fallback = None;
    let mut chosen = None;
    'devices: for dev in list.iter() {
        let name = dev.name();
        if want_dev.as_ref().is_some_and(|w| *w != name) {
            continue;
        }
        let Ok(ctx) = dev.open() else { continue };
        for (port, gids) in active_ports(&ctx) {
            if let Some(idx) = want_gid {
                if let Ok(g) = ctx.query_gid(port, idx) {
                    chosen = Some((ctx.clone(), name.clone(), port, idx, g));
                    break 'devices;
                }
                continue;
            }
            let mut matched = None;
            for idx in 0..gids {
                let Ok(g) = ctx.query_gid(port, idx) else { continue };
                if g.is_zero() {
                    continue;
                }
                if fallback.is_none() {
                    fallback = Some((ctx.clone(), name.clone(), port, idx, g));
                }
                if gid_matches(&g, ip) {
                    // Prefer RoCE v2 (routable, type 1 in sysfs terms) when v1 and v2 share the address.
                    let v2 = ctx.query_gid_type(port, idx).is_ok_and(|t| t == 1);
                    if matched.is_none() || v2 {
                        matched = Some((ctx.clone(), name.clone(), port, idx, g));
                    }
                    if v2 {
                        break;
                    }
                }
            }
            if matched.is_some() {
                chosen = matched;
                break 'devices;
            }
        }
    }
    let (ctx, name, port, gid_index, gid) = chosen.or(fallback).ok_or_else(|| {
        rdma_err(
            "no usable device",
            match &want_dev {
                Some(d) => format!("no active port with a GID on device {d} (VGPU_RDMA_DEVICE)"),
                None => "no RDMA device with an active port".to_string(),
            },
        )
    })?;
    let pa = ctx.query_port(port).map_err(|e| rdma_err("query port", e))?;
    let da = ctx.query_device().map_err(|e| rdma_err("query device", e))?;
    Ok(Local {
        name,
        port,
        gid_index,
        gid,
        lid: pa.lid(),
        mtu: pa.active_mtu() as u32,
        max_wr: da.max_qp_wr().max(2) as u32,
        max_cqe: da.max_cqe().max(4) as u32,
        init_read_depth: (da.max_qp_init_rd_atom().max(1) as u32).min(MAX_READ_DEPTH),
        dest_read_depth: (da.max_qp_rd_atom().max(1) as u32).min(MAX_READ_DEPTH),
        ctx,
    })
}

/// What each side tells the other over TCP: its queue pair, the ring the other side writes into, and its own send
/// ring, which the other side reads pulled bytes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Setup {
    pub(super) cap: u64,
    pub(super) ring_addr: u64,
    pub(super) rkey: u32,
    pub(super) qpn: u32,
    pub(super) psn: u32,
    pub(super) lid: u16,
    pub(super) mtu: u8,
    /// RDMA READs this end serves at once (the peer keeps at most this many in flight).
    pub(super) read_depth: u8,
    pub(super) gid: [u8; 16],
    pub(super) tx_addr: u64,
    pub(super) tx_rkey: u32,
}

impl Setup {
    pub(super) fn encode(&self) -> [u8; SETUP_LEN] {
        let mut b = [0u8; SETUP_LEN];
        b[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&SETUP_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.cap.to_le_bytes());
        b[24..32].copy_from_slice(&self.ring_addr.to_le_bytes());
        b[32..36].copy_from_slice(&self.rkey.to_le_bytes());
        b[36..40].copy_from_slice(&self.qpn.to_le_bytes());
        b[40..44].copy_from_slice(&self.psn.to_le_bytes());
        b[44..46].copy_from_slice(&self.lid.to_le_bytes());
        b[46] = self.mtu;
        b[47] = self.read_depth;
        b[48..64].copy_from_slice(&self.gid);
        b[64..72].copy_from_slice(&self.tx_addr.to_le_bytes());
        b[72..76].copy_from_slice(&self.tx_rkey.to_le_bytes());
        b
    }

    /// Checks the magic number and version at the start of a setup.
    pub(super) fn check_head(b: &[u8]) -> Result<(), TransportError> {
        let magic = b.get(0..8).and_then(|m| m.try_into().ok()).map(u64::from_le_bytes);
        if magic != Some(MAGIC) {
            return Err(protocol(
                "RDMA setup has a wrong magic number (is the peer a vGPU RDMA endpoint?)",
            ));
        }
        let version = b.get(8..12).and_then(|v| v.try_into().ok()).map(u32::from_le_bytes);
        if version != Some(SETUP_VERSION) {
            return Err(protocol(format!(
                "RDMA setup version {}, this side speaks {SETUP_VERSION} (update the older side)",
                version.unwrap_or_default()
            )));
        }
        Ok(())
    }

    pub(super) fn decode(b: &[u8; SETUP_LEN]) -> Result<Setup, TransportError> {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[o..o + 4]);
            u32::from_le_bytes(a)
        };
        Setup::check_head(b)?;
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&b[48..64]);
        let s = Setup {
            cap: u64_at(16),
            ring_addr: u64_at(24),
            rkey: u32_at(32),
            qpn: u32_at(36),
            psn: u32_at(40),
            lid: u16::from_le_bytes([b[44], b[45]]),
            mtu: b[46],
            read_depth: b[47],
            gid,
            tx_addr: u64_at(64),
            tx_rkey: u32_at(72),
        };
        let cap_ok = usize::try_from(s.cap).is_ok_and(|c| c.is_power_of_two() && (MIN_RING..=MAX_RING).contains(&c));
        if !cap_ok {
            return Err(protocol(format!(
                "RDMA ring size {} is not a power of two within {MIN_RING}..={MAX_RING}",
                s.cap
            )));
        }
        if s.qpn == 0 || s.qpn >= 1 << 24 || s.psn >= 1 << 24 {
            return Err(protocol(
                "RDMA setup carries an invalid queue pair or packet sequence number",
            ));
        }
        if s.read_depth == 0 {
            return Err(protocol("RDMA setup serves no reads (read depth 0)"));
        }
        if mtu_of(s.mtu as u32).is_none() {
            return Err(protocol(format!(
                "RDMA setup carries an invalid path MTU code {}",
                s.mtu
            )));
        }
        Ok(s)
    }
}

pub(super) fn mtu_of(code: u32) -> Option<Mtu> {
    Some(match code {
        1 => Mtu::Mtu256,
        2 => Mtu::Mtu512,
        3 => Mtu::Mtu1024,
        4 => Mtu::Mtu2048,
        5 => Mtu::Mtu4096,
        _ => return None,
    })
}

/// A random 24-bit packet sequence number.
pub(super) fn random_psn() -> u32 {
    // RandomState is seeded from the OS's random source; hashing anything with it gives a random value.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    (h.finish() as u32) & 0xff_ffff
}

pub(super) fn read_setup(sock: &mut TcpStream) -> Result<Setup, TransportError> {
    let mut b = [0u8; SETUP_LEN];
    // Magic and version first: a peer of another version (or not a vGPU endpoint) is refused at once, not after
    // waiting for bytes of a length it never sends.
    read_part(sock, &mut b[..16])?;
    Setup::check_head(&b)?;
    read_part(sock, &mut b[16..])?;
    Setup::decode(&b)
}

fn read_part(sock: &mut TcpStream, b: &mut [u8]) -> Result<(), TransportError> {
    sock.read_exact(b).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => TransportError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            "RDMA setup: the peer did not answer",
        )),
        _ => io_to_transport(e),
    })
}
