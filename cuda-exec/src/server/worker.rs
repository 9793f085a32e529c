//! A worker process: one session's channels served on the backend, its usage metered back to the listener,
//! and its exit when the session ends.

use super::*;

/// Entry point of a worker process (started by `run_server` through `worker_command`).
pub fn run_worker_from_env() -> Result<(), String> {
    let fd: RawFd = std::env::var("VGPU_WORKER_FD")
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or("VGPU_WORKER_FD is not set: workers are started by `vgpu server`, not by hand")?;
    let choice = BackendChoice::parse(&std::env::var("VGPU_WORKER_BACKEND").unwrap_or_else(|_| "auto".into()))?;
    let driver = std::env::var("VGPU_WORKER_DRIVER").ok();
    let identity = match std::env::var("VGPU_WORKER_IDENTITY") {
        Ok(v) => crate::identity::parse(&v)?,
        Err(_) => 0,
    };
    // SAFETY: the server passed this descriptor to us (and only us) through VGPU_WORKER_FD.
    let control = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if let Err(e) = crate::session::forward_stdout() {
        tracing::warn!("device printf output stays on the server: cannot capture stdout ({e})");
    }
    // The scheduler's table (the server made it; every worker maps it).
    let region = match std::env::var("VGPU_WORKER_SCHED_FD")
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
    {
        Some(sfd) => {
            // SAFETY: the server passed this descriptor to every worker through VGPU_WORKER_SCHED_FD.
            let sfd = unsafe { OwnedFd::from_raw_fd(sfd) };
            match crate::sched::gate::attach_region(&sfd) {
                Ok(r) => Some(r),
                Err(why) => {
                    tracing::warn!("{why}; this worker's sessions run unscheduled");
                    None
                }
            }
        }
        None => None,
    };
    // The driver starts before any session arrives: a spare worker waits here fully initialised.
    let peers = match std::env::var("VGPU_WORKER_PEERS") {
        Ok(list) => list
            .split(',')
            .map(vgpu_dataplane::Endpoint::parse)
            .collect::<Result<Vec<_>, _>>()?,
        Err(_) => Vec::new(),
    };
    let (backend, _) = open_backend(choice, driver.as_deref(), identity)?;
    // Called outside the log macro: its arguments are evaluated only when its level is on.
    let gpudirect = crate::gpudirect::enable(
        &backend,
        crate::gpudirect::Setting::from_env()?,
        crate::gpudirect::host_ports(),
    );
    tracing::debug!("{gpudirect}");
    if let Some(r) = region {
        backend.share_device_timeline(&r.gpus[0].emulated_busy_until);
    }
    let mut session: Option<Arc<Session>> = None;
    let mut buf = [0u8; std::mem::size_of::<Handoff>()];
    loop {
        let (n, fds) = fdpass::recv_with_fds(&control, &mut buf, 2).map_err(|e| format!("control socket: {e}"))?;
        if n == 0 {
            tracing::info!("server went away (or ended this session); worker exits");
            std::process::exit(0);
        }
        // The connection, and with the session's first one its link to the server's IPC registry.
        let mut fds = fds.into_iter();
        let (Ok(handoff), Some(fd)) = (Handoff::read_from_bytes(&buf[..n]), fds.next()) else {
            return Err("malformed handoff from the server".into());
        };
        let registry = fds.next();
        let session = match &session {
            Some(s) => s.clone(),
            None => {
                // The session's first connection brings its limits and its scheduler slots.
                let limits = handoff.limits()?;
                let sched = region.and_then(|r| {
                    crate::sched::host::session_sched(r, &backend, handoff.session_id, &handoff.slots, &limits)
                });
                let s = Session::scheduled(backend.clone(), limits, sched);
                if let Some(link) = registry {
                    s.attach_registry(RegistryLink::new(UnixStream::from(link)));
                }
                // The operator's peers, and the other servers the session's ticket names.
                let mut allowed = peers.clone();
                allowed.extend(handoff.peers());
                s.allow_peers(allowed, peer_wait());
                let ticks = control.try_clone().map_err(|e| format!("control socket: {e}"))?;
                let _ = METER.set((ticks, s.clone()));
                std::thread::spawn(|| loop {
                    std::thread::sleep(USAGE_TICK);
                    report_usage();
                });
                session = Some(s.clone());
                s
            }
        };
        std::thread::spawn(move || serve_connection(session, handoff, fd));
    }
}

/// The worker's end of the usage channel and its session, for `report_usage`.
static METER: std::sync::OnceLock<(UnixStream, Arc<Session>)> = std::sync::OnceLock::new();

/// Sends the session's usage to the listener (every tick, and once more just before the worker exits).
fn report_usage() {
    use std::io::Write as _;
    if let Some((socket, session)) = METER.get() {
        let u = session.usage();
        let tick = UsageTick {
            allocated_bytes: u.allocated_bytes,
            bytes_moved: u.bytes_moved,
        };
        let _ = (&*socket).write_all(tick.as_bytes());
    }
}

/// Ends the worker process after a last usage report.
fn exit_worker(code: i32) -> ! {
    report_usage();
    let r = vgpu_transports::rdma::counters();
    if r != Default::default() {
        // What the operator (and the RDMA tests) read to see how this session's bytes crossed RDMA channels.
        tracing::info!(
            "RDMA bytes of this session: read into device memory {}, offered from device memory {}, read into host \
             memory in place {}, offered from host memory {}, read through the bounce buffer {}, copied into rings {}, \
             copied out of rings {}",
            r.device_read_in_place,
            r.device_offered,
            r.pulled_in_place,
            r.offered_in_place,
            r.pulled_bounced,
            r.ring_copied_in,
            r.ring_copied_out
        );
    }
    std::process::exit(code)
}

/// How long a receiving copy waits for its sender (`VGPU_WORKER_PEER_WAIT_MS`).
fn peer_wait() -> Duration {
    std::env::var("VGPU_WORKER_PEER_WAIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(AdmissionLimits::default().peer_wait, Duration::from_millis)
}

/// The stall timeout the listener gave this worker (`VGPU_WORKER_STALL_MS`).
fn stall_timeout() -> Duration {
    std::env::var("VGPU_WORKER_STALL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(AdmissionLimits::default().stall_timeout, Duration::from_millis)
}

fn serve_connection(session: Arc<Session>, handoff: Handoff, fd: OwnedFd) {
    if handoff.primary == HANDOFF_LANE {
        return deliver_lane(&session, &handoff, fd);
    }
    let raw_fd = fd.as_raw_fd();
    let transport: Result<Box<dyn Transport>, String> = match handoff.transport {
        0 | 3 => network_transport(&handoff, TcpStream::from(fd)),
        2 => RdmaTransport::accept(TcpStream::from(fd))
            .map(|t| Box::new(t) as _)
            .map_err(|e| e.to_string()),
        _ => ShmTransport::accept(UnixStream::from(fd))
            .map(|t| Box::new(t) as _)
            .map_err(|e| e.to_string()),
    };
    let transport = match transport {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("session {:016x}: transport setup failed: {e}", handoff.session_id);
            if handoff.primary == 1 {
                exit_worker(1);
            }
            return;
        }
    };
    if handoff.primary == HANDOFF_PEER {
        return deliver_peer(&session, &handoff, transport);
    }
    let backend = session.backend().clone();
    let packed = handoff.flags & HANDOFF_PACKED != 0;
    let welcome = Welcome {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        capabilities: if packed {
            CAPABILITIES | CAP_PACKED
        } else {
            CAPABILITIES
        },
        status: STATUS_OK,
        backend: backend.kind(),
        session_id: handoff.session_id,
        secret: handoff.secret,
        driver_version: backend.driver_version(),
        ..Default::default()
    };
    let bytes = encode_welcome(&welcome, &session.visible_devices(), &backend.describe());
    // From here on a client that stops in the middle of a frame, or stops reading, is disconnected (see `stall`).
    let mut guarded = crate::stall::StallWatch::global(stall_timeout()).guard(transport, raw_fd);
    let welcomed = guarded.send(&[&bytes]);
    // After the welcome, a compressed channel speaks packed frames both ways (over the guarded socket).
    let mut transport: Box<dyn Transport> = if packed {
        use vgpu_transports::packed::{PackedTransport, Policy};
        let policy = if handoff.flags & HANDOFF_PACKED_AUTO != 0 {
            Policy::Auto
        } else {
            Policy::Always
        };
        Box::new(PackedTransport::with_policy(guarded, policy))
    } else {
        Box::new(guarded)
    };
    let outcome = match welcomed {
        Ok(()) => session.serve_channel(&mut *transport),
        Err(e) => Err(e.into()),
    };
    match &outcome {
        Ok(()) | Err(crate::session::ChannelEnd::Closed) => {}
        Err(e) => tracing::warn!(
            "session {:016x} (pid {}): channel ended: {e}",
            handoff.session_id,
            handoff.pid
        ),
    }
    if handoff.primary == 1 {
        if let Err(crate::session::ChannelEnd::Malformed(_)) = &outcome {
            exit_worker(2);
        }
        exit_worker(0);
    }
}

/// A TCP (`transport` 0) or TLS (3, resumed from the handoff's record state) connection as a transport.
fn network_transport(handoff: &Handoff, socket: TcpStream) -> Result<Box<dyn Transport>, String> {
    match handoff.transport {
        0 => TcpTransport::from_stream(socket)
            .map(|t| Box::new(t) as _)
            .map_err(|e| e.to_string()),
        3 => ResumeState::decode(&handoff.tls)
            .and_then(|state| TlsTransport::resume(socket, &state))
            .map(|t| Box::new(t) as _)
            .map_err(|e| e.to_string()),
        other => Err(format!("transport {other} is neither TCP nor TLS")),
    }
}

/// The welcome of a connection that is not a client channel (another server's copy, a lane): no device facts and
/// no secret, so its sender learns only that it was taken.
fn bare_welcome(session: &Session, handoff: &Handoff, message: &str) -> bytes::BytesMut {
    let welcome = Welcome {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        capabilities: CAPABILITIES,
        status: STATUS_OK,
        backend: session.backend().kind(),
        session_id: handoff.session_id,
        ..Default::default()
    };
    encode_welcome(&welcome, &[], message)
}

/// A connection from another GPU server with a copy for this session: welcomed (`bare_welcome`) and handed to the
/// channel whose `PeerRecv` waits.
fn deliver_peer(session: &Arc<Session>, handoff: &Handoff, mut transport: Box<dyn Transport>) {
    let bytes = bare_welcome(session, handoff, "peer copy");
    match transport.send(&[&bytes]) {
        Ok(()) => session.deliver_peer(handoff.secret, transport),
        Err(e) => tracing::warn!(
            "session {:016x}: a peer connection failed before its copy: {e}",
            handoff.session_id
        ),
    }
}

/// An extra connection of a client channel (TCP or TLS): welcomed (`bare_welcome`), then parked until the channel's
/// `LanesJoin` takes it. A lane read waits at most the stall timeout for bytes its segment announced.
fn deliver_lane(session: &Arc<Session>, handoff: &Handoff, fd: OwnedFd) {
    let socket = TcpStream::from(fd);
    let lane = socket
        .set_read_timeout(Some(stall_timeout()))
        .and_then(|()| socket.set_write_timeout(Some(stall_timeout())))
        .map_err(|e| e.to_string())
        .and_then(|()| network_transport(handoff, socket));
    let bytes = bare_welcome(session, handoff, "lane");
    match lane.and_then(|mut lane| lane.send(&[&bytes]).map(|()| lane).map_err(|e| e.to_string())) {
        Ok(lane) => session.deliver_lane(handoff.secret, handoff.lane_index, lane),
        Err(e) => tracing::warn!(
            "session {:016x}: a lane failed before its join: {e}",
            handoff.session_id
        ),
    }
}
