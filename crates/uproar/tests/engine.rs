//! The engine's behaviour over real sockets on loopback: echo, HTTP on the same port, the
//! handshake, close codes for bad input, timeouts, backpressure, resets, shutdown.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use uproar::{
    CloseEvent, ConnId, Ctx, Handler, HttpRequest, Message, Response, SendStatus, Upgrade,
    UpgradeRequest, WebSocket,
};
use uproar_wire::{CloseCode, DataKind, OpCode};

type Log = Arc<Mutex<Vec<String>>>;

/// Echoes, and obeys a few text commands; records every callback in `log`.
struct App {
    log: Log,
}

impl App {
    fn note(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
}

impl Handler for App {
    type Conn = String;

    fn on_upgrade<'r>(
        &mut self,
        _: &mut Ctx<String>,
        req: &UpgradeRequest<'r>,
    ) -> Upgrade<'r, String> {
        if req.path() == "/forbidden" {
            return Upgrade::reject(403, "not for you");
        }
        let protocol = req.protocols().find(|p| *p == "chat");
        Upgrade::Accept {
            conn: req.path().to_owned(),
            protocol,
        }
    }

    fn on_open(&mut self, ws: &mut WebSocket<'_, String>) {
        self.note(format!("open {}", ws.data()));
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, String>, msg: Message<'_>) {
        let text = msg.as_text().unwrap_or("");
        if text == "close me" {
            ws.close(CloseCode(4000), "asked");
        } else if let Some(args) = text.strip_prefix("flood ") {
            let (n, size) = args.split_once(' ').unwrap();
            let payload = vec![7u8; size.parse().unwrap()];
            let mut statuses = Vec::new();
            let mut max_buffered = 0;
            for _ in 0..n.parse::<usize>().unwrap() {
                statuses.push(ws.send_binary(&payload));
                max_buffered = max_buffered.max(ws.buffered_amount());
            }
            let count = |s| statuses.iter().filter(|&&x| x == s).count();
            self.note(format!(
                "flood sent={} queued={} dropped={} max_buffered={max_buffered}",
                count(SendStatus::Sent),
                count(SendStatus::Queued),
                count(SendStatus::Dropped)
            ));
        } else {
            let _ = ws.send(msg.kind(), msg.data());
        }
    }

    fn on_drain(&mut self, _: &mut WebSocket<'_, String>) {
        self.note("drain".into());
    }

    fn on_close(&mut self, _: &mut Ctx<String>, _: ConnId, path: String, c: CloseEvent<'_>) {
        self.note(format!(
            "close {path} {} {:?} {:?} clean={}",
            c.code.0, c.reason, c.initiator, c.clean
        ));
    }

    fn on_http(&mut self, _: &mut Ctx<String>, req: &HttpRequest<'_>) -> Response {
        match req.path() {
            "/hello" => Response::text(200, "hello\n"),
            "/body" => Response::new(200).body(req.body().to_vec()),
            _ => Response::text(404, "not found\n"),
        }
    }
}

fn start(b: uproar::Builder) -> (uproar::Server, Log) {
    let log: Log = Arc::default();
    let l = log.clone();
    let server = b.start(move |_| App { log: l.clone() }).expect("start");
    (server, log)
}

fn logged(log: &Log, prefix: &str) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|s| s.starts_with(prefix))
        .cloned()
        .collect()
}

fn wait_logged(log: &Log, prefix: &str, n: usize) -> Vec<String> {
    assert!(
        eventually(Duration::from_secs(10), || logged(log, prefix).len() >= n),
        "waited for {n} {prefix:?} entries; log: {:?}",
        log.lock().unwrap()
    );
    logged(log, prefix)
}

#[test]
fn echoes_text_binary_fragmented_and_large_messages() {
    let (server, _log) = start(builder());
    let mut c = Client::connect(server.local_addr(), "/echo");
    c.send_text("hello");
    assert_eq!(c.recv(), Got::Text("hello".into()));
    c.send(DataKind::Binary, &[0, 1, 2, 255]);
    assert_eq!(c.recv(), Got::Binary(vec![0, 1, 2, 255]));
    // Fragmented, with a ping in the middle: the pong comes first, then the whole message.
    let k = Some([1, 2, 3, 4]);
    c.send_raw(false, OpCode::Text, "frag".as_bytes(), k);
    c.send_raw(true, OpCode::Ping, b"p", k);
    c.send_raw(true, OpCode::Continuation, "ment ✓".as_bytes(), k);
    assert_eq!(c.recv(), Got::Pong(b"p".to_vec()));
    assert_eq!(c.recv(), Got::Text("fragment ✓".into()));
    // Larger than a receive buffer (assembled across buffers), and 1 MiB.
    for size in [100_000, 1 << 20] {
        let big: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        c.send(DataKind::Binary, &big);
        assert_eq!(c.recv(), Got::Binary(big));
    }
    c.close(CloseCode::NORMAL, "");
    assert_eq!(c.expect_close().0, 1000);
}

#[test]
fn close_handshakes_both_ways_report_code_reason_and_initiator() {
    let (server, log) = start(builder());
    let addr = server.local_addr();
    // The client closes.
    let mut c = Client::connect(addr, "/a");
    c.close(CloseCode(1000), "bye");
    assert_eq!(c.expect_close(), (1000, String::new()));
    // The application closes.
    let mut d = Client::connect(addr, "/b");
    d.send_text("close me");
    assert_eq!(d.recv(), Got::Close(4000, "asked".into()));
    d.close(CloseCode(4000), "");
    assert_eq!(d.recv(), Got::Eof);
    let closes = wait_logged(&log, "close", 2);
    assert!(
        closes.contains(&r#"close /a 1000 "bye" Remote clean=true"#.to_string()),
        "{closes:?}"
    );
    assert!(
        closes.contains(&r#"close /b 4000 "" Local clean=true"#.to_string()),
        "{closes:?}"
    );
    assert_eq!(logged(&log, "open"), ["open /a", "open /b"]);
    // The server sent its FIN and waits for ours before freeing the slot.
    drop((c, d));
    assert!(eventually(Duration::from_secs(10), || server
        .handle()
        .connections()
        == 0));
}

#[test]
fn plain_http_on_the_same_port_with_keep_alive_and_bodies() {
    let (server, _log) = start(builder());
    let addr = server.local_addr();
    let (status, _, body) = http(addr, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_slice()), (404, &b"not found\n"[..]));
    // Two requests, pipelined on one connection; then a body.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Both answers, in order (they may arrive in one read).
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    while data.windows(6).filter(|w| w == b"hello\n").count() < 2 {
        let n = std::io::Read::read(&mut s, &mut chunk).unwrap();
        assert!(n > 0);
        data.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8(data).unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    assert!(text.ends_with("\r\n\r\nhello\n"), "{text}");
    // The body arrives in two pieces.
    s.write_all(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello")
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(b" world").unwrap();
    let (status, _, body) = read_response(&mut s);
    assert_eq!((status, body.as_slice()), (200, &b"hello world"[..]));
    // Connection: close is honoured.
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (status, head, _) = read_response(&mut s);
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("connection: close"));
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // Limits on bodies.
    let (status, _, _) = http(
        addr,
        b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
    );
    assert_eq!(status, 413);
    let (status, _, _) = http(
        addr,
        b"POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(status, 501);
}

/// Every malformed handshake gets its status and a reason, and the server keeps serving.
#[test]
fn malformed_handshakes_get_a_status_and_a_reason() {
    let (server, _log) = start(builder().max_header_bytes(1024));
    let addr = server.local_addr();
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let ok = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n";
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("POST / HTTP/1.1\r\nHost: x\r\n{ok}{key}\r\n"),
            400,
            "must use GET",
        ),
        (
            format!("GET / HTTP/1.0\r\nHost: x\r\n{ok}{key}\r\n"),
            400,
            "HTTP/1.1",
        ),
        (format!("GET / HTTP/1.1\r\n{ok}{key}\r\n"), 400, "Host"),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Version: 13\r\n{key}\r\n"
            ),
            400,
            "Connection",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n{key}\r\n"
            ),
            426,
            "version",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: x\r\n{ok}\r\n"),
            400,
            "Sec-WebSocket-Key",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: x\r\n{ok}Sec-WebSocket-Key: c2hvcnQ=\r\n\r\n"),
            400,
            "Sec-WebSocket-Key",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\n{ok}{key}X-Big: {}\r\n\r\n",
                "a".repeat(2000)
            ),
            431,
            "too large",
        ),
        ("\x00\x01garbage\r\n\r\n".to_string(), 400, "malformed"),
        (
            format!("GET /forbidden HTTP/1.1\r\nHost: x\r\n{ok}{key}\r\n"),
            403,
            "not for you",
        ),
    ];
    for (req, status, reason) in &cases {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let (got, head, body) = read_response(&mut s);
        let body = String::from_utf8_lossy(&body);
        assert_eq!(got, *status, "{req:?} -> {head}{body}");
        assert!(
            body.contains(reason),
            "{req:?}: body {body:?} lacks {reason:?}"
        );
        if got == 426 {
            assert!(head.contains("Sec-WebSocket-Version: 13"), "{head}");
        }
        assert!(
            closed_within(&mut s, Duration::from_secs(5)),
            "closed after an error"
        );
    }
    let mut c = Client::connect(addr, "/still-serving");
    c.send_text("yes");
    assert_eq!(c.recv(), Got::Text("yes".into()));
}

#[test]
fn subprotocol_is_chosen_from_those_offered() {
    let (server, _log) = start(builder());
    let addr = server.local_addr();
    // `connect_with` checks the 101 names an offered protocol; the handler picks "chat".
    let mut c = Client::connect_with(addr, "/", &["superchat", "chat"]).unwrap();
    c.send_text("x");
    assert_eq!(c.recv(), Got::Text("x".into()));
}

/// Protocol violations close with the right code, and only the offending connection.
#[test]
fn bad_frames_close_with_their_codes() {
    let (server, log) = start(builder().max_frame_size(1000).max_message_size(1500));
    let addr = server.local_addr();
    let mut bystander = Client::connect(addr, "/bystander");
    let k = Some([9, 8, 7, 6]);
    type Bad = fn(&mut Client);
    let cases: Vec<(&str, u16, Bad)> = vec![
        ("unmasked", 1002, |c| {
            c.send_raw(true, OpCode::Text, b"hi", None)
        }),
        ("reserved-opcode", 1002, |c| {
            c.stream.write_all(&[0x83, 0x80, 1, 2, 3, 4]).unwrap()
        }),
        ("rsv-bits", 1002, |c| {
            c.stream.write_all(&[0xC1, 0x80, 1, 2, 3, 4]).unwrap()
        }),
        ("continuation-first", 1002, |c| {
            c.send_raw(true, OpCode::Continuation, b"x", Some([1, 1, 1, 1]))
        }),
        ("long-ping", 1002, |c| {
            c.send_raw(true, OpCode::Ping, &[0; 126], Some([1, 1, 1, 1]))
        }),
        ("bad-utf8", 1007, |c| {
            c.send_raw(true, OpCode::Text, &[0xce, 0xba, 0xff], Some([1, 1, 1, 1]))
        }),
        ("bad-close-code", 1002, |c| {
            c.send_raw(
                true,
                OpCode::Close,
                &999u16.to_be_bytes(),
                Some([1, 1, 1, 1]),
            )
        }),
        ("big-frame", 1009, |c| {
            c.send_raw(true, OpCode::Binary, &[0; 1001], Some([1, 1, 1, 1]))
        }),
        ("big-message", 1009, |c| {
            c.send_raw(false, OpCode::Binary, &[0; 1000], Some([1, 1, 1, 1]));
            c.send_raw(true, OpCode::Continuation, &[0; 501], Some([1, 1, 1, 1]));
        }),
    ];
    let _ = k;
    for (name, code, bad) in &cases {
        let mut c = Client::connect(addr, &format!("/{name}"));
        bad(&mut c);
        let (got, _) = c.expect_close();
        assert_eq!(got, *code, "{name}");
    }
    bystander.send_text("unaffected");
    assert_eq!(bystander.recv(), Got::Text("unaffected".into()));
    let closes = wait_logged(&log, "close", cases.len());
    for (name, code, _) in &cases {
        assert!(
            closes
                .iter()
                .any(|l| l.starts_with(&format!("close /{name} {code} ")) && l.contains("Library")),
            "{name}: {closes:?}"
        );
    }
}

/// A client that never finishes its request head is answered 408 and closed at the
/// handshake timeout, while others are served.
#[test]
fn slow_loris_is_closed_at_the_handshake_timeout() {
    let (server, _log) = start(builder().handshake_timeout(Duration::from_millis(300)));
    let addr = server.local_addr();
    let started = std::time::Instant::now();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut c = Client::connect(addr, "/fast");
    c.send_text("fine");
    assert_eq!(c.recv(), Got::Text("fine".into()));
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (status, _, _) = read_response(&mut slow);
    assert_eq!(status, 408);
    assert!(closed_within(&mut slow, Duration::from_secs(5)));
    assert!(started.elapsed() >= Duration::from_millis(250));
    // A connection that sends nothing at all meets the same end.
    let mut silent = TcpStream::connect(addr).unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)));
}

/// An idle connection is pinged; one that answers stays, one that stays silent is closed.
#[test]
fn idle_connections_are_pinged_and_silent_ones_closed() {
    // 400 ms: the test thread answers each ping within one idle period, even on a busy machine.
    let (server, log) = start(builder().idle_timeout(Some(Duration::from_millis(400))));
    let addr = server.local_addr();
    let mut live = Client::connect(addr, "/live");
    assert_eq!(live.recv(), Got::Ping(vec![]), "pinged after the idle time");
    // `recv` answered with a pong; it is still open after several more idle periods.
    for _ in 0..3 {
        assert_eq!(live.recv(), Got::Ping(vec![]));
    }
    live.send_text("still here");
    assert_eq!(live.recv(), Got::Text("still here".into()));
    // A peer that never answers: TCP open, nothing read or written after the upgrade.
    let silent = Client::connect(addr, "/silent");
    let _keep = silent;
    let closes = wait_logged(&log, "close /silent", 1);
    assert!(closes[0].starts_with("close /silent 1006 "), "{closes:?}");
}

/// A peer that stops reading: sends are refused past the limit, memory stays bounded, and
/// the connection is closed (1008, then dropped at the close timeout); others are unaffected.
#[test]
fn a_peer_that_stops_reading_is_bounded_and_closed() {
    let (server, log) = start(
        builder()
            .max_buffered_bytes(256 << 10)
            .close_timeout(Duration::from_millis(500)),
    );
    let addr = server.local_addr();
    let mut stuck = Client::connect(addr, "/stuck");
    // Shrink our receive buffer so the kernel holds little on our side.
    stuck.send_text("flood 400 65536");
    let flood = wait_logged(&log, "flood", 1);
    let f = &flood[0];
    let field = |name: &str| -> usize {
        f.split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(field("dropped") > 0, "{f}");
    assert!(
        field("max_buffered") <= (256 << 10) + 65536 + 16,
        "the backlog is bounded by the limit plus one message: {f}"
    );
    let mut other = Client::connect(addr, "/other");
    other.send_text("ok");
    assert_eq!(other.recv(), Got::Text("ok".into()));
    // The 1008 close frame could not get past the backlog, so no close frame came back: by
    // RFC 6455 §7.1.5 the connection's close code is 1006, and the close was not clean.
    let closes = wait_logged(&log, "close /stuck", 1);
    assert!(
        closes[0].starts_with("close /stuck 1006 ") && closes[0].ends_with("clean=false"),
        "{closes:?}"
    );
    assert!(eventually(Duration::from_secs(5), || server
        .handle()
        .connections()
        == 1));
    // A direct send closed by the close policy is a slow-consumer close like a fan-out's,
    // counted once.
    assert!(eventually(Duration::from_secs(10), || server
        .handle()
        .stats()[0]
        .slow_closes
        == 1));
    drop(stuck);
}

/// A slow reader that catches up: sends are queued, then `on_drain` fires.
#[test]
fn on_drain_fires_when_a_backlog_clears() {
    let (server, log) = start(builder().max_buffered_bytes(64 << 20));
    let mut c = Client::connect(server.local_addr(), "/slow");
    // 4 MiB, more than the sockets hold: while the client does not read, that send stays in
    // flight, so the next send must queue behind it.
    c.send_text("flood 64 65536");
    let first = wait_logged(&log, "flood", 1);
    assert!(first[0].contains("sent=64 queued=0 dropped=0"), "{first:?}");
    std::thread::sleep(Duration::from_millis(100));
    c.send_text("flood 1 65536");
    let both = wait_logged(&log, "flood", 2);
    assert!(both[1].contains("sent=0 queued=1 dropped=0"), "{both:?}");
    assert!(
        logged(&log, "drain").is_empty(),
        "no drain while the backlog stands"
    );
    for _ in 0..65 {
        assert_eq!(c.recv(), Got::Binary(vec![7; 65536]));
    }
    assert_eq!(
        wait_logged(&log, "drain", 1).len(),
        1,
        "one drain when it clears"
    );
}

/// Resets in the middle of a frame (and of a handshake) free everything.
#[test]
fn resets_mid_frame_free_the_connection() {
    let (server, log) = start(builder());
    let addr = server.local_addr();
    for i in 0..20 {
        let mut c = Client::connect(addr, &format!("/reset{i}"));
        // Half of a 1000-byte frame.
        let mut frame = Vec::new();
        uproar_wire::frame::encode_frame(
            &mut frame,
            true,
            OpCode::Binary,
            &[1; 1000],
            Some([1, 2, 3, 4]),
        );
        c.stream.write_all(&frame[..500]).unwrap();
        reset(c.stream);
        let mut h = TcpStream::connect(addr).unwrap();
        h.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
        reset(h);
    }
    wait_logged(&log, "close /reset", 20);
    assert!(
        logged(&log, "close /reset")
            .iter()
            .all(|l| l.contains(" 1006 "))
    );
    assert!(eventually(Duration::from_secs(5), || server
        .handle()
        .connections()
        == 0));
    let mut c = Client::connect(addr, "/after");
    c.send_text("alive");
    assert_eq!(c.recv(), Got::Text("alive".into()));
}

#[test]
fn connections_over_the_limit_get_503() {
    let (server, _log) = start(builder().max_connections(2));
    let addr = server.local_addr();
    let _a = Client::connect(addr, "/a");
    let _b = Client::connect(addr, "/b");
    let (status, _, body) = http(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 503);
    assert_eq!(
        body, b"too many connections, sorry\n",
        "the body is exactly Content-Length"
    );
    drop(_a);
    assert!(eventually(Duration::from_secs(5), || server
        .handle()
        .connections()
        == 1));
    let mut c = Client::connect(addr, "/c");
    c.send_text("room again");
    assert_eq!(c.recv(), Got::Text("room again".into()));
}

/// Shutdown: every client gets 1001, may finish the handshake, and the workers exit.
#[test]
fn shutdown_closes_every_connection_with_1001() {
    let (server, log) = start(builder().threads(2));
    let addr = server.local_addr();
    let mut clients: Vec<Client> = (0..10)
        .map(|i| Client::connect(addr, &format!("/s{i}")))
        .collect();
    for c in &mut clients {
        c.send_text("hi");
        assert_eq!(c.recv(), Got::Text("hi".into()));
    }
    server.handle().shutdown(Duration::from_secs(5));
    for c in &mut clients {
        assert_eq!(c.recv(), Got::Close(1001, "server shutting down".into()));
        c.close(CloseCode(1001), "");
        assert_eq!(c.recv(), Got::Eof);
    }
    server.join().expect("workers exit cleanly");
    let closes = logged(&log, "close /s");
    assert_eq!(closes.len(), 10);
    assert!(
        closes
            .iter()
            .all(|l| l.contains(" 1001 ") && l.contains("clean=true")),
        "{closes:?}"
    );
    assert!(TcpStream::connect(addr).is_err(), "no longer listening");
}

/// A receive pool of two buffers and a ring of 8 entries (32 completions) under 50 clients
/// pipelining 20 messages each: recvs run out of buffers (ENOBUFS, re-armed) and completions
/// overflow the queue (kept by the kernel, reaped later); every message still comes back, in
/// order.
#[test]
fn tiny_pools_and_rings_lose_nothing() {
    let (server, _log) = start(
        builder()
            .recv_buffers(2)
            .recv_buffer_size(4096)
            .ring_entries(8),
    );
    let addr = server.local_addr();
    let threads: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr, "/tiny");
                for j in 0..20 {
                    c.send_text(&format!("{i}-{j}-{}", "x".repeat(j * 100)));
                }
                for j in 0..20 {
                    assert_eq!(
                        c.recv(),
                        Got::Text(format!("{i}-{j}-{}", "x".repeat(j * 100)))
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Start-up errors say what to change.
#[test]
fn configuration_errors_say_what_to_fix() {
    let e = builder()
        .threads(0)
        .start(|_| App {
            log: Log::default(),
        })
        .unwrap_err();
    assert!(e.to_string().contains("threads"), "{e}");
    let e = builder()
        .max_connections(1 << 40)
        .start(|_| App {
            log: Log::default(),
        })
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("RLIMIT_NOFILE") && msg.contains("max_connections"),
        "{msg}"
    );
    let e = builder()
        .recv_buffers(100)
        .start(|_| App {
            log: Log::default(),
        })
        .unwrap_err();
    assert!(e.to_string().contains("power of two"), "{e}");
    let e = builder()
        .listen("192.0.2.1:1".parse().unwrap())
        .start(|_| App {
            log: Log::default(),
        })
        .unwrap_err();
    assert!(
        e.to_string().contains("cannot listen on 192.0.2.1:1"),
        "{e}"
    );
}

/// The counters match the traffic: upgrades, rejections by reason, messages and bytes each way.
#[test]
fn counters_match_the_traffic() {
    let (server, _log) = start(builder().threads(2));
    let addr = server.local_addr();
    let mut a = Client::connect(addr, "/a");
    let mut b = Client::connect(addr, "/b");
    for c in [&mut a, &mut b] {
        for i in 0..3 {
            c.send_text(&format!("msg{i}"));
            assert_eq!(c.recv(), Got::Text(format!("msg{i}")));
        }
    }
    assert_eq!(
        http(
            addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"
        )
        .0,
        400
    );
    let _ = Client::connect_with(addr, "/forbidden", &[]).unwrap_err();
    let total = |s: &[uproar::WorkerStats]| {
        let mut t = uproar::WorkerStats::default();
        for w in s {
            t.upgrades += w.upgrades;
            t.messages_in += w.messages_in;
            t.bytes_in += w.bytes_in;
            t.messages_out += w.messages_out;
            t.bytes_out += w.bytes_out;
            t.websockets += w.websockets;
            for i in 0..8 {
                t.rejections[i] += w.rejections[i];
            }
        }
        t
    };
    let ok = eventually(Duration::from_secs(5), || {
        let t = total(&server.handle().stats());
        t.upgrades == 2 && t.messages_in == 6 && t.rejections[0] == 1 && t.rejections[1] == 1
    });
    let t = total(&server.handle().stats());
    assert!(ok, "{t:?}");
    assert_eq!(t.bytes_in, 6 * 4);
    assert_eq!(t.messages_out, 6);
    assert_eq!(
        t.bytes_out,
        6 * (2 + 4),
        "each echo is a 2-byte header and 4 bytes"
    );
    assert_eq!(t.websockets, 2);
    assert_eq!(uproar::Rejection::ALL[0].label(), "bad_request");
}
