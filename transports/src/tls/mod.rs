//! The `tls://` transport: TLS 1.3 over TCP, for traffic that leaves the host. rustls does the handshake; the
//! record layer ([`record`]) is vGPU's own so a connection can move from the listener to a session's worker.
//!
//! A client verifies the server without a PKI by pinning the SHA-256 of its certificate (from the ticket, the URL's
//! `#sha256=` or `VGPU_TLS_FINGERPRINT`), or with a CA (`VGPU_TLS_CA`); it can present a certificate of its own for
//! mutual TLS (`VGPU_TLS_CLIENT_CERT`, `VGPU_TLS_CLIENT_KEY`). Servers build a [`TlsAcceptor`].

mod keys;
mod record;
mod verify;

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use vgpu_dataplane::transport::TransportError;

pub use keys::Suite;
pub use record::{ResumeState, TlsTransport, RESUME_LEN};
pub use rustls::pki_types;

/// ALPN protocol name: a vGPU client and server agree on it, so neither talks to something else by mistake.
const ALPN: &[u8] = b"vgpu";
/// How long a client's connect and handshake may take.
const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The crypto provider rustls and the record layer share: TLS 1.3 suites only, AES-GCM first.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            use rustls::crypto::aws_lc_rs as p;
            let mut provider = p::default_provider();
            provider.cipher_suites = vec![
                p::cipher_suite::TLS13_AES_128_GCM_SHA256,
                p::cipher_suite::TLS13_AES_256_GCM_SHA384,
                p::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            ];
            Arc::new(provider)
        })
        .clone()
}

/// Lower-case hex SHA-256 of a certificate (DER): what clients pin.
pub fn fingerprint(cert_der: &[u8]) -> String {
    keys::sha256(cert_der).iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a SHA-256 fingerprint: 64 hex digits, upper or lower case, colons allowed between bytes.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
    let hex: String = text.trim().chars().filter(|c| *c != ':').collect();
    let bad = || format!("'{text}' is not a SHA-256 fingerprint (64 hex digits)");
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn config_error(msg: String) -> TransportError {
    TransportError::Io(io::Error::new(io::ErrorKind::InvalidInput, msg))
}

/// Reads the certificates of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

/// How a client checks the server and whether it shows a certificate of its own.
#[derive(Clone)]
pub struct ClientSettings {
    config: Arc<ClientConfig>,
}

impl ClientSettings {
    /// The settings for a `tls://` endpoint: its pin (the URL's `#sha256=`) if any, else `VGPU_TLS_FINGERPRINT`,
    /// else the CA in `VGPU_TLS_CA`; a client certificate from `VGPU_TLS_CLIENT_CERT` and `VGPU_TLS_CLIENT_KEY`.
    pub fn from_env(pin: Option<&str>) -> Result<ClientSettings, TransportError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let pin = pin.map(str::to_string).or_else(|| var("VGPU_TLS_FINGERPRINT"));
        let ca = var("VGPU_TLS_CA");
        let client_auth = match (var("VGPU_TLS_CLIENT_CERT"), var("VGPU_TLS_CLIENT_KEY")) {
            (Some(c), Some(k)) => Some((
                load_certs(Path::new(&c)).map_err(config_error)?,
                load_key(Path::new(&k)).map_err(config_error)?,
            )),
            (None, None) => None,
            _ => {
                return Err(config_error(
                    "mutual TLS needs both VGPU_TLS_CLIENT_CERT and VGPU_TLS_CLIENT_KEY".into(),
                ))
            }
        };
        let verify = match (pin, ca) {
            (Some(pin), _) => ServerCheck::Pin(parse_fingerprint(&pin).map_err(config_error)?),
            (None, Some(ca)) => ServerCheck::Ca(load_certs(Path::new(&ca)).map_err(config_error)?),
            (None, None) => return Err(config_error(
                "a tls:// server must be verified: give its certificate's fingerprint (tls://host:port#sha256=HEX, \
                     VGPU_TLS_FINGERPRINT, or a control-plane ticket that carries it) or a CA (VGPU_TLS_CA)"
                    .into(),
            )),
        };
        ClientSettings::new(verify, client_auth)
    }

    /// Settings that pin the server's certificate by its SHA-256 and optionally present a client certificate.
    pub fn new(
        verify: ServerCheck,
        client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<ClientSettings, TransportError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| config_error(e.to_string()))?;
        let builder = match verify {
            ServerCheck::Pin(sha256) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verify::PinnedServer::new(sha256, &provider))),
            ServerCheck::Ca(certs) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs {
                    roots.add(c).map_err(|e| config_error(format!("VGPU_TLS_CA: {e}")))?;
                }
                let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| config_error(format!("VGPU_TLS_CA: {e}")))?;
                builder.with_webpki_verifier(verifier)
            }
        };
        let mut config = match client_auth {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| config_error(format!("client certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.enable_secret_extraction = true;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(ClientSettings {
            config: Arc::new(config),
        })
    }
}

/// How a client checks a server's certificate.
pub enum ServerCheck {
    /// Its SHA-256 must be this (no PKI: the ticket or the operator says which certificate the server has).
    Pin([u8; 32]),
    /// It must chain to one of these CA certificates and name the host dialled.
    Ca(Vec<CertificateDer<'static>>),
}

/// Client side: connects to `addr` (`host:port`), completes a TLS 1.3 handshake that checks the server as
/// `settings` says, and sends the already-framed `hello` as the first application data.
pub fn connect_with(addr: &str, settings: &ClientSettings, hello: &[u8]) -> Result<TlsTransport, TransportError> {
    let deadline = Instant::now() + CLIENT_HANDSHAKE_TIMEOUT;
    let stream = dial(addr, CLIENT_HANDSHAKE_TIMEOUT)?;
    // Before the handshake: its flights go out in several small writes, which Nagle's algorithm would hold back
    // for the peer's delayed acknowledgement (tens of milliseconds per flight).
    stream.set_nodelay(true)?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| config_error(format!("'{host}' is not a host name or address")))?;
    let keylog = Arc::new(TrafficSecrets::default());
    let mut config = (*settings.config).clone();
    config.key_log = keylog.clone();
    let mut conn = ClientConnection::new(Arc::new(config), name)
        .map_err(|e| TransportError::Protocol(format!("TLS client setup: {e}")))?;
    handshake(&mut conn, &stream, deadline)?;
    let mut t = finish(stream, conn, &keylog, record::Side::Client)?;
    t.set_deadline(Some(deadline))?;
    vgpu_dataplane::Transport::send(&mut t, &[hello])?;
    t.set_deadline(None)?;
    Ok(t)
}

/// [`connect_with`] with [`ClientSettings::from_env`] for the endpoint's pin.
pub fn connect(addr: &str, pin: Option<&str>, hello: &[u8]) -> Result<TlsTransport, TransportError> {
    connect_with(addr, &ClientSettings::from_env(pin)?, hello)
}

fn dial(addr: &str, timeout: Duration) -> Result<TcpStream, TransportError> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to no address")))
        .into())
}

/// Server side: the certificate and key a `vgpu server` presents, and whether clients must show certificates.
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
    fingerprint: String,
}

impl TlsAcceptor {
    /// `chain[0]` is the server's certificate; `client_ca` makes client certificates signed by one of those CAs
    /// mandatory (mutual TLS).
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        client_ca: Option<Vec<CertificateDer<'static>>>,
    ) -> Result<TlsAcceptor, String> {
        let fingerprint = fingerprint(chain.first().ok_or("no server certificate")?);
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?;
        let builder = match client_ca {
            Some(cas) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in cas {
                    roots.add(c).map_err(|e| format!("client CA: {e}"))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("client CA: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("server certificate and key: {e}"))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.enable_secret_extraction = true;
        // No resumption tickets: nothing may follow the handshake but the client's hello, and every connection
        // proves the server's key afresh.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.max_early_data_size = 0;
        Ok(TlsAcceptor {
            config: Arc::new(config),
            fingerprint,
        })
    }

    /// SHA-256 of the server certificate, lower-case hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Completes the handshake on an accepted socket by `deadline`. The transport keeps that deadline and reads
    /// no further than each record (for `recv_hello` and `into_resume`); clear both before serving on it.
    pub fn accept(&self, stream: TcpStream, deadline: Instant) -> Result<TlsTransport, TransportError> {
        stream.set_nodelay(true)?;
        let keylog = Arc::new(TrafficSecrets::default());
        let mut config = (*self.config).clone();
        config.key_log = keylog.clone();
        let mut conn = ServerConnection::new(Arc::new(config))
            .map_err(|e| TransportError::Protocol(format!("TLS server setup: {e}")))?;
        handshake(&mut conn, &stream, deadline)?;
        let mut t = finish(stream, conn, &keylog, record::Side::Server)?;
        t.set_read_ahead(false);
        t.set_deadline(Some(deadline))?;
        Ok(t)
    }
}

/// Why a server turns a TLS client away before any handshake (a plaintext alert, then close).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarlyRefusal {
    /// Too many failed attempts from the client's address: `access_denied`.
    LockedOut,
    /// Too many connections awaiting authentication: `user_canceled`.
    Busy,
}

/// Writes a fatal TLS alert record without blocking (the client's rustls reports it by name).
pub fn send_early_refusal(stream: &TcpStream, why: EarlyRefusal) {
    use std::os::fd::AsRawFd;
    let code = match why {
        EarlyRefusal::LockedOut => 49,
        EarlyRefusal::Busy => 90,
    };
    let _ = crate::sys::send_nonblocking(stream.as_raw_fd(), &[21, 3, 3, 0, 2, 2, code]);
}

/// The application traffic secrets rustls reports through its key log, for one connection.
#[derive(Debug, Default)]
struct TrafficSecrets {
    secrets: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl rustls::KeyLog for TrafficSecrets {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let mut s = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        match label {
            "CLIENT_TRAFFIC_SECRET_0" => s.0 = secret.to_vec(),
            "SERVER_TRAFFIC_SECRET_0" => s.1 = secret.to_vec(),
            _ => {}
        }
    }
    fn will_log(&self, label: &str) -> bool {
        matches!(label, "CLIENT_TRAFFIC_SECRET_0" | "SERVER_TRAFFIC_SECRET_0")
    }
}

impl Drop for TrafficSecrets {
    fn drop(&mut self) {
        let mut s = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        s.0.fill(0);
        s.1.fill(0);
    }
}

/// Reads for rustls during the handshake: never past the end of the current record (whatever follows belongs
/// to the record layer), and never past the deadline.
struct HandshakeIo<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
    /// Header bytes of the current record read so far, and body bytes still to come.
    header: [u8; 5],
    header_got: usize,
    header_given: usize,
    body_left: usize,
}

impl HandshakeIo<'_> {
    fn arm(&self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake deadline passed"));
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.set_write_timeout(Some(left))
    }
}

impl Read for HandshakeIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.header_given == 5 && self.body_left == 0 {
            self.header_got = 0;
            self.header_given = 0;
        }
        while self.header_got < 5 {
            self.arm()?;
            let mut s = self.stream;
            let n = s.read(&mut self.header[self.header_got..])?;
            if n == 0 {
                return Ok(0);
            }
            self.header_got += n;
            if self.header_got == 5 {
                self.body_left = u16::from_be_bytes([self.header[3], self.header[4]]) as usize;
            }
        }
        if self.header_given < 5 {
            let n = (5 - self.header_given).min(buf.len());
            buf[..n].copy_from_slice(&self.header[self.header_given..self.header_given + n]);
            self.header_given += n;
            return Ok(n);
        }
        self.arm()?;
        let want = self.body_left.min(buf.len());
        let mut s = self.stream;
        let n = s.read(&mut buf[..want])?;
        self.body_left -= n;
        Ok(n)
    }
}

impl Write for HandshakeIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        let mut s = self.stream;
        s.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn handshake<C>(conn: &mut C, stream: &TcpStream, deadline: Instant) -> Result<(), TransportError>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<<C as HandshakeSide>::Data>> + HandshakeSide,
{
    let mut io = HandshakeIo {
        stream,
        deadline,
        header: [0; 5],
        header_got: 0,
        header_given: 5,
        body_left: 0,
    };
    let io_err = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => TransportError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            "the TLS handshake did not finish in time",
        )),
        _ => crate::io_to_transport(e),
    };
    loop {
        while conn.wants_write() {
            conn.write_tls(&mut io).map_err(io_err)?;
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        if conn.read_tls(&mut io).map_err(io_err)? == 0 {
            return Err(TransportError::Protocol(
                "the peer closed the connection during the TLS handshake".into(),
            ));
        }
        if let Err(e) = conn.process_new_packets() {
            let _ = conn.write_tls(&mut io);
            return Err(TransportError::Protocol(describe_handshake_error(&e)));
        }
    }
}

/// The connection types `handshake` drives.
trait HandshakeSide {
    type Data;
}
impl HandshakeSide for ClientConnection {
    type Data = rustls::client::ClientConnectionData;
}
impl HandshakeSide for ServerConnection {
    type Data = rustls::server::ServerConnectionData;
}

fn describe_handshake_error(e: &rustls::Error) -> String {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::AlertReceived(A::AccessDenied) => {
            "the server refused the connection: too many failed attempts from this address; retry later".into()
        }
        rustls::Error::AlertReceived(A::UserCanceled) => {
            "the server is busy (too many connections awaiting authentication); retry later".into()
        }
        rustls::Error::AlertReceived(A::CertificateRequired) => {
            "the server requires a client certificate (mutual TLS): set VGPU_TLS_CLIENT_CERT and VGPU_TLS_CLIENT_KEY"
                .into()
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

/// After the handshake: checks what was negotiated and builds the record layer from the traffic secrets.
fn finish<C>(
    stream: TcpStream,
    conn: C,
    keylog: &TrafficSecrets,
    side: record::Side,
) -> Result<TlsTransport, TransportError>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<<C as HandshakeSide>::Data>> + HandshakeSide + Extract,
{
    if conn.alpn_protocol() != Some(ALPN) {
        return Err(TransportError::Protocol(
            "the TLS peer is not a vGPU endpoint (no 'vgpu' ALPN)".into(),
        ));
    }
    let suite = conn
        .negotiated_cipher_suite()
        .and_then(|s| Suite::from_code(u16::from(s.suite())))
        .ok_or_else(|| TransportError::Protocol("unexpected TLS cipher suite".into()))?;
    let extracted = conn
        .extract()
        .map_err(|e| TransportError::Protocol(format!("TLS secrets: {e}")))?;
    let (client_secret, server_secret) = {
        let s = keylog.secrets.lock().unwrap_or_else(|p| p.into_inner());
        (s.0.clone(), s.1.clone())
    };
    let (tx_secret, rx_secret) = match side {
        record::Side::Client => (&client_secret, &server_secret),
        record::Side::Server => (&server_secret, &client_secret),
    };
    let tx = keys::DirectionKeys::new(suite, tx_secret, extracted.tx.0).map_err(TransportError::Protocol)?;
    let rx = keys::DirectionKeys::new(suite, rx_secret, extracted.rx.0).map_err(TransportError::Protocol)?;
    // Our key schedule must agree with rustls's before a byte is protected with it.
    if iv_of(&extracted.tx.1) != Some(&tx.iv()[..]) || iv_of(&extracted.rx.1) != Some(&rx.iv()[..]) {
        return Err(TransportError::Protocol("TLS key schedule mismatch".into()));
    }
    Ok(TlsTransport::new(stream, tx, rx)?)
}

fn iv_of(s: &rustls::ConnectionTrafficSecrets) -> Option<&[u8]> {
    use rustls::ConnectionTrafficSecrets as S;
    match s {
        S::Aes128Gcm { iv, .. } | S::Aes256Gcm { iv, .. } | S::Chacha20Poly1305 { iv, .. } => Some(iv.as_ref()),
        _ => None,
    }
}

/// `dangerous_extract_secrets` of either connection type.
trait Extract {
    fn extract(self) -> Result<rustls::ExtractedSecrets, rustls::Error>;
}
impl Extract for ClientConnection {
    fn extract(self) -> Result<rustls::ExtractedSecrets, rustls::Error> {
        self.dangerous_extract_secrets()
    }
}
impl Extract for ServerConnection {
    fn extract(self) -> Result<rustls::ExtractedSecrets, rustls::Error> {
        self.dangerous_extract_secrets()
    }
}

#[cfg(test)]
mod tests;
