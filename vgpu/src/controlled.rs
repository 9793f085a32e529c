//! `vgpu server --control URL`: registers this server and its GPUs with the control plane, admits sessions
//! by their tickets (checked offline with the control plane's public keys), ends revoked ones, reports usage.
//! Enrolls once with the node token, then uses its own credential (kept in a 0600 file).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use vgpu_control::client::{self, GpuInfo, UsageSample};
use vgpu_control::ticket::{TicketError, TicketGpu, TicketVerifier};
use vgpu_cuda_exec::{Admission, Authority, Limits, Listening, UsageDelta};
use vgpu_dataplane::handshake::DeviceFacts;

/// How often the server tells the control plane it is alive (and learns which sessions to end).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often accumulated usage is sent; a session's last record goes at once.
const USAGE_FLUSH: Duration = Duration::from_secs(15);
/// Usage that could not be delivered is kept this long, then dropped with a warning.
const USAGE_KEEP: Duration = Duration::from_secs(24 * 3600);

/// Where the control plane is and how this server introduces itself.
pub struct ControlLink {
    /// One URL or several replicas, comma-separated.
    pub url: String,
    /// The operator's node token: needed to enroll, not once the server holds its own credential.
    pub node_token: Option<String>,
    /// Where the server's own credential is kept (mode 0600); `None`: only in memory.
    pub credential_file: Option<std::path::PathBuf>,
    /// Hex SHA-256 of this server's data-plane TLS certificate, registered so tickets carry it.
    pub tls_cert_sha256: Option<String>,
    /// Name the server registers under (re-registering by name keeps its GPUs' assignments).
    pub name: String,
    /// The endpoint clients dial; default: `tls://` this host's name and the TLS port, else `host:port` of TCP.
    pub advertise: Option<String>,
}

/// Admits sessions by control-plane tickets; see the module docs.
pub struct TicketAuthority {
    link: ControlLink,
    /// Utilization source for heartbeats (real GPUs only).
    nvml: Option<crate::nvml::Nvml>,
    state: Mutex<State>,
    /// Itself, for the background thread `started` spawns.
    me: Weak<TicketAuthority>,
}

#[derive(Default)]
struct State {
    registration: Option<Registered>,
    /// Ticket session ids already used here, with their expiry: a ticket opens one session.
    used: HashMap<String, u64>,
    /// Usage not yet delivered, by ticket session id.
    usage: HashMap<String, Metered>,
    /// Device memory each live session holds, for the heartbeat's inventory.
    held: HashMap<String, u64>,
    to_end: Vec<String>,
    pending: Option<PendingReport>,
}

struct Registered {
    server_id: String,
    server_token: String,
    address: String,
    verifier: TicketVerifier,
    /// Key ids the verifier holds, and when the set was last fetched.
    kids: Vec<String>,
    keys_fetched: Instant,
    devices: Vec<DeviceFacts>,
}

/// A usage report sent and not yet acknowledged: resent as it is (same id) until it is, so a report that
/// reached the control plane before a failure is counted once.
struct PendingReport {
    id: String,
    records: Vec<UsageSample>,
    sent: Vec<(String, bool)>,
}

/// `$XDG_STATE_HOME/vgpu/<name>.credential`, or under `~/.local/state`.
pub fn default_credential_file(name: &str) -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".local/state")))?;
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(base.join("vgpu").join(format!("{safe}.credential")))
}

fn save_credential(path: &std::path::Path, token: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    writeln!(f, "{token}").map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

fn keys_of(url: &str) -> Result<(TicketVerifier, Vec<String>), String> {
    let v = client::fetch_public_keys(url).map_err(|e| format!("cannot get the ticket keys from {url}: {e}"))?;
    let verifier = TicketVerifier::from_public_key_reply(&v).map_err(|e| format!("control plane at {url}: {e}"))?;
    let kids = v["keys"]
        .as_array()
        .map(|a| a.iter().filter_map(|k| k["kid"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    Ok((verifier, kids))
}

/// One session's usage since its last delivered report.
struct Metered {
    /// This server's GPUs in the ticket (client ordinal order).
    gpus: Vec<TicketGpu>,
    period_start: u64,
    period_end: u64,
    seconds: f64,
    memory_byte_seconds: f64,
    bytes_moved: u64,
    /// GPU time the scheduler measured the session using on each of its GPUs here (ticket order), in seconds:
    /// what each usage sample's `gpu_busy_seconds` carries.
    gpu_busy_seconds: Vec<f64>,
    ended: bool,
    since: Instant,
}

impl TicketAuthority {
    pub fn new(link: ControlLink) -> Arc<TicketAuthority> {
        Arc::new_cyclic(|me| TicketAuthority {
            link,
            nvml: crate::nvml::Nvml::open(),
            state: Mutex::new(State::default()),
            me: me.clone(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, address: &str, devices: &[DeviceFacts]) -> Result<Registered, String> {
        let url = &self.link.url;
        let (verifier, kids) = keys_of(url)?;
        let saved = self
            .link
            .credential_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let gpus = inventory(devices, &HashMap::new());
        let enroll = |credential: Option<&str>| {
            client::register_server(
                url,
                &client::Enrollment {
                    node_token: if credential.is_some() {
                        None
                    } else {
                        self.link.node_token.as_deref()
                    },
                    credential,
                    name: &self.link.name,
                    address,
                    gpus: &gpus,
                    tls_cert_sha256: self.link.tls_cert_sha256.as_deref(),
                },
            )
        };
        let reg = match saved.as_deref() {
            Some(cred) => match enroll(Some(cred)) {
                // The control plane no longer knows this credential (the server was deleted, or this is
                // another control plane): enroll afresh with the node token.
                Err(e) if e.status == Some(401) && self.link.node_token.is_some() => enroll(None),
                other => other,
            },
            None => enroll(None),
        }
        .map_err(|e| format!("cannot register with the control plane at {url}: {e}"))?;
        if let Some(path) = &self.link.credential_file {
            if saved.as_deref() != Some(reg.server_token.as_str()) {
                if let Err(e) = save_credential(path, &reg.server_token) {
                    tracing::warn!("cannot keep this server's credential: {e} (the next start enrolls again)");
                }
            }
        }
        Ok(Registered {
            server_id: reg.server_id,
            server_token: reg.server_token,
            address: address.to_string(),
            verifier,
            kids,
            keys_fetched: Instant::now(),
            devices: devices.to_vec(),
        })
    }

    /// Fetches the control plane's public keys again (it rotated its signing key), at most every few seconds.
    fn refresh_keys(&self) {
        let due = self
            .state()
            .registration
            .as_ref()
            .is_some_and(|r| r.keys_fetched.elapsed() > Duration::from_secs(5));
        if !due {
            return;
        }
        match keys_of(&self.link.url) {
            Ok((verifier, kids)) => {
                if let Some(r) = self.state().registration.as_mut() {
                    r.verifier = verifier;
                    r.kids = kids;
                    r.keys_fetched = Instant::now();
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }

    /// Heartbeats and usage delivery, forever (on its own thread).
    fn background(self: Arc<Self>) {
        let mut last_beat = Instant::now();
        let mut last_flush = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            if last_beat.elapsed() >= HEARTBEAT {
                last_beat = Instant::now();
                self.heartbeat();
            }
            let urgent = self.state().usage.values().any(|m| m.ended);
            if urgent || last_flush.elapsed() >= USAGE_FLUSH {
                last_flush = Instant::now();
                self.flush_usage();
            }
        }
    }

    fn heartbeat(&self) {
        let (token, id, gpus, address, devices) = {
            let st = self.state();
            let Some(r) = &st.registration else { return };
            let mut per_gpu: HashMap<String, u64> = HashMap::new();
            for (sid, bytes) in &st.held {
                if let Some(g) = st.usage.get(sid).and_then(|m| m.gpus.first()) {
                    *per_gpu.entry(g.gpu_uuid.clone()).or_default() += bytes;
                }
            }
            let mut gpus = inventory(&r.devices, &per_gpu);
            if let Some(nvml) = &self.nvml {
                for g in &mut gpus {
                    g.utilization_pct = nvml.utilization_pct(&g.uuid).unwrap_or(0.0);
                }
            }
            (
                r.server_token.clone(),
                r.server_id.clone(),
                gpus,
                r.address.clone(),
                r.devices.clone(),
            )
        };
        match client::heartbeat(&self.link.url, &token, &id, &gpus) {
            Ok(beat) => {
                let unknown_key = {
                    let mut st = self.state();
                    st.to_end.extend(beat.end_sessions);
                    st.registration
                        .as_ref()
                        .is_some_and(|r| beat.signing_kids.iter().any(|k| !r.kids.contains(k)))
                };
                if unknown_key {
                    self.refresh_keys();
                }
            }
            // The control plane forgot this server (a fresh in-memory store, or an admin removed it): register
            // again under the same name, which keeps the GPU ids the tickets name.
            Err(e) if matches!(e.status, Some(401 | 403 | 404)) => match self.register(&address, &devices) {
                Ok(r) => {
                    tracing::warn!("control plane no longer knew this server ({e}); registered again");
                    self.state().registration = Some(r);
                }
                Err(why) => tracing::warn!("{why}"),
            },
            Err(e) => tracing::warn!("heartbeat to {} failed: {e}", self.link.url),
        }
    }

    fn flush_usage(&self) {
        let (token, report) = {
            let mut st = self.state();
            let Some(r) = &st.registration else { return };
            let token = r.server_token.clone();
            let server_id = r.server_id.clone();
            if st.pending.is_none() {
                let now = Instant::now();
                st.usage.retain(|sid, m| {
                    let keep = !m.ended || now.duration_since(m.since) < USAGE_KEEP;
                    if !keep {
                        tracing::warn!("dropping usage of session {sid}: undeliverable for a day");
                    }
                    keep
                });
                let mut records = Vec::new();
                let mut sent = Vec::new();
                for (sid, m) in st.usage.iter_mut() {
                    if m.seconds == 0.0 && m.bytes_moved == 0 && !m.ended {
                        continue;
                    }
                    records.extend(samples(sid, m));
                    sent.push((sid.clone(), m.ended));
                    // Moved into the report: a new period starts where this one stopped.
                    m.period_start = m.period_end;
                    m.seconds = 0.0;
                    m.memory_byte_seconds = 0.0;
                    m.bytes_moved = 0;
                    m.gpu_busy_seconds.iter_mut().for_each(|s| *s = 0.0);
                }
                if records.is_empty() {
                    return;
                }
                st.pending = Some(PendingReport {
                    id: format!("{server_id}-{}-{}", now_s(), rand_suffix()),
                    records,
                    sent,
                });
            }
            let Some(p) = &st.pending else { return };
            (token, (p.id.clone(), p.records.clone()))
        };
        let (id, records) = report;
        match client::report_usage(&self.link.url, &token, &id, &records) {
            Ok(_) => self.report_done(),
            // Refused as implausible or for a session the control plane does not know: resending cannot help.
            Err(e) if matches!(e.status, Some(400 | 404 | 409)) => {
                tracing::warn!("usage report {id} refused, dropped: {e}");
                self.report_done();
            }
            Err(e) => tracing::warn!("usage report to {} failed (resent as is next time): {e}", self.link.url),
        }
    }

    fn report_done(&self) {
        let mut st = self.state();
        if let Some(p) = st.pending.take() {
            for (sid, ended) in p.sent {
                if ended {
                    st.usage.remove(&sid);
                }
            }
        }
    }
}

fn rand_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:016x}", h.finish())
}

/// Usage records for one session: GPU time on each of its GPUs here, weighted by the compute share it holds;
/// memory and bytes are counted on its first GPU (the server meters a session's memory as a whole); the GPU time
/// the scheduler measured on each GPU (`Metered::gpu_busy_seconds[i]`) is that record's `gpu_busy_seconds`.
fn samples(sid: &str, m: &Metered) -> Vec<UsageSample> {
    m.gpus
        .iter()
        .enumerate()
        .map(|(i, g)| UsageSample {
            session_id: sid.to_string(),
            gpu_uuid: g.gpu_uuid.clone(),
            period_start: m.period_start,
            period_end: m.period_end.max(m.period_start),
            gpu_seconds: m.seconds * g.compute_share.clamp(0.0, 1.0),
            gpu_busy_seconds: m.gpu_busy_seconds.get(i).copied().unwrap_or(0.0),
            memory_gib_hours: if i == 0 {
                m.memory_byte_seconds / (1u64 << 30) as f64 / 3600.0
            } else {
                0.0
            },
            bytes_moved: if i == 0 { m.bytes_moved } else { 0 },
            session_ended: m.ended,
        })
        .collect()
}

/// The GPUs as the control plane's inventory lists them, with the memory sessions hold on each.
fn inventory(devices: &[DeviceFacts], held: &HashMap<String, u64>) -> Vec<GpuInfo> {
    devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let uuid = d.uuid_string();
            GpuInfo {
                memory_used_mib: held.get(&uuid).copied().unwrap_or(0) >> 20,
                uuid,
                index: i as u32,
                name: d.name_str().to_string(),
                model: None,
                memory_total_mib: d.total_mem >> 20,
                utilization_pct: 0.0,
            }
        })
        .collect()
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Authority for TicketAuthority {
    fn started(&self, listening: &Listening, devices: &[DeviceFacts]) -> Result<Vec<String>, String> {
        let host = |addr: std::net::SocketAddr| {
            if addr.ip().is_unspecified() {
                format!("{}:{}", this_host(), addr.port())
            } else {
                addr.to_string()
            }
        };
        // Clients on other hosts reach the server over TLS; plain TCP is advertised only without it.
        let address = match (&self.link.advertise, listening.tls, listening.tcp) {
            (Some(a), _, _) => a.clone(),
            (None, Some(tls), _) => format!("tls://{}", host(tls)),
            (None, None, Some(tcp)) => host(tcp),
            (None, None, None) => {
                return Err("with --control the server must listen on TLS or TCP (or give --advertise)".into())
            }
        };
        let reg = self.register(&address, devices)?;
        let mut lines = vec![format!(
            "registered with the control plane at {} as server {} ({address})",
            self.link.url, reg.server_id
        )];
        if let Some(pin) = &self.link.tls_cert_sha256 {
            lines.push(format!("clients pin this server's TLS certificate by sha256={pin}"));
        }
        self.state().registration = Some(reg);
        let me = self.me.upgrade().ok_or("the server is shutting down")?;
        std::thread::Builder::new()
            .name("vgpu-control-link".into())
            .spawn(move || me.background())
            .map_err(|e| e.to_string())?;
        Ok(lines)
    }

    fn admit(&self, credential: &[u8]) -> Result<Admission, String> {
        let token = std::str::from_utf8(credential).map_err(|_| "the credential is not a ticket".to_string())?;
        // Signed with a key this server has not seen: the control plane rotated it; fetch the set once.
        let unknown = {
            let st = self.state();
            st.registration
                .as_ref()
                .is_some_and(|r| matches!(r.verifier.verify(token), Err(TicketError::UnknownKey(_))))
        };
        if unknown {
            self.refresh_keys();
        }
        let mut st = self.state();
        let r = st
            .registration
            .as_ref()
            .ok_or("the server is not registered with its control plane yet; try again")?;
        let claims = r.verifier.verify(token).map_err(|e| match e {
            TicketError::Expired => "the session ticket expired: get a new one (set VGPU_KEY and VGPU_CONTROL_URL, \
                                     and the shim fetches one)"
                .to_string(),
            TicketError::Malformed(_) if !token.contains('.') => {
                "this server takes control-plane tickets: set VGPU_KEY and VGPU_CONTROL_URL instead of a static key"
                    .to_string()
            }
            other => format!("the session ticket was refused: {other}"),
        })?;
        let gpus: Vec<TicketGpu> = claims
            .gpus
            .iter()
            .filter(|g| g.server_id == r.server_id)
            .cloned()
            .collect();
        if gpus.is_empty() {
            let elsewhere: Vec<&str> = claims.gpus.iter().map(|g| g.server_address.as_str()).collect();
            return Err(format!(
                "the ticket names no GPU on this server; its GPUs are on {}",
                elsewhere.join(", ")
            ));
        }
        // The other servers of the ticket: the control plane signed their addresses, so the session may send copies
        // to them directly (`PeerSend`), as to the operator's `--peer` list.
        let mut peers: Vec<vgpu_dataplane::Endpoint> = Vec::new();
        for g in claims.gpus.iter().filter(|g| g.server_id != r.server_id) {
            match vgpu_dataplane::Endpoint::parse(&g.endpoint()) {
                Ok(e) if !peers.contains(&e) => peers.push(e),
                Ok(_) => {}
                Err(why) => tracing::warn!("a ticket names a server this server cannot dial: {why}"),
            }
        }
        let mut devices = Vec::new();
        let mut sharing = Vec::new();
        for g in &gpus {
            sharing.push(vgpu_cuda_exec::SlotConfig {
                class: vgpu_cuda_exec::SlotConfig::parse_class(&g.priority)?,
                share: g.compute_share,
                cap: g.share_cap,
                sm_percent: 100,
            });
            let index = r
                .devices
                .iter()
                .position(|d| d.uuid_string() == g.gpu_uuid)
                .ok_or_else(|| format!("the ticket names GPU {}, which this server no longer has", g.gpu_uuid))?;
            devices.push(index as u32);
        }
        let memory_mib: u64 = gpus.iter().map(|g| g.memory_limit_mib).sum();
        let now = now_s();
        st.used.retain(|_, exp| *exp + 60 > now);
        if st.used.contains_key(&claims.sid) {
            return Err(
                "this ticket already opened a session: each process needs its own ticket (set VGPU_KEY \
                        and VGPU_CONTROL_URL, and the shim fetches one)"
                    .into(),
            );
        }
        st.used.insert(claims.sid.clone(), claims.exp);
        st.usage.insert(
            claims.sid.clone(),
            Metered {
                gpus,
                period_start: now,
                period_end: now,
                seconds: 0.0,
                memory_byte_seconds: 0.0,
                bytes_moved: 0,
                gpu_busy_seconds: vec![0.0; devices.len()],
                ended: false,
                since: Instant::now(),
            },
        );
        Ok(Admission {
            label: claims.sid,
            limits: Limits {
                memory_bytes: Some(memory_mib.saturating_mul(1 << 20)),
                devices: Some(devices),
                sharing,
                ..Default::default()
            },
            tenant: format!("tenant {}", claims.sub),
            // Tickets carry no session bound yet: the server's --max-sessions-per-tenant applies.
            max_sessions: None,
            peers,
        })
    }

    fn record(&self, u: UsageDelta) {
        let mut st = self.state();
        if u.ended {
            st.held.remove(&u.label);
        } else {
            st.held.insert(u.label.clone(), u.allocated_bytes);
        }
        if let Some(m) = st.usage.get_mut(&u.label) {
            m.period_end = u.period_end.max(m.period_end);
            m.seconds += u.seconds;
            m.memory_byte_seconds += u.memory_byte_seconds;
            m.bytes_moved += u.bytes_moved;
            for (total, add) in m.gpu_busy_seconds.iter_mut().zip(&u.gpu_busy_seconds) {
                *total += add;
            }
            m.ended |= u.ended;
            m.since = Instant::now();
        }
    }

    fn sessions_to_end(&self) -> Vec<String> {
        std::mem::take(&mut self.state().to_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metered(seconds: f64, share: f64) -> Metered {
        Metered {
            gpus: vec![
                TicketGpu {
                    server_id: "srv".into(),
                    server_address: "h:1".into(),
                    gpu_uuid: "GPU-a".into(),
                    gpu_index: 0,
                    memory_limit_mib: 1024,
                    compute_share: share,
                    priority: "guaranteed".into(),
                    share_cap: false,
                    tls_cert_sha256: None,
                },
                TicketGpu {
                    server_id: "srv".into(),
                    server_address: "h:1".into(),
                    gpu_uuid: "GPU-b".into(),
                    gpu_index: 1,
                    memory_limit_mib: 1024,
                    compute_share: 1.0,
                    priority: "guaranteed".into(),
                    share_cap: false,
                    tls_cert_sha256: None,
                },
            ],
            period_start: 100,
            period_end: 160,
            seconds,
            memory_byte_seconds: (2u64 << 30) as f64 * 3600.0,
            bytes_moved: 77,
            gpu_busy_seconds: vec![12.5, 0.0],
            ended: true,
            since: Instant::now(),
        }
    }

    #[test]
    fn delivered_gpu_time_accumulates_per_gpu_until_reported() {
        let authority = TicketAuthority::new(ControlLink {
            url: "http://127.0.0.1:9".into(),
            node_token: Some("t".into()),
            credential_file: None,
            tls_cert_sha256: None,
            name: "n".into(),
            advertise: None,
        });
        let mut m = metered(0.0, 0.5);
        m.ended = false;
        m.gpu_busy_seconds = vec![0.0, 0.0];
        authority.state().usage.insert("sess_9".into(), m);
        for busy in [vec![0.5, 0.25], vec![0.125, 0.0]] {
            authority.record(UsageDelta {
                label: "sess_9".into(),
                period_start: 1,
                period_end: 2,
                seconds: 1.0,
                memory_byte_seconds: 0.0,
                bytes_moved: 0,
                allocated_bytes: 0,
                gpu_busy_seconds: busy,
                ended: false,
            });
        }
        assert_eq!(authority.state().usage["sess_9"].gpu_busy_seconds, vec![0.625, 0.25]);
    }

    #[test]
    fn samples_weigh_gpu_time_by_share_and_count_memory_once() {
        let s = samples("sess_1", &metered(60.0, 0.25));
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].gpu_seconds, 15.0);
        assert_eq!(s[1].gpu_seconds, 60.0);
        assert_eq!(s[0].memory_gib_hours, 2.0);
        assert_eq!(s[1].memory_gib_hours, 0.0);
        assert_eq!((s[0].bytes_moved, s[1].bytes_moved), (77, 0));
        assert!(s
            .iter()
            .all(|x| x.session_ended && x.period_start == 100 && x.period_end == 160));
    }

    #[test]
    fn inventory_uses_nvidia_uuid_format_and_held_memory() {
        let mut d = DeviceFacts {
            uuid: [0xab; 16],
            total_mem: 8 << 30,
            ..Default::default()
        };
        d.set_name("Test GPU");
        let uuid = d.uuid_string();
        assert_eq!(uuid, "GPU-abababab-abab-abab-abab-abababababab");
        let held = HashMap::from([(uuid.clone(), 3u64 << 20)]);
        let inv = inventory(&[d], &held);
        assert_eq!(inv[0].memory_used_mib, 3);
        assert_eq!(inv[0].memory_total_mib, 8192);
        assert_eq!(inv[0].name, "Test GPU");
    }
}
