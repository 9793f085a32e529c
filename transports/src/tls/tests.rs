//! Tests of the TLS transport against itself and against stock rustls (so the record layer speaks standard TLS 1.3):
//! data both ways, key updates from either side, a connection moved between owners, deadlines, pinning, mutual TLS.

use super::*;
use std::net::TcpListener;
use std::thread;
use vgpu_dataplane::Transport;

/// A self-signed certificate and its key, as a server would generate one.
pub(crate) fn self_signed() -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    let key = PrivateKeyDer::try_from(ck.key_pair.serialize_der()).expect("key der");
    (vec![ck.cert.der().clone()], key)
}

fn acceptor() -> (TlsAcceptor, [u8; 32]) {
    let (chain, key) = self_signed();
    let pin = keys::sha256(&chain[0]);
    (TlsAcceptor::new(chain, key, None).expect("acceptor"), pin)
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// A connected pair through the public API: (client, server after its hello).
fn pair() -> (TlsTransport, TlsTransport) {
    let (acc, pin) = acceptor();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        let mut t = acc.accept(s, deadline()).expect("handshake");
        assert_eq!(t.recv_hello(64).expect("hello"), b"hi");
        t.set_deadline(None).expect("clear deadline");
        t.set_read_ahead(true);
        t
    });
    let settings = ClientSettings::new(ServerCheck::Pin(pin), None).expect("settings");
    let client = connect_with(&addr, &settings, &framed(b"hi")).expect("connect");
    (client, server.join().expect("server"))
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn data_flows_both_ways_in_records_of_every_size() {
    let (mut c, mut s) = pair();
    assert_eq!(c.kind(), "tls");
    let sizes = [1usize, 100, 16383, 16384, 16385, 200_000, 3 << 20];
    let sender = thread::spawn(move || {
        for (i, &n) in sizes.iter().enumerate() {
            let data = pattern(i as u8, n);
            c.send(&[&data[..n / 3], &data[n / 3..]]).expect("send");
        }
        let mut back = vec![0u8; 5];
        c.recv_exact(&mut back).expect("reply");
        assert_eq!(&back, b"thanx");
    });
    for (i, &n) in sizes.iter().enumerate() {
        let mut got = vec![0u8; n];
        s.recv_exact(&mut got).expect("recv");
        assert!(got == pattern(i as u8, n), "message {i} ({n} bytes) differs");
    }
    s.send(&[b"than", b"x"]).expect("reply");
    sender.join().expect("sender");
}

#[test]
fn key_updates_from_either_side_keep_the_stream_intact() {
    let (mut c, mut s) = pair();
    for round in 0..3u8 {
        // The client moves to its next key and asks the server to do the same.
        c.queue_key_update(true).expect("key update");
        c.send(&[&pattern(round, 40_000)]).expect("send");
        let mut got = vec![0u8; 40_000];
        s.recv_exact(&mut got).expect("recv after the update");
        assert!(got == pattern(round, 40_000));
        assert!(s.owe_key_update, "the server must answer an update request");
        s.send(&[b"ok"]).expect("answer");
        assert!(!s.owe_key_update);
        let mut ok = [0u8; 2];
        c.recv_exact(&mut ok).expect("answer under the server's new key");
        assert_eq!(&ok, b"ok");
        assert_eq!(
            (c.tx.seq, s.rx.seq),
            (c.tx.seq, c.tx.seq),
            "both ends count the same records"
        );
    }
}

#[test]
fn a_connection_moves_to_another_owner_with_its_state() {
    let (acc, pin) = acceptor();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        let mut t = acc.accept(s, deadline()).expect("handshake");
        assert_eq!(t.recv_hello(64).expect("hello"), b"hello");
        // What the listener does: hand the socket and the state over, as bytes.
        let (stream, state) = t.into_resume().expect("nothing was read past the hello");
        let bytes = state.encode();
        let state = ResumeState::decode(&bytes).expect("decode");
        let mut worker = TlsTransport::resume(stream, &state).expect("resume");
        let mut got = vec![0u8; 100_000];
        worker.recv_exact(&mut got).expect("data sent right after the hello");
        assert!(got == pattern(9, 100_000));
        worker.send(&[b"welcome"]).expect("send");
    });
    let settings = ClientSettings::new(ServerCheck::Pin(pin), None).expect("settings");
    let mut c = connect_with(&addr, &settings, &framed(b"hello")).expect("connect");
    // The client does not wait for an answer before sending more: none of it may be lost in the hand-over.
    c.send(&[&pattern(9, 100_000)]).expect("send");
    let mut w = [0u8; 7];
    c.recv_exact(&mut w).expect("welcome");
    assert_eq!(&w, b"welcome");
    server.join().expect("server");
    let mut junk = [0u8; RESUME_LEN];
    junk[0] = 0x99;
    assert!(ResumeState::decode(&junk).is_err());
}

#[test]
fn a_wrong_pin_is_refused_with_both_fingerprints() {
    let (acc, _) = acceptor();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        acc.accept(s, deadline()).err().expect("the client must give up")
    });
    let settings = ClientSettings::new(ServerCheck::Pin([7u8; 32]), None).expect("settings");
    let err = connect_with(&addr, &settings, &framed(b"x")).err().expect("wrong pin");
    let text = err.to_string();
    assert!(text.contains("not the pinned 0707"), "{text}");
    server.join().expect("server");
}

#[test]
fn a_silent_client_is_cut_at_the_deadline_not_later() {
    let (acc, _) = acceptor();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut slow = TcpStream::connect(addr).expect("connect");
    let (s, _) = listener.accept().expect("accept");
    // A record header announcing a 512-byte ClientHello, then a byte every 100 ms: each read succeeds, but the
    // whole handshake must end at the deadline.
    slow.write_all(&[22, 3, 1, 2, 0]).expect("header");
    let dribble = thread::spawn(move || {
        for _ in 0..30 {
            if slow.write_all(&[1]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    let t0 = Instant::now();
    let err = acc
        .accept(s, Instant::now() + Duration::from_millis(500))
        .err()
        .expect("must time out");
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(err.to_string().contains("did not finish in time"), "{err}");
    dribble.join().expect("dribble");
}

#[test]
fn stock_rustls_client_talks_to_our_server_record_layer() {
    let (acc, pin) = acceptor();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        let mut t = acc.accept(s, deadline()).expect("handshake");
        t.set_deadline(None).expect("clear");
        t.set_read_ahead(true);
        // Large enough for the two-thread path when it is on (VGPU_TLS_PIPELINE), with a key update inside.
        let mut got = vec![0u8; 3_000_000];
        t.recv_exact(&mut got).expect("recv");
        assert!(got == pattern(3, 3_000_000));
        // The client asked for a key update midway: the reply goes out under the server's next key.
        t.send(&[&pattern(4, 2_000_000)]).expect("send");
        let mut tail = [0u8; 3];
        t.recv_exact(&mut tail).expect("tail");
        assert_eq!(&tail, b"end");
    });
    let settings = ClientSettings::new(ServerCheck::Pin(pin), None).expect("settings");
    let mut config = (*settings.config).clone();
    config.enable_secret_extraction = false;
    let conn =
        ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").expect("name")).expect("client");
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(addr).expect("connect"));
    let data = pattern(3, 3_000_000);
    tls.write_all(&data[..1_500_000]).expect("write");
    tls.conn.refresh_traffic_keys().expect("key update");
    tls.write_all(&data[1_500_000..]).expect("write");
    tls.flush().expect("flush");
    let mut back = vec![0u8; 2_000_000];
    tls.read_exact(&mut back).expect("read");
    assert!(back == pattern(4, 2_000_000));
    tls.write_all(b"end").expect("write");
    tls.flush().expect("flush");
    server.join().expect("server");
}

#[test]
fn our_client_talks_to_a_stock_rustls_server_and_its_key_updates() {
    let (chain, key) = self_signed();
    let pin = keys::sha256(&chain[0]);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("cert");
    config.alpn_protocols = vec![ALPN.to_vec()];
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        let conn = ServerConnection::new(Arc::new(config)).expect("server");
        let mut tls = rustls::StreamOwned::new(conn, s);
        let mut hello = [0u8; 6];
        tls.read_exact(&mut hello).expect("hello");
        assert_eq!(&hello[4..], b"hi");
        let mut got = vec![0u8; 50_000];
        tls.read_exact(&mut got).expect("read");
        assert!(got == pattern(5, 50_000));
        tls.conn.refresh_traffic_keys().expect("update");
        tls.write_all(&pattern(6, 50_000)).expect("write");
        tls.flush().expect("flush");
        let mut more = [0u8; 4];
        tls.read_exact(&mut more).expect("read after our answer");
        assert_eq!(&more, b"more");
    });
    let settings = ClientSettings::new(ServerCheck::Pin(pin), None).expect("settings");
    let mut c = connect_with(&addr, &settings, &framed(b"hi")).expect("connect");
    c.send(&[&pattern(5, 50_000)]).expect("send");
    let mut back = vec![0u8; 50_000];
    c.recv_exact(&mut back).expect("recv");
    assert!(back == pattern(6, 50_000));
    c.send(&[b"more"]).expect("send under the answered update");
    server.join().expect("server");
}

#[test]
fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let client_key = rcgen::KeyPair::generate().expect("client key");
    let client_cert = rcgen::CertificateParams::new(vec!["tenant-a".to_string()])
        .expect("params")
        .signed_by(&client_key, &ca, &ca_key)
        .expect("client cert");
    let (chain, key) = self_signed();
    let pin = keys::sha256(&chain[0]);
    let acc = Arc::new(TlsAcceptor::new(chain, key, Some(vec![ca.der().clone()])).expect("acceptor"));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let acc2 = acc.clone();
    let server = thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        assert!(acc2.accept(s, deadline()).is_err(), "no client certificate");
        let (s, _) = listener.accept().expect("accept");
        let mut t = acc2.accept(s, deadline()).expect("with a certificate");
        assert_eq!(t.recv_hello(8).expect("hello"), b"ok");
    });
    let bare = ClientSettings::new(ServerCheck::Pin(pin), None).expect("settings");
    let err = connect_with(&addr, &bare, &framed(b"ok"))
        .and_then(|mut t| {
            let mut b = [0u8; 1];
            t.recv_exact(&mut b).map(|_| t)
        })
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("certificate") || matches!(err, TransportError::Closed),
        "{err}"
    );
    let client_key_der = PrivateKeyDer::try_from(client_key.serialize_der()).expect("der");
    let with_cert = ClientSettings::new(
        ServerCheck::Pin(pin),
        Some((vec![client_cert.der().clone()], client_key_der)),
    )
    .expect("settings");
    connect_with(&addr, &with_cert, &framed(b"ok")).expect("accepted with a certificate");
    server.join().expect("server");
}

#[test]
fn early_refusals_reach_the_client_as_clear_messages() {
    for (why, text) in [
        (EarlyRefusal::LockedOut, "too many failed attempts"),
        (EarlyRefusal::Busy, "busy"),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            send_early_refusal(&s, why);
            thread::sleep(Duration::from_millis(200));
        });
        let settings = ClientSettings::new(ServerCheck::Pin([1; 32]), None).expect("settings");
        let err = connect_with(&addr, &settings, &framed(b"x")).err().expect("refused");
        assert!(err.to_string().contains(text), "{why:?}: {err}");
        server.join().expect("server");
    }
}

#[test]
fn fingerprints_parse_in_the_usual_spellings() {
    let der = b"certificate bytes";
    let fp = fingerprint(der);
    assert_eq!(fp.len(), 64);
    assert_eq!(parse_fingerprint(&fp), Ok(keys::sha256(der)));
    let colons: Vec<String> = (0..32).map(|i| fp[2 * i..2 * i + 2].to_uppercase()).collect();
    assert_eq!(parse_fingerprint(&colons.join(":")), Ok(keys::sha256(der)));
    assert!(parse_fingerprint("abcd").is_err());
    assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
}
