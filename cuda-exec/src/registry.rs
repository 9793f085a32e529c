//! The server's IPC registry: what sessions exported for other processes (`cuIpcGetMemHandle`, event handles,
//! shareable VMM memory) and who may open it. One per `vgpu server`, in the listener; each worker reaches it over
//! its own socket pair, made when the listener admits the session, so the registry knows which session and tenant
//! asks without trusting the worker to say so.
//!
//! An export gets a random token; the client only ever sees `IpcHandle { server id, token }`. The driver's own
//! handle (and a file descriptor, where there is one) stays here and goes only to a worker whose session belongs to
//! the exporter's tenant: another tenant, another server or a made-up token gets `CUDA_ERROR_INVALID_VALUE`, what
//! the driver answers for a handle it cannot open. `RegistryLink` is the worker's end.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::{IPC_HANDLE_LEN, IPC_KIND_EVENT, IPC_KIND_MEM, IPC_KIND_SHAREABLE};
use vgpu_transports::fdpass;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// An export's name in the registry.
pub type Token = [u8; 16];

/// Most objects one session may have exported at once; past it an export fails with out-of-memory.
pub const MAX_EXPORTS_PER_SESSION: usize = 64 << 10;
/// Most entries the registry holds for all sessions together.
pub const MAX_ENTRIES: usize = 1 << 20;
/// Most file descriptors the registry keeps for one session's exports, and for all of them (the listener's own
/// descriptor limit bounds these).
pub const MAX_FDS_PER_SESSION: usize = 1024;
pub const MAX_FDS: usize = 8192;
/// Most server-to-server copy grants (`PeerRecv`) one session may have waiting for their sender at once.
pub const MAX_PEER_GRANTS_PER_SESSION: usize = 64;
/// How long a grant waits for its sending server before it lapses.
pub const PEER_GRANT_LIFETIME: Duration = Duration::from_secs(60);
/// How long a worker waits for the listener's answer before it gives the request up.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);

/// Who asks: a session, as the listener admitted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub session: u64,
    /// The tenant the session belongs to (the ticket's subject; one tenant for a standalone server).
    pub tenant: String,
}

struct Entry {
    kind: u16,
    tenant: String,
    exporter: u64,
    size: u64,
    driver: [u8; IPC_HANDLE_LEN],
    fd: Option<OwnedFd>,
    /// The exporter freed the object: no new opens; kept while other sessions still have it open, so that the
    /// exporter can tell when the memory is really gone (`open_count`).
    revoked: bool,
    /// Opens not yet closed, by session.
    opens: HashMap<u64, u32>,
}

impl Entry {
    fn open_count(&self) -> u64 {
        self.opens.values().map(|&n| u64::from(n)).sum()
    }
}

/// An export as an opening session receives it.
#[derive(Debug)]
pub struct Opened {
    pub size: u64,
    pub driver: [u8; IPC_HANDLE_LEN],
    pub fd: Option<OwnedFd>,
}

pub struct Registry {
    server_id: u64,
    entries: Mutex<HashMap<Token, Entry>>,
    /// Server-to-server copies a session expects: (session, one-time token) → when it was granted. The listener
    /// hands a `MODE_PEER` connection to a session only against one of these.
    peer_grants: Mutex<HashMap<(u64, Token), Instant>>,
    peer_granted: Condvar,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry {
            server_id: rand::random::<u64>() | 1,
            entries: Mutex::new(HashMap::new()),
            peer_grants: Mutex::new(HashMap::new()),
            peer_granted: Condvar::new(),
        })
    }

    /// This server's id, which every handle it issues names.
    pub fn server_id(&self) -> u64 {
        self.server_id
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Token, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an export of `who` and returns its token.
    pub fn export(
        &self,
        who: &Member,
        kind: u16,
        size: u64,
        driver: [u8; IPC_HANDLE_LEN],
        fd: Option<OwnedFd>,
    ) -> CuResult<Token> {
        if ![IPC_KIND_MEM, IPC_KIND_EVENT, IPC_KIND_SHAREABLE].contains(&kind) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut entries = self.entries();
        let mine = entries.values().filter(|e| e.exporter == who.session);
        let (count, fds) = mine.fold((0, 0), |(n, f), e| (n + 1, f + usize::from(e.fd.is_some())));
        let all_fds = entries.values().filter(|e| e.fd.is_some()).count();
        let over_fds = fd.is_some() && (fds >= MAX_FDS_PER_SESSION || all_fds >= MAX_FDS);
        if count >= MAX_EXPORTS_PER_SESSION || entries.len() >= MAX_ENTRIES || over_fds {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        let token: Token = rand::random();
        entries.insert(
            token,
            Entry {
                kind,
                tenant: who.tenant.clone(),
                exporter: who.session,
                size,
                driver,
                fd,
                revoked: false,
                opens: HashMap::new(),
            },
        );
        Ok(token)
    }

    /// Opens an export for `who`: only one of its tenant's, on this server, not withdrawn; memory and events not
    /// in the exporting session itself (`CUDA_ERROR_INVALID_CONTEXT`, the driver's answer there). Shareable
    /// memory may be imported by its exporter too, as natively.
    pub fn open(&self, who: &Member, kind: u16, server_id: u64, token: &Token) -> CuResult<Opened> {
        if server_id != self.server_id {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut entries = self.entries();
        let e = entries
            .get_mut(token)
            .filter(|e| e.kind == kind && !e.revoked && e.tenant == who.tenant)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if e.exporter == who.session && kind != IPC_KIND_SHAREABLE {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        let fd = match &e.fd {
            Some(fd) => Some(fd.try_clone().map_err(|_| CUDA_ERROR_OUT_OF_MEMORY)?),
            None => None,
        };
        if kind != IPC_KIND_EVENT {
            // Events are not counted: nothing is freed when they go (cuEventDestroy of an opened event).
            let n = e.opens.entry(who.session).or_insert(0);
            *n = n.saturating_add(1);
        }
        Ok(Opened {
            size: e.size,
            driver: e.driver,
            fd,
        })
    }

    /// One open of `who` fewer. An entry its exporter withdrew goes with its last open.
    pub fn close(&self, who: &Member, token: &Token) -> CuResult<()> {
        let mut entries = self.entries();
        let e = entries.get_mut(token).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        match e.opens.get_mut(&who.session) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                e.opens.remove(&who.session);
            }
            None => return Err(CUDA_ERROR_INVALID_VALUE),
        }
        if e.revoked && e.opens.is_empty() {
            entries.remove(token);
        }
        Ok(())
    }

    /// The exporter freed what it exported: no one may open it any more. Returns how many opens other sessions
    /// still hold (the memory lives on until they close it).
    pub fn revoke(&self, who: &Member, token: &Token) -> CuResult<u64> {
        let mut entries = self.entries();
        let e = entries
            .get_mut(token)
            .filter(|e| e.exporter == who.session)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        e.revoked = true;
        e.fd = None;
        let open = e.open_count();
        if open == 0 {
            entries.remove(token);
        }
        Ok(open)
    }

    /// Opens other sessions still hold of one of `who`'s exports (0 once it is gone).
    pub fn open_count(&self, who: &Member, token: &Token) -> u64 {
        self.entries()
            .get(token)
            .filter(|e| e.exporter == who.session)
            .map_or(0, Entry::open_count)
    }

    fn peer_grants(&self) -> MutexGuard<'_, HashMap<(u64, Token), Instant>> {
        self.peer_grants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `who` expects another server to deliver a copy under `token` (once, within `PEER_GRANT_LIFETIME`).
    pub fn grant_peer(&self, who: &Member, token: &Token) -> CuResult<()> {
        let mut grants = self.peer_grants();
        grants.retain(|_, at| at.elapsed() < PEER_GRANT_LIFETIME);
        if grants.keys().filter(|(s, _)| *s == who.session).count() >= MAX_PEER_GRANTS_PER_SESSION {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        grants.insert((who.session, *token), Instant::now());
        self.peer_granted.notify_all();
        Ok(())
    }

    /// Takes `session`'s grant `token` (a sending server presents it), waiting up to `wait` for the receiving
    /// session to register it: the client sends both halves of a copy at once, so the sender may arrive first.
    pub fn take_peer_grant(&self, session: u64, token: &Token, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut grants = self.peer_grants();
        loop {
            if let Some(at) = grants.remove(&(session, *token)) {
                return at.elapsed() < PEER_GRANT_LIFETIME;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            grants = self
                .peer_granted
                .wait_timeout(grants, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// A session ended: its exports go (their descriptors closed), and so do its opens.
    pub fn end_session(&self, session: u64) {
        self.peer_grants().retain(|(s, _), _| *s != session);
        let mut entries = self.entries();
        entries.retain(|_, e| {
            e.opens.remove(&session);
            e.exporter != session && !(e.revoked && e.opens.is_empty())
        });
    }

    /// Serves one worker's requests until its socket closes, then ends its session here.
    pub fn serve(self: Arc<Self>, who: Member, sock: UnixStream) {
        loop {
            let mut buf = [0u8; std::mem::size_of::<Request>()];
            let fd = match recv_message(&sock, &mut buf) {
                Ok(Some(fd)) => fd,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("session {:016x}: IPC registry link: {e}", who.session);
                    break;
                }
            };
            let Ok(req) = Request::read_from_bytes(&buf) else { break };
            let (reply, fd_out) = self.answer(&who, req, fd);
            let fds: Vec<_> = fd_out.iter().map(|f| f.as_raw_fd()).collect();
            if let Err(e) = fdpass::send_with_fds(&sock, reply.as_bytes(), &fds) {
                tracing::warn!("session {:016x}: IPC registry link: {e}", who.session);
                break;
            }
        }
        self.end_session(who.session);
    }

    fn answer(&self, who: &Member, req: Request, fd: Option<OwnedFd>) -> (Reply, Option<OwnedFd>) {
        let mut reply = Reply::new_zeroed();
        reply.server_id = self.server_id;
        let outcome: CuResult<Option<OwnedFd>> = match req.op {
            OP_EXPORT => self.export(who, req.kind, req.size, req.driver, fd).map(|token| {
                reply.token = token;
                None
            }),
            OP_OPEN => self.open(who, req.kind, req.server_id, &req.token).map(|o| {
                reply.size = o.size;
                reply.driver = o.driver;
                o.fd
            }),
            OP_CLOSE => self.close(who, &req.token).map(|_| None),
            OP_REVOKE => self.revoke(who, &req.token).map(|n| {
                reply.count = n;
                None
            }),
            OP_OPEN_COUNT => {
                reply.count = self.open_count(who, &req.token);
                Ok(None)
            }
            OP_PEER_GRANT => self.grant_peer(who, &req.token).map(|_| None),
            OP_PEER_WITHDRAW => {
                self.peer_grants().remove(&(who.session, req.token));
                Ok(None)
            }
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        };
        match outcome {
            Ok(fd) => {
                reply.has_fd = u32::from(fd.is_some());
                (reply, fd)
            }
            Err(code) => {
                reply.status = code.code();
                (reply, None)
            }
        }
    }
}

const OP_EXPORT: u16 = 1;
const OP_OPEN: u16 = 2;
const OP_CLOSE: u16 = 3;
const OP_REVOKE: u16 = 4;
const OP_OPEN_COUNT: u16 = 5;
const OP_PEER_GRANT: u16 = 6;
const OP_PEER_WITHDRAW: u16 = 7;

/// A worker's request to the registry (a descriptor may ride along with an export).
#[repr(C)]
#[derive(Debug, Clone, Copy, IntoBytes, FromBytes, Immutable, KnownLayout)]
struct Request {
    op: u16,
    kind: u16,
    has_fd: u32,
    size: u64,
    server_id: u64,
    token: Token,
    driver: [u8; IPC_HANDLE_LEN],
}

/// The registry's answer: `status` 0 or a CUresult (a descriptor rides along with an open's answer).
#[repr(C)]
#[derive(Debug, Clone, Copy, IntoBytes, FromBytes, Immutable, KnownLayout)]
struct Reply {
    status: u32,
    has_fd: u32,
    size: u64,
    count: u64,
    server_id: u64,
    token: Token,
    driver: [u8; IPC_HANDLE_LEN],
}

/// Receives one fixed-size message and the descriptor that came with its first bytes. `None`: the peer closed the
/// socket between messages.
fn recv_message(sock: &UnixStream, buf: &mut [u8]) -> io::Result<Option<Option<OwnedFd>>> {
    let (n, mut fds) = fdpass::recv_with_fds(sock, buf, 1)?;
    if n == 0 {
        return Ok(None);
    }
    (&*sock).read_exact(&mut buf[n..])?;
    Ok(Some(fds.pop()))
}

/// The worker's end of its registry socket: one request at a time, answered in order.
pub struct RegistryLink {
    /// `None` once a request failed half-way: the two ends no longer agree where a message starts.
    sock: Mutex<Option<UnixStream>>,
}

/// What an export gets back: the registry's server id and the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    pub server_id: u64,
    pub token: Token,
}

impl RegistryLink {
    pub fn new(sock: UnixStream) -> RegistryLink {
        let _ = sock.set_read_timeout(Some(LINK_TIMEOUT));
        let _ = sock.set_write_timeout(Some(LINK_TIMEOUT));
        RegistryLink {
            sock: Mutex::new(Some(sock)),
        }
    }

    /// Sends one request and reads its answer. A lost link is `CUDA_ERROR_OPERATING_SYSTEM` (the listener went
    /// away or stopped answering), for this request and every later one.
    fn ask(&self, req: Request, fd: Option<&OwnedFd>) -> CuResult<(Reply, Option<OwnedFd>)> {
        let mut guard = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        let sock = guard.as_ref().ok_or(CUDA_ERROR_OPERATING_SYSTEM)?;
        let fds: Vec<_> = fd.iter().map(|f| f.as_raw_fd()).collect();
        let exchanged = fdpass::send_with_fds(sock, req.as_bytes(), &fds).and_then(|_| {
            let mut buf = [0u8; std::mem::size_of::<Reply>()];
            match recv_message(sock, &mut buf)? {
                Some(fd) => Ok((buf, fd)),
                None => Err(io::ErrorKind::UnexpectedEof.into()),
            }
        });
        let (buf, fd) = match exchanged {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("IPC registry unreachable: {e}");
                *guard = None;
                return Err(CUDA_ERROR_OPERATING_SYSTEM);
            }
        };
        let reply = Reply::read_from_bytes(&buf).map_err(|_| CUDA_ERROR_OPERATING_SYSTEM)?;
        CUresult::from_code(reply.status).result()?;
        Ok((reply, fd))
    }

    pub fn export(
        &self,
        kind: u16,
        size: u64,
        driver: [u8; IPC_HANDLE_LEN],
        fd: Option<&OwnedFd>,
    ) -> CuResult<Exported> {
        let req = Request {
            op: OP_EXPORT,
            kind,
            has_fd: u32::from(fd.is_some()),
            size,
            driver,
            ..Request::new_zeroed()
        };
        let (reply, _) = self.ask(req, fd)?;
        Ok(Exported {
            server_id: reply.server_id,
            token: reply.token,
        })
    }

    pub fn open(&self, kind: u16, server_id: u64, token: Token) -> CuResult<Opened> {
        let req = Request {
            op: OP_OPEN,
            kind,
            server_id,
            token,
            ..Request::new_zeroed()
        };
        let (reply, fd) = self.ask(req, None)?;
        Ok(Opened {
            size: reply.size,
            driver: reply.driver,
            fd,
        })
    }

    pub fn close(&self, token: Token) -> CuResult<()> {
        self.simple(OP_CLOSE, token).map(|_| ())
    }

    /// Withdraws an export; returns the opens other sessions still hold.
    pub fn revoke(&self, token: Token) -> CuResult<u64> {
        self.simple(OP_REVOKE, token)
    }

    pub fn open_count(&self, token: Token) -> CuResult<u64> {
        self.simple(OP_OPEN_COUNT, token)
    }

    /// Registers a server-to-server copy this session expects (see `Registry::grant_peer`).
    pub fn grant_peer(&self, token: Token) -> CuResult<()> {
        self.simple(OP_PEER_GRANT, token).map(|_| ())
    }

    /// Withdraws a grant no connection will use (the sender reused an earlier one).
    pub fn withdraw_peer(&self, token: Token) -> CuResult<()> {
        self.simple(OP_PEER_WITHDRAW, token).map(|_| ())
    }

    fn simple(&self, op: u16, token: Token) -> CuResult<u64> {
        let req = Request {
            op,
            token,
            ..Request::new_zeroed()
        };
        self.ask(req, None).map(|(reply, _)| reply.count)
    }
}

/// A registry link for a session of `who`, served by `registry` on a thread of its own (tests, and the listener).
pub fn connect(registry: &Arc<Registry>, who: Member) -> io::Result<RegistryLink> {
    let (mine, theirs) = UnixStream::pair()?;
    let r = registry.clone();
    std::thread::Builder::new()
        .name("vgpu-ipc-registry".into())
        .spawn(move || r.serve(who, theirs))?;
    Ok(RegistryLink::new(mine))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(session: u64, tenant: &str) -> Member {
        Member {
            session,
            tenant: tenant.into(),
        }
    }

    #[test]
    fn opens_are_for_the_exporters_tenant_on_this_server_only() {
        let r = Registry::new();
        let (a, b, other) = (member(1, "t"), member(2, "t"), member(3, "u"));
        let token = r.export(&a, IPC_KIND_MEM, 4096, [9; 64], None).expect("export");
        let id = r.server_id();
        let opened = r.open(&b, IPC_KIND_MEM, id, &token).expect("same tenant");
        assert_eq!((opened.size, opened.driver), (4096, [9; 64]));
        assert_eq!(
            r.open(&other, IPC_KIND_MEM, id, &token).err(),
            Some(CUDA_ERROR_INVALID_VALUE)
        );
        assert_eq!(
            r.open(&a, IPC_KIND_MEM, id, &token).err(),
            Some(CUDA_ERROR_INVALID_CONTEXT)
        );
        assert_eq!(
            r.open(&b, IPC_KIND_MEM, id ^ 2, &token).err(),
            Some(CUDA_ERROR_INVALID_VALUE)
        );
        assert_eq!(
            r.open(&b, IPC_KIND_EVENT, id, &token).err(),
            Some(CUDA_ERROR_INVALID_VALUE)
        );
        assert_eq!(
            r.open(&b, IPC_KIND_MEM, id, &[0; 16]).err(),
            Some(CUDA_ERROR_INVALID_VALUE)
        );
        // Freed by its exporter while open: no new opens, the count says who still holds it.
        assert_eq!(r.revoke(&a, &token), Ok(1));
        assert_eq!(
            r.open(&b, IPC_KIND_MEM, id, &token).err(),
            Some(CUDA_ERROR_INVALID_VALUE)
        );
        assert_eq!(r.open_count(&a, &token), 1);
        assert_eq!(r.close(&b, &token), Ok(()));
        assert_eq!(r.open_count(&a, &token), 0);
        assert_eq!(r.close(&b, &token), Err(CUDA_ERROR_INVALID_VALUE), "closed twice");
        assert!(r.entries().is_empty(), "the entry went with its last open");
    }

    #[test]
    fn only_the_exporter_withdraws_and_sessions_clean_up_when_they_end() {
        let r = Registry::new();
        let (a, b) = (member(1, "t"), member(2, "t"));
        let t1 = r
            .export(&a, IPC_KIND_SHAREABLE, 2 << 20, [0; 64], None)
            .expect("export");
        let t2 = r.export(&a, IPC_KIND_EVENT, 0, [1; 64], None).expect("export");
        assert_eq!(r.revoke(&b, &t1), Err(CUDA_ERROR_INVALID_VALUE));
        r.open(&a, IPC_KIND_SHAREABLE, r.server_id(), &t1)
            .expect("an exporter may import its own");
        r.open(&b, IPC_KIND_SHAREABLE, r.server_id(), &t1).expect("import");
        r.open(&b, IPC_KIND_EVENT, r.server_id(), &t2).expect("event");
        assert_eq!(r.open_count(&a, &t1), 2);
        r.end_session(2);
        assert_eq!(r.open_count(&a, &t1), 1, "b's import went with b");
        r.end_session(1);
        assert!(r.entries().is_empty());
    }

    #[test]
    fn exports_are_bounded_per_session() {
        let r = Registry::new();
        let a = member(1, "t");
        for _ in 0..MAX_FDS_PER_SESSION {
            let fd = crate::sys::shared_memory(4096).expect("memfd");
            r.export(&a, IPC_KIND_MEM, 4096, [0; 64], Some(fd)).expect("export");
        }
        let fd = crate::sys::shared_memory(4096).expect("memfd");
        assert_eq!(
            r.export(&a, IPC_KIND_MEM, 4096, [0; 64], Some(fd)).err(),
            Some(CUDA_ERROR_OUT_OF_MEMORY)
        );
        r.export(&a, IPC_KIND_MEM, 4096, [0; 64], None)
            .expect("without a descriptor");
        assert_eq!(r.export(&a, 9, 0, [0; 64], None).err(), Some(CUDA_ERROR_INVALID_VALUE));
    }

    #[test]
    fn peer_grants_are_one_time_per_session_and_bounded() {
        let r = Registry::new();
        let (a, b) = (member(1, "t"), member(2, "t"));
        let token: Token = [7; 16];
        r.grant_peer(&a, &token).expect("grant");
        // Another session's id with the same token, or a wrong token, finds nothing (and waits no longer than asked).
        assert!(!r.take_peer_grant(b.session, &token, Duration::ZERO));
        assert!(!r.take_peer_grant(a.session, &[8; 16], Duration::from_millis(20)));
        assert!(r.take_peer_grant(a.session, &token, Duration::ZERO));
        assert!(
            !r.take_peer_grant(a.session, &token, Duration::ZERO),
            "a grant is used once"
        );
        for i in 0..MAX_PEER_GRANTS_PER_SESSION {
            r.grant_peer(&a, &[i as u8; 16]).expect("within the bound");
        }
        assert_eq!(r.grant_peer(&a, &[255; 16]).err(), Some(CUDA_ERROR_OUT_OF_MEMORY));
        r.grant_peer(&b, &[255; 16]).expect("another session has its own bound");
        r.end_session(a.session);
        assert!(
            !r.take_peer_grant(a.session, &[0; 16], Duration::ZERO),
            "a session's grants end with it"
        );
    }

    #[test]
    fn a_sender_that_arrives_first_waits_for_the_grant() {
        let r = Registry::new();
        let link = connect(&r, member(3, "t")).expect("link");
        let waiter = {
            let r = r.clone();
            std::thread::spawn(move || r.take_peer_grant(3, &[9; 16], Duration::from_secs(5)))
        };
        std::thread::sleep(Duration::from_millis(50));
        link.grant_peer([9; 16]).expect("grant through the link");
        assert!(waiter.join().expect("waiter"));
    }

    #[test]
    fn links_carry_requests_and_descriptors() {
        use std::os::unix::fs::FileExt;
        let r = Registry::new();
        let a = connect(&r, member(1, "t")).expect("link a");
        let b = connect(&r, member(2, "t")).expect("link b");
        let c = connect(&r, member(3, "u")).expect("link c");
        let fd = crate::sys::shared_memory(4096).expect("memfd");
        std::fs::File::from(fd.try_clone().expect("dup"))
            .write_all_at(b"shared bytes", 100)
            .expect("write");
        let e = a.export(IPC_KIND_MEM, 4096, [5; 64], Some(&fd)).expect("export");
        assert_eq!(e.server_id, r.server_id());
        let o = b.open(IPC_KIND_MEM, e.server_id, e.token).expect("open");
        let mut got = [0u8; 12];
        std::fs::File::from(o.fd.expect("a descriptor came"))
            .read_exact_at(&mut got, 100)
            .expect("read");
        assert_eq!(&got, b"shared bytes");
        assert_eq!(
            c.open(IPC_KIND_MEM, e.server_id, e.token).err(),
            Some(CUDA_ERROR_INVALID_VALUE)
        );
        assert_eq!(a.revoke(e.token), Ok(1));
        b.close(e.token).expect("close");
        assert_eq!(a.open_count(e.token), Ok(0));
        a.export(IPC_KIND_EVENT, 0, [0; 64], None).expect("another export");
        assert_eq!(r.entries().len(), 1);
        drop(a);
        // The link of an ended session is gone from the registry's books once its thread saw the socket close.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !r.entries().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(r.entries().is_empty());
    }
}
