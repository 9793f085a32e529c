//! The listener's side of a connection: accepting on each transport, admitting its hello, and handing the
//! session to a worker process (started, reused or joined).

use super::*;

impl Listener {
    /// Accepts TCP connections (plain, TLS or RDMA setup) forever; each gets a bounded pre-authentication slot.
    pub(super) fn accept_tcp(self: Arc<Self>, listener: TcpListener, kind: Kind) {
        loop {
            let (stream, peer) = match listener.accept() {
                Ok(v) => v,
                Err(e) => {
                    // Out of descriptors (or similar): pause instead of spinning on the error.
                    tracing::warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let source = Source::of_ip(peer.ip());
            if let Some(why) = self.early_refusal(source) {
                self.refuse_early_tcp(stream, kind, why);
                continue;
            }
            let Some(permit) = self.pending.try_enter() else {
                self.refuse_early_tcp(stream, kind, EarlyRefusal::Busy);
                continue;
            };
            let l = self.clone();
            let spawned = std::thread::Builder::new().name("vgpu-hello".into()).spawn(move || {
                let _permit = permit;
                l.hello_tcp(stream, kind, source);
            });
            if let Err(e) = spawned {
                tracing::warn!("cannot start a thread for a new connection: {e}");
            }
        }
    }

    /// Accepts shared-memory clients forever (by the local user who connects, for back-off).
    pub(super) fn accept_unix(self: Arc<Self>, listener: UnixListener) {
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let source = crate::sys::peer_uid(stream.as_raw_fd()).map_or(Source::Unknown, Source::LocalUser);
            // A shared-memory client learns of a refusal only once its rings exist; turned away early, it sees
            // the connection close during the handshake.
            if self.early_refusal(source).is_some() {
                continue;
            }
            let Some(permit) = self.pending.try_enter() else {
                tracing::warn!("refusing a shared-memory connection: too many awaiting authentication");
                continue;
            };
            let l = self.clone();
            let spawned = std::thread::Builder::new().name("vgpu-hello".into()).spawn(move || {
                let _permit = permit;
                let deadline = Instant::now() + l.cfg.admission.hello_timeout;
                match read_hello_by(&stream, deadline) {
                    Ok(hello) => l.admit(Conn::Unix(stream), &hello, source),
                    Err(e) => l.no_hello(source, &e.to_string()),
                }
            });
            if let Err(e) = spawned {
                tracing::warn!("cannot start a thread for a new connection: {e}");
            }
        }
    }

    fn early_refusal(&self, source: Source) -> Option<EarlyRefusal> {
        self.backoff.locked_out(source).map(EarlyRefusal::LockedOut)
    }

    /// Turns a TCP connection away before reading anything: plain TCP gets a refusal welcome, TLS a fatal alert
    /// (the handshake has not happened), RDMA setup a close. The socket then lingers briefly (see `Closer`).
    fn refuse_early_tcp(&self, stream: TcpStream, kind: Kind, why: EarlyRefusal) {
        let (status, message) = match &why {
            EarlyRefusal::LockedOut(wait) => (
                STATUS_UNAUTHORIZED,
                format!(
                    "too many failed attempts from this address: retry in {} s",
                    wait.as_secs() + 1
                ),
            ),
            EarlyRefusal::Busy => (
                STATUS_BUSY,
                "the server has too many connections awaiting authentication: retry shortly".to_string(),
            ),
        };
        tracing::warn!("refusing a {kind:?} connection before its hello: {message}");
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        match kind {
            Kind::Tcp => {
                let welcome = Welcome {
                    magic: MAGIC,
                    version: PROTOCOL_VERSION,
                    status,
                    ..Default::default()
                };
                let _ = (&stream).write(&encode_welcome(&welcome, &[], &message));
            }
            Kind::Tls => tls::send_early_refusal(
                &stream,
                match why {
                    EarlyRefusal::LockedOut(_) => tls::EarlyRefusal::LockedOut,
                    EarlyRefusal::Busy => tls::EarlyRefusal::Busy,
                },
            ),
            Kind::Rdma => {}
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        self.closer.close(stream);
    }

    /// Reads the hello of a TCP connection (after the TLS handshake, for TLS) within the hello deadline.
    fn hello_tcp(self: Arc<Self>, stream: TcpStream, kind: Kind, source: Source) {
        let deadline = Instant::now() + self.cfg.admission.hello_timeout;
        let read = match kind {
            Kind::Tcp => read_hello_by(&stream, deadline)
                .map(|h| (Conn::Tcp(stream), h))
                .map_err(|e| e.to_string()),
            Kind::Rdma => read_hello_by(&stream, deadline)
                .map(|h| (Conn::Rdma(stream), h))
                .map_err(|e| e.to_string()),
            Kind::Tls => match &self.cfg.tls {
                Some(t) => t
                    .acceptor
                    .accept(stream, deadline)
                    .and_then(|mut t| t.recv_hello(MAX_HELLO).map(|h| (Conn::Tls(Box::new(t)), h)))
                    .map_err(|e| e.to_string()),
                None => Err("TLS is not configured".into()),
            },
        };
        match read {
            Ok((conn, hello)) => self.admit(conn, &hello, source),
            Err(why) => self.no_hello(source, &why),
        }
    }

    /// A connection that sent no valid hello in time counts as a failure of its source.
    fn no_hello(&self, source: Source, why: &str) {
        let lockout = self.backoff.failed(source);
        tracing::warn!(
            "dropping a connection from {source} that sent no valid hello: {why}{}",
            lockout.map_or(String::new(), |d| format!(" (locked out for {} s)", d.as_secs()))
        );
    }

    /// A failed authentication: back-off for the source, then the refusal.
    fn auth_failed(&self, conn: Conn, source: Source, status: u32, why: &str, pid: u32) {
        let lockout = self.backoff.failed(source);
        tracing::warn!(
            "refusing pid {pid} from {source}: {why}{}",
            lockout.map_or(String::new(), |d| format!(
                " (further attempts refused for {} s)",
                d.as_secs()
            ))
        );
        conn.refuse(status, why);
    }

    /// Decides on a hello: new sessions by the authority and the tenant's bound, attaches by the session secret.
    fn admit(self: Arc<Self>, conn: Conn, hello: &[u8], source: Source) {
        let (hello, credential) = match decode_hello(hello) {
            Ok(v) => v,
            Err(why) => {
                tracing::warn!("refusing a connection from {source}: {why}");
                self.backoff.failed(source);
                return conn.refuse(STATUS_VERSION_MISMATCH, &why);
            }
        };
        if let Conn::Tls(t) = &conn {
            if t.has_buffered_input() {
                let why = "the client sent more than its hello before the server answered";
                self.backoff.failed(source);
                return conn.refuse(STATUS_VERSION_MISMATCH, why);
            }
        }
        if hello.version != PROTOCOL_VERSION {
            let why = format!(
                "protocol version mismatch: client speaks {}, server {}; install matching vGPU versions",
                hello.version, PROTOCOL_VERSION
            );
            tracing::warn!("refusing pid {}: {why}", hello.pid);
            return conn.refuse(STATUS_VERSION_MISMATCH, &why);
        }
        match hello.mode {
            MODE_NEW_SESSION => {
                let admission = match self.cfg.authority.admit(&credential) {
                    Ok(a) => a,
                    Err(why) => return self.auth_failed(conn, source, STATUS_UNAUTHORIZED, &why, hello.pid),
                };
                self.backoff.succeeded(source);
                let limit = admission
                    .max_sessions
                    .unwrap_or(self.cfg.admission.max_sessions_per_tenant);
                let slot = match self.tenants.try_open(&admission.tenant, limit) {
                    Ok(slot) => slot,
                    Err(open) => {
                        let why = format!(
                            "too many sessions: {} already has {open} open on this server (at most {limit}); end one \
                             and retry",
                            admission.tenant
                        );
                        tracing::warn!("refusing pid {} from {source}: {why}", hello.pid);
                        return conn.refuse(STATUS_BUSY, &why);
                    }
                };
                if let Err(why) = self.start_session(conn, &hello, admission, slot) {
                    tracing::error!("cannot start a session: {why}");
                }
            }
            MODE_ATTACH => {
                let handoff = Handoff {
                    primary: 0,
                    session_id: hello.session_id,
                    secret: hello.secret,
                    pid: hello.pid,
                    flags: self.channel_flags(&hello, &conn),
                    ..Default::default()
                };
                self.hand_to_session(conn, &hello, source, handoff, "a connection");
            }
            MODE_PEER => self.admit_peer(conn, &hello, source),
            MODE_LANE => self.admit_lane(conn, &hello, &credential, source),
            other => conn.refuse(STATUS_VERSION_MISMATCH, &format!("unknown hello mode {other}")),
        }
    }

    /// What the channel of `hello` gets besides its session: compression where the client asks for it over a
    /// network transport and this server allows it.
    fn channel_flags(&self, hello: &Hello, conn: &Conn) -> u32 {
        let network = matches!(conn, Conn::Tcp(_) | Conn::Tls(_));
        if !(self.cfg.compress && network && hello.capabilities & CAP_PACKED != 0) {
            0
        } else if hello.capabilities & CAP_PACKED_AUTO != 0 {
            HANDOFF_PACKED | HANDOFF_PACKED_AUTO
        } else {
            HANDOFF_PACKED
        }
    }

    /// An extra connection of a client channel (`MODE_LANE`): a TCP or TLS connection, admitted by the session
    /// secret like an attach, handed to the worker with its join token and index.
    fn admit_lane(&self, conn: Conn, hello: &Hello, credential: &[u8], source: Source) {
        if !matches!(conn, Conn::Tcp(_) | Conn::Tls(_)) {
            return conn.refuse(STATUS_VERSION_MISMATCH, "lanes are TCP or TLS connections");
        }
        let Some((token, index)) = credential
            .split_first_chunk::<16>()
            .and_then(|(token, rest)| Some((*token, u32::from_le_bytes(*<&[u8; 4]>::try_from(rest).ok()?))))
        else {
            return conn.refuse(
                STATUS_VERSION_MISMATCH,
                &format!("a lane's hello carries {LANE_CREDENTIAL} bytes after it"),
            );
        };
        let handoff = Handoff {
            primary: HANDOFF_LANE,
            session_id: hello.session_id,
            secret: token,
            lane_index: index,
            pid: hello.pid,
            ..Default::default()
        };
        self.hand_to_session(conn, hello, source, handoff, "a lane");
    }

    /// A further connection of a live session (a thread's channel, a lane), admitted by the session's secret in
    /// `hello` and passed to its worker with `handoff`; a wrong secret or an ended session is an authentication
    /// failure. `what` names the connection in the log.
    fn hand_to_session(&self, conn: Conn, hello: &Hello, source: Source, handoff: Handoff, what: &str) {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(&hello.session_id) {
            Some(entry) if constant_time_eq(&entry.secret, &hello.secret) => {
                if let Err(e) = conn.hand_to(&entry.control, handoff, None) {
                    tracing::warn!("session {:x}: cannot hand {what} to its worker: {e}", hello.session_id);
                }
            }
            _ => {
                drop(sessions);
                self.auth_failed(
                    conn,
                    source,
                    STATUS_NO_SUCH_SESSION,
                    "no such session (it ended, or the secret is wrong)",
                    hello.pid,
                );
            }
        }
    }

    /// Another GPU server delivering a copy to one of our sessions: handed to that session's worker only against a
    /// grant the session registered (`PeerRecv`). The grant may follow the sender by a moment (the client sends
    /// both halves at once), so a known session's connection waits for it; an unknown session is an
    /// authentication failure like any other.
    fn admit_peer(&self, conn: Conn, hello: &Hello, source: Source) {
        let control = {
            let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions.get(&hello.session_id).map(|e| e.control.try_clone())
        };
        let control = match control {
            Some(Ok(c)) => c,
            Some(Err(e)) => return conn.refuse(STATUS_SERVER_ERROR, &format!("socket: {e}")),
            None => {
                return self.auth_failed(
                    conn,
                    source,
                    STATUS_NO_SUCH_SESSION,
                    "peer copy for no such session (it ended)",
                    hello.pid,
                )
            }
        };
        if !self
            .registry
            .take_peer_grant(hello.session_id, &hello.secret, self.cfg.admission.peer_wait)
        {
            // Not a failure of the source's credentials: a copy whose receiving half never came (the client went
            // away, or its session's channel is stuck). No back-off, so that one tenant cannot lock a server out.
            let why = "no copy of this session awaits that token";
            tracing::warn!("refusing a peer connection from {source}: {why}");
            return conn.refuse(STATUS_UNAUTHORIZED, why);
        }
        let handoff = Handoff {
            primary: HANDOFF_PEER,
            session_id: hello.session_id,
            secret: hello.secret,
            pid: hello.pid,
            ..Default::default()
        };
        if let Err(e) = conn.hand_to(&control, handoff, None) {
            tracing::warn!(
                "session {:x}: cannot hand a peer connection to its worker: {e}",
                hello.session_id
            );
        }
    }

    /// Sends the session's first connection, limits and scheduler slots to its worker; returns the worker's usage
    /// socket.
    #[allow(clippy::too_many_arguments)]
    fn hand_off(
        &self,
        conn: Conn,
        hello: &Hello,
        admission: &Admission,
        control: &UnixStream,
        session_id: u64,
        secret: [u8; 16],
        claimed: &[(usize, Option<usize>)],
    ) -> Result<UnixStream, String> {
        let ticks = control.try_clone().map_err(|e| format!("socketpair: {e}"))?;
        let flags = self.channel_flags(hello, &conn);
        let mut handoff = Handoff {
            primary: 1,
            session_id,
            secret,
            pid: hello.pid,
            flags,
            slots: [crate::sched::host::NO_SLOT; MAX_VISIBLE],
            ..Default::default()
        };
        for &(d, slot) in claimed {
            if let (Some(entry), Some(slot)) = (handoff.slots.get_mut(d), slot) {
                *entry = slot as u16;
            }
        }
        handoff.set_limits(&admission.limits)?;
        handoff.set_peers(&admission.peers);
        // The session's own link to the IPC registry: whatever arrives on it is this session's, of this tenant.
        let (registry_end, worker_end) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        conn.hand_to(control, handoff, Some(&worker_end))
            .map_err(|e| format!("handoff: {e}"))?;
        drop(worker_end);
        let member = Member {
            session: session_id,
            tenant: admission.tenant.clone(),
        };
        let registry = self.registry.clone();
        std::thread::spawn(move || registry.serve(member, registry_end));
        Ok(ticks)
    }

    fn start_session(
        self: &Arc<Self>,
        conn: Conn,
        hello: &Hello,
        admission: Admission,
        slot: SessionSlot,
    ) -> Result<(), String> {
        let session_id: u64 = rand::random();
        let secret: [u8; 16] = rand::random();
        let claim = crate::sched::host::claim(self.sched.as_ref(), &admission.limits);
        let (claimed, sm_percent) = (claim.slots, claim.sm_percent);
        let worker = if sm_percent < 100 {
            // The SM limit is read when the worker's driver starts: this session needs a worker of its own, not
            // the spare (started without one).
            tracing::info!("session {session_id:016x}: MPS SM limit {sm_percent} %: starting a worker for it");
            self.new_worker(Some(sm_percent))
        } else {
            self.take_worker()
        };
        let Spare { child, control } = match worker {
            Ok(w) => w,
            Err(e) => {
                crate::sched::host::release(self.sched.as_ref(), &claimed);
                return Err(e);
            }
        };
        // The session is listed before its worker can welcome the client (the lock is held across the hand-off):
        // a thread of the app that attaches the moment the welcome arrives must find it.
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let handed = self.hand_off(conn, hello, &admission, &control, session_id, secret, &claimed);
        let ticks = match handed {
            Ok(ticks) => ticks,
            Err(e) => {
                drop(sessions);
                crate::sched::host::release(self.sched.as_ref(), &claimed);
                return Err(e);
            }
        };
        let label = admission.label;
        sessions.insert(
            session_id,
            SessionEntry {
                secret,
                control,
                label: label.clone(),
                _slot: slot,
            },
        );
        drop(sessions);
        let me = self.clone();
        std::thread::spawn(move || me.refill_spare());
        tracing::info!("session {session_id:016x} started for client pid {} {label}", hello.pid);
        let me = self.clone();
        std::thread::spawn(move || {
            me.meter(&label, ticks, &claimed);
            me.reap(session_id, child);
            crate::sched::host::release(me.sched.as_ref(), &claimed);
        });
        Ok(())
    }

    /// Reads the worker's usage ticks until it exits, handing each period to the authority; the last one
    /// (sent when the socket closes) says the session ended.
    fn meter(&self, label: &str, mut ticks: UnixStream, claimed: &[(usize, Option<usize>)]) {
        use std::io::Read;
        let epoch = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        let mut last = UsageCounters::default();
        let mut last_charged = crate::sched::host::charged(self.sched.as_ref(), claimed);
        let mut since = Instant::now();
        let mut since_wall = std::time::SystemTime::now();
        let mut buf = [0u8; std::mem::size_of::<UsageTick>()];
        loop {
            let now_counters = match ticks.read_exact(&mut buf) {
                Ok(()) => match UsageTick::read_from_bytes(&buf) {
                    Ok(t) => Some(UsageCounters {
                        allocated_bytes: t.allocated_bytes,
                        bytes_moved: t.bytes_moved,
                        ..Default::default()
                    }),
                    Err(_) => None,
                },
                Err(_) => None,
            };
            let ended = now_counters.is_none();
            let now = Instant::now();
            let now_wall = std::time::SystemTime::now();
            let current = now_counters.unwrap_or(UsageCounters {
                bytes_moved: last.bytes_moved,
                ..Default::default()
            });
            let seconds = now.duration_since(since).as_secs_f64();
            let charged = crate::sched::host::charged(self.sched.as_ref(), claimed);
            let gpu_busy_seconds = if self.sched.as_ref().is_some_and(|s| s.scheduling()) {
                charged
                    .iter()
                    .zip(&last_charged)
                    .map(|(now, before)| now.saturating_sub(*before) as f64 / 1e9)
                    .collect()
            } else {
                Vec::new()
            };
            // Ticks are a second apart: memory between two is taken as the mean of both readings.
            let mean_held = (last.allocated_bytes as f64 + current.allocated_bytes as f64) / 2.0;
            self.cfg.authority.record(UsageDelta {
                label: label.to_string(),
                period_start: epoch(since_wall),
                period_end: epoch(now_wall),
                seconds,
                memory_byte_seconds: mean_held * seconds,
                bytes_moved: current.bytes_moved.saturating_sub(last.bytes_moved),
                allocated_bytes: current.allocated_bytes,
                gpu_busy_seconds,
                ended,
            });
            if ended {
                return;
            }
            last = current;
            last_charged = charged;
            since = now;
            since_wall = now_wall;
        }
    }

    /// Ends every live session with one of these labels: its worker is told to exit and frees its memory.
    pub(super) fn end_sessions(&self, labels: &[String]) {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        for (id, entry) in sessions.iter() {
            if !entry.label.is_empty() && labels.contains(&entry.label) {
                tracing::warn!("session {id:016x} ({}): ended by the control plane", entry.label);
                let _ = entry.control.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// The spare worker if it is alive, else a fresh one.
    fn take_worker(&self) -> Result<Spare, String> {
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut s) = spare {
            if matches!(s.child.try_wait(), Ok(None)) {
                return Ok(s);
            }
            tracing::warn!("the spare worker had exited; starting a fresh one");
        }
        self.new_worker(None)
    }

    /// A fresh worker; `sm_percent`: its SM limit under MPS.
    fn new_worker(&self, sm_percent: Option<u32>) -> Result<Spare, String> {
        let (control, child_end) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let child = self
            .spawn_worker(&child_end, sm_percent)
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        Ok(Spare { child, control })
    }

    /// Starts a spare worker if there is none.
    pub(super) fn refill_spare(&self) {
        if !self.keep_spare || self.spare.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return;
        }
        match self.new_worker(None) {
            Ok(w) => {
                let mut slot = self.spare.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    *slot = Some(w);
                } else {
                    // Another thread filled it meanwhile; this one is not needed (closing its socket ends it).
                    drop(slot);
                    let mut w = w;
                    drop(w.control);
                    let _ = w.child.wait();
                }
            }
            Err(e) => tracing::warn!("cannot start a spare worker: {e}"),
        }
    }

    fn spawn_worker(&self, child_end: &UnixStream, sm_percent: Option<u32>) -> std::io::Result<Child> {
        let fd = child_end.as_raw_fd();
        // The worker inherits exactly these descriptors (its control socket and the scheduler's table), cleared of
        // close-on-exec in the child alone: another thread starting a worker at the same moment must not inherit
        // this one's control socket, or the socket would outlive this worker and its session never be seen to end.
        let mut inherited = vec![fd];
        if let Some(s) = &self.sched {
            inherited.push(s.fd());
        }
        let (program, args) = self
            .cfg
            .worker_command
            .split_first()
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("VGPU_WORKER_FD", fd.to_string())
            .env("VGPU_WORKER_BACKEND", self.resolved.as_str())
            .env(
                "VGPU_WORKER_STALL_MS",
                self.cfg.admission.stall_timeout.as_millis().to_string(),
            )
            .env(
                "VGPU_WORKER_PEER_WAIT_MS",
                self.cfg.admission.peer_wait.as_millis().to_string(),
            );
        if let Some(d) = &self.cfg.driver {
            cmd.env("VGPU_WORKER_DRIVER", d);
        }
        if self.cfg.identity != 0 {
            cmd.env("VGPU_WORKER_IDENTITY", self.cfg.identity.to_string());
        }
        if !self.cfg.peers.is_empty() {
            let list: Vec<String> = self.cfg.peers.iter().map(|p| p.to_string()).collect();
            cmd.env("VGPU_WORKER_PEERS", list.join(","));
        }
        if let Some(s) = &self.sched {
            cmd.env("VGPU_WORKER_SCHED_FD", s.fd().to_string());
        }
        if let Some(p) = sm_percent {
            cmd.env("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", p.to_string());
        }
        crate::sys::inherit_in_child(&mut cmd, inherited);
        cmd.spawn()
    }

    fn reap(&self, session_id: u64, mut child: Child) {
        let status = child.wait();
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&session_id);
        match status {
            Ok(s) if s.success() => tracing::info!("session {session_id:016x} ended"),
            Ok(s) => tracing::warn!("session {session_id:016x}: worker exited with {s}"),
            Err(e) => tracing::warn!("session {session_id:016x}: cannot wait for worker: {e}"),
        }
    }
}
