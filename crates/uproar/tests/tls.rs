//! TLS through the engine, on the driver `UPROAR_DRIVER` names: echo and pub/sub over wss
//! from 1 B to 1 MiB, https, SNI, a certificate reload, and bad input (plain HTTP to the TLS
//! port, garbage instead of a ClientHello, a ClientHello one byte at a time, a handshake that
//! stops halfway, an oversized record, a reset inside a record, a client that trusts another
//! CA), after each of which the server serves others and holds no connection.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::tls::{TestCa, TlsStream, connect, peer_leaf, pem_leaf};
use common::*;
use uproar::{
    Ctx, DataKind, Handler, HttpRequest, Message, Response, TlsConfig, Upgrade, UpgradeRequest,
    WebSocket,
};

/// `/echo` echoes; `/ws/T` subscribes to T and publishes what it gets; plain HTTP answers
/// "hello over TLS".
struct App;

impl Handler for App {
    type Conn = String;

    fn on_upgrade<'r>(
        &mut self,
        _: &mut Ctx<String>,
        req: &UpgradeRequest<'r>,
    ) -> Upgrade<'r, String> {
        Upgrade::accept(req.path().strip_prefix("/ws/").unwrap_or("").to_owned())
    }

    fn on_open(&mut self, ws: &mut WebSocket<'_, String>) {
        let t = ws.data().clone();
        if !t.is_empty() {
            ws.subscribe(&t);
        }
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, String>, msg: Message<'_>) {
        let t = ws.data().clone();
        if t.is_empty() {
            let _ = ws.send(msg.kind(), msg.data());
        } else {
            ws.ctx().publish(&t, msg.kind(), msg.data());
        }
    }

    fn on_http(&mut self, _: &mut Ctx<String>, req: &HttpRequest<'_>) -> Response {
        Response::text(200, format!("hello over TLS: {}\n", req.path()))
    }
}

struct Setup {
    ca: TestCa,
    server: uproar::Server,
    addr: SocketAddr,
}

fn setup(name: &str) -> Setup {
    setup_with(name, Duration::from_secs(1))
}

fn setup_with(name: &str, handshake_timeout: Duration) -> Setup {
    let ca = TestCa::new(name);
    let cert = ca.server_cert("server", &["localhost", "127.0.0.1"]);
    let tls = TlsConfig::from_pem_files(&cert.cert, &cert.key).unwrap();
    let server = builder()
        .tls(tls)
        .max_message_size(2 << 20)
        .handshake_timeout(handshake_timeout)
        .start(|_| App)
        .unwrap();
    let addr = server.local_addr();
    Setup { ca, server, addr }
}

fn wss(s: &Setup, path: &str) -> Client<TlsStream> {
    let stream = connect(s.addr, "localhost", s.ca.client_config()).expect("TLS handshake");
    Client::upgrade(stream, "localhost", path, &[]).expect("upgrade")
}

fn total(s: &Setup, f: impl Fn(&uproar::WorkerStats) -> u64) -> u64 {
    s.server.handle().stats().iter().map(f).sum()
}

/// Whether a counter reaches `n` (workers publish their counters once per loop turn).
fn counted(s: &Setup, f: impl Fn(&uproar::WorkerStats) -> u64, n: u64) -> bool {
    eventually(Duration::from_secs(5), || total(s, &f) == n) && total(s, &f) == n
}

/// No connection left, counted through the handle (and so no fd held for one).
fn all_closed(s: &Setup) -> bool {
    eventually(Duration::from_secs(5), || {
        s.server.handle().connections() == 0
    })
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) % 94 + 32)
        .collect()
}

const SIZES: [usize; 9] = [
    1,
    125,
    126,
    16 * 1024 - 1,
    16 * 1024,
    16 * 1024 + 1,
    65_536,
    300_000,
    1 << 20,
];

#[test]
fn echo_over_wss_text_and_binary_from_1_byte_to_1_mib() {
    let s = setup("echo");
    let mut c = wss(&s, "/echo");
    for (i, &n) in SIZES.iter().enumerate() {
        let p = payload(n, i as u8);
        c.send(DataKind::Text, &p);
        assert_eq!(
            c.recv(),
            Got::Text(String::from_utf8(p.clone()).unwrap()),
            "text {n}"
        );
        c.send(DataKind::Binary, &p);
        assert_eq!(c.recv(), Got::Binary(p), "binary {n}");
    }
    // Many small frames in one burst: joined into few records, each echoed in order.
    for i in 0..200 {
        c.send_text(&format!("small {i}"));
    }
    for i in 0..200 {
        assert_eq!(c.recv(), Got::Text(format!("small {i}")));
    }
    c.close(uproar::CloseCode::NORMAL, "bye");
    assert_eq!(c.expect_close().0, 1000);
    drop(c);
    assert!(all_closed(&s));
    assert!(counted(&s, |w| w.tls_handshakes, 1));
    assert!(counted(&s, |w| w.tls_handshake_failures + w.tls_errors, 0));
}

#[test]
fn pubsub_over_wss_every_subscriber_gets_every_message() {
    let s = setup("pubsub");
    let mut subs: Vec<_> = (0..3).map(|_| wss(&s, "/ws/news")).collect();
    // A subscriber is registered once its upgrade is done: wait until all are.
    assert!(eventually(Duration::from_secs(5), || s
        .server
        .handle()
        .node_subscribers("news")
        == 3));
    let mut publisher = wss(&s, "/ws/news");
    assert!(eventually(Duration::from_secs(5), || s
        .server
        .handle()
        .node_subscribers("news")
        == 4));
    for (i, &n) in SIZES.iter().enumerate() {
        let p = payload(n, i as u8);
        publisher.send(DataKind::Binary, &p);
        for sub in subs.iter_mut().chain([&mut publisher]) {
            assert_eq!(sub.recv(), Got::Binary(p.clone()), "size {n}");
        }
    }
}

#[test]
fn https_requests_with_keep_alive() {
    let s = setup("https");
    let mut t = connect(s.addr, "localhost", s.ca.client_config()).unwrap();
    for path in ["/a", "/b"] {
        write!(t, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let (status, _, body) = read_response(&mut t);
        assert_eq!(status, 200);
        assert_eq!(body, format!("hello over TLS: {path}\n").as_bytes());
    }
    // ALPN: the server speaks http/1.1.
    assert_eq!(t.conn.alpn_protocol(), None, "the client offered no ALPN");
    let mut cfg = (*s.ca.client_config()).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let t = connect(s.addr, "localhost", Arc::new(cfg)).unwrap();
    assert_eq!(t.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[test]
fn plain_http_to_the_tls_port_gets_a_clear_400_and_is_counted() {
    let s = setup("plain");
    let (status, _, body) = http(s.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("TLS"), "{body:?}");
    assert!(all_closed(&s));
    assert!(counted(&s, |w| w.tls_plain_http, 1));
    // And a TLS client is served.
    let mut c = wss(&s, "/echo");
    c.send_text("after");
    assert_eq!(c.recv(), Got::Text("after".into()));
}

#[test]
fn garbage_instead_of_a_client_hello_is_closed_and_others_are_served() {
    let s = setup("garbage");
    let mut t = TcpStream::connect(s.addr).unwrap();
    t.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .unwrap();
    t.write_all(&[0xff; 64]).unwrap();
    assert!(closed_within(&mut t, Duration::from_secs(5)));
    let mut t = TcpStream::connect(s.addr).unwrap();
    t.write_all(&[0x00; 32]).unwrap();
    assert!(closed_within(&mut t, Duration::from_secs(5)));
    assert!(all_closed(&s));
    assert!(counted(&s, |w| w.tls_handshake_failures, 2));
    let mut c = wss(&s, "/echo");
    c.send_text("still here");
    assert_eq!(c.recv(), Got::Text("still here".into()));
}

/// The ClientHello as a rustls client writes it.
fn client_hello(s: &Setup) -> (rustls::ClientConnection, Vec<u8>) {
    let mut conn =
        rustls::ClientConnection::new(s.ca.client_config(), "localhost".try_into().unwrap())
            .unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    (conn, hello)
}

#[test]
fn a_client_hello_sent_one_byte_at_a_time_completes() {
    // A roomy handshake timeout: some 250 writes with a pause each, on a maybe busy machine.
    let s = setup_with("bytewise", Duration::from_secs(20));
    let (conn, hello) = client_hello(&s);
    let mut tcp = TcpStream::connect(s.addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for b in &hello {
        tcp.write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut t = rustls::StreamOwned::new(conn, tcp);
    while t.conn.is_handshaking() {
        t.conn.complete_io(&mut t.sock).unwrap();
    }
    let mut c = Client::upgrade(t, "localhost", "/echo", &[]).unwrap();
    c.send_text("bytewise");
    assert_eq!(c.recv(), Got::Text("bytewise".into()));
}

/// The client's Finished and its first request in one segment (what a busy machine's TCP
/// delivers when the two writes coalesce): the request is answered at once, not left waiting
/// for another read.
#[test]
fn the_first_request_in_the_same_segment_as_the_clients_finished_is_answered() {
    let s = setup("coalesced");
    for request in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
    ] {
        let (mut conn, hello) = client_hello(&s);
        let mut tcp = TcpStream::connect(s.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.write_all(&hello).unwrap();
        // The server's flight, up to its Finished; the client writes nothing meanwhile.
        while conn.is_handshaking() {
            conn.read_tls(&mut tcp).expect("the server's flight");
            conn.process_new_packets().unwrap();
        }
        conn.writer().write_all(request).unwrap();
        let mut segment = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut segment).unwrap();
        }
        tcp.write_all(&segment).unwrap();
        let mut t = rustls::StreamOwned::new(conn, tcp);
        let (status, _, body, rest) = read_response_and_rest(&mut t);
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"hello over TLS: /\n"[..])
        );
        if request.len() > 40 {
            // The pipelined second request too.
            let mut both = std::io::Cursor::new(rest).chain(&mut t);
            let (status, _, body, _) = read_response_and_rest(&mut both);
            assert_eq!(
                (status, body.as_slice()),
                (200, &b"hello over TLS: /\n"[..])
            );
        }
    }
}

#[test]
fn a_handshake_that_stops_halfway_is_closed_at_the_timeout() {
    let s = setup("halfway");
    let (_, hello) = client_hello(&s);
    let t0 = std::time::Instant::now();
    let mut tcp = TcpStream::connect(s.addr).unwrap();
    tcp.write_all(&hello[..hello.len() / 2]).unwrap();
    assert!(closed_within(&mut tcp, Duration::from_secs(5)));
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "closed at the 1 s timeout, not before"
    );
    drop(tcp);
    assert!(all_closed(&s));
    assert!(counted(
        &s,
        |w| w.rejections[uproar::Rejection::Timeout as usize],
        1
    ));
}

#[test]
fn an_oversized_record_and_a_reset_inside_a_record_end_only_their_connection() {
    let s = setup("records");
    let mut keep = wss(&s, "/echo");
    // A record header announcing 32 KiB (the limit is 16 KiB plus 256).
    let mut t = connect(s.addr, "localhost", s.ca.client_config()).unwrap();
    t.sock.write_all(&[0x17, 0x03, 0x03, 0x80, 0x00]).unwrap();
    t.sock.write_all(&[0u8; 4096]).unwrap();
    assert!(closed_within(&mut t.sock, Duration::from_secs(5)));
    // Half a record, then a reset.
    let mut t = connect(s.addr, "localhost", s.ca.client_config()).unwrap();
    t.sock.write_all(&[0x17, 0x03, 0x03, 0x01, 0x00]).unwrap();
    t.sock.write_all(&[7u8; 100]).unwrap();
    reset(t.sock);
    let ok = eventually(Duration::from_secs(5), || {
        s.server.handle().connections() == 1
    });
    assert!(
        ok,
        "{} open; {:?}",
        s.server.handle().connections(),
        s.server.handle().stats()
    );
    // The oversized record is a TLS failure (a handshake failure if it arrived with the
    // client's Finished); the reset is only a reset.
    assert!(counted(&s, |w| w.tls_errors + w.tls_handshake_failures, 1));
    keep.send_text("unaffected");
    assert_eq!(keep.recv(), Got::Text("unaffected".into()));
}

#[test]
fn a_client_that_trusts_another_ca_refuses_the_server() {
    let s = setup("wrong-ca");
    let other = TestCa::new("other");
    let err = connect(s.addr, "localhost", other.client_config()).unwrap_err();
    assert!(
        err.to_string().contains("UnknownIssuer") || err.to_string().contains("issuer"),
        "{err}"
    );
    assert!(all_closed(&s));
    assert!(counted(&s, |w| w.tls_handshake_failures, 1));
}

#[test]
fn sni_picks_the_certificate_for_the_name_and_the_first_by_default() {
    let ca = TestCa::new("sni");
    let a = ca.server_cert("a", &["a.test"]);
    let b = ca.server_cert("b", &["b.test", "*.b.test"]);
    let tls = TlsConfig::from_pem_file_pairs(&[(&a.cert, &a.key), (&b.cert, &b.key)]).unwrap();
    let server = builder().tls(tls).start(|_| App).unwrap();
    let addr = server.local_addr();
    let leaf = |name: &str| connect(addr, name, ca.client_config()).map(|t| peer_leaf(&t));
    assert_eq!(leaf("a.test").unwrap(), pem_leaf(&a.cert));
    assert_eq!(leaf("b.test").unwrap(), pem_leaf(&b.cert));
    assert_eq!(leaf("x.b.test").unwrap(), pem_leaf(&b.cert));
    // A name no certificate covers gets the default (a.test's), which the client refuses.
    assert!(leaf("c.test").is_err());
}

#[test]
fn a_reload_serves_new_handshakes_the_new_certificate_and_keeps_open_connections() {
    let s = setup("reload");
    let mut before = wss(&s, "/echo");
    let old = pem_leaf(&s.ca.dir.join("server.pem"));
    let new = s.ca.server_cert("renewed", &["localhost"]);
    s.server
        .handle()
        .reload_tls(TlsConfig::from_pem_files(&new.cert, &new.key).unwrap())
        .unwrap();
    let t = connect(s.addr, "localhost", s.ca.client_config()).unwrap();
    assert_eq!(peer_leaf(&t), pem_leaf(&new.cert));
    assert_ne!(peer_leaf(&t), old);
    before.send_text("still open");
    assert_eq!(before.recv(), Got::Text("still open".into()));
    // A bad file is refused when loading: nothing to reload.
    std::fs::write(s.ca.dir.join("bad.pem"), "not a certificate").unwrap();
    assert!(TlsConfig::from_pem_files(&s.ca.dir.join("bad.pem"), &new.key).is_err());
    // A key that is not the certificate's is refused.
    let other = s.ca.server_cert("other", &["localhost"]);
    let err = TlsConfig::from_pem_files(&new.cert, &other.key).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn reading_after_close_notify_and_a_clean_close() {
    let s = setup("notify");
    let mut c = wss(&s, "/echo");
    c.send_text("x");
    assert_eq!(c.recv(), Got::Text("x".into()));
    c.close(uproar::CloseCode::NORMAL, "");
    assert_eq!(c.recv(), Got::Close(1000, String::new()));
    // The server's close_notify came before its FIN: rustls reads a clean end (Ok(0)), not
    // UnexpectedEof.
    let mut rest = Vec::new();
    let r = c.stream.read_to_end(&mut rest);
    assert!(r.is_ok(), "{r:?}");
    drop(c);
    assert!(all_closed(&s));
}

#[test]
fn tls_1_2_and_1_3_are_both_served() {
    let s = setup("versions");
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(s.ca.roots())
            .with_no_client_auth();
        let t = connect(s.addr, "localhost", Arc::new(cfg)).unwrap();
        assert_eq!(t.conn.protocol_version(), Some(want));
        // Only AEAD suites exist in rustls; the one chosen says so.
        let suite = format!("{:?}", t.conn.negotiated_cipher_suite().unwrap().suite());
        assert!(
            suite.contains("GCM") || suite.contains("CHACHA20_POLY1305"),
            "{suite}"
        );
        let mut c = Client::upgrade(t, "localhost", "/echo", &[]).unwrap();
        c.send_text("versioned");
        assert_eq!(c.recv(), Got::Text("versioned".into()));
    }
}
