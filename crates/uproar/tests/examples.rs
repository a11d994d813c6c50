//! The examples, run as their own processes: echo, the chat room, and the echo server under
//! 10,000 connections opened and dropped at once (a separate process, so its descriptors and
//! memory can be read from /proc).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use uproar_wire::{CloseCode, DataKind};

#[test]
fn echo_example_echoes_and_shuts_down_with_1001() {
    let ex = run_example("echo", &[]);
    let mut c = Client::connect(ex.addr, "/anything");
    c.send_text("text ✓");
    assert_eq!(c.recv(), Got::Text("text ✓".into()));
    c.send(DataKind::Binary, &[0xff; 70_000]);
    assert_eq!(c.recv(), Got::Binary(vec![0xff; 70_000]));
    let mut ex = ex;
    drop(ex.stdin.take());
    assert_eq!(c.recv(), Got::Close(1001, "server shutting down".into()));
    assert_eq!(c.recv(), Got::Eof);
    assert!(ex.child.wait().unwrap().success());
}

#[test]
fn chat_example_relays_to_everyone_in_the_room() {
    let ex = run_example("chat", &[]);
    let mut alice = Client::connect(ex.addr, "/chat?name=alice");
    assert_eq!(alice.recv(), Got::Text("* alice joined (1 here)".into()));
    let mut bob = Client::connect(ex.addr, "/chat?name=bob");
    assert_eq!(alice.recv(), Got::Text("* bob joined (2 here)".into()));
    assert_eq!(bob.recv(), Got::Text("* bob joined (2 here)".into()));
    bob.send_text("hi all");
    assert_eq!(alice.recv(), Got::Text("bob: hi all".into()));
    assert_eq!(bob.recv(), Got::Text("bob: hi all".into()));
    bob.close(CloseCode::NORMAL, "");
    assert_eq!(bob.expect_close().0, 1000);
    assert_eq!(alice.recv(), Got::Text("* bob left".into()));
    assert_eq!(
        Client::connect_with(ex.addr, "/chat?name=no%20spaces", &[])
            .err()
            .map(|e| e.0),
        Some(400)
    );
    assert_eq!(
        Client::connect_with(ex.addr, "/elsewhere", &[])
            .err()
            .map(|e| e.0),
        Some(404)
    );
    ex.stop();
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid struct; raising the soft limit to the hard one.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
}

/// Open `n` WebSocket connections (the handshake done on each) and return their sockets.
fn open_many(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let req = format!(
        "GET /echo HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    // Write every request first, then read every 101, so the server sees them all at once.
    let mut socks: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(req.as_bytes()).unwrap();
            s
        })
        .collect();
    for s in &mut socks {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (status, _, _) = read_response(s);
        assert_eq!(status, 101);
    }
    socks
}

/// 10,000 connections opened and dropped at once (half with a reset), twice: the server
/// keeps echoing for another client throughout, its descriptor count returns exactly to the
/// baseline, and its memory after the second round is where the first round left it.
#[test]
fn ten_thousand_connections_opened_and_dropped_at_once() {
    raise_nofile();
    let ex = run_example("echo", &["--max-connections", "12000", "--threads", "1"]);
    let mut probe = Client::connect(ex.addr, "/probe");
    let fds_base = ex.fds();
    let mut rss_after_round = Vec::new();
    for round in 0..2 {
        let socks = open_many(ex.addr, 10_000);
        assert_eq!(ex.fds(), fds_base + 10_000, "one descriptor per connection");
        probe.send_text(&format!("round {round} open"));
        assert_eq!(probe.recv(), Got::Text(format!("round {round} open")));
        for (i, s) in socks.into_iter().enumerate() {
            if i % 2 == 0 {
                reset(s);
            } else {
                drop(s);
            }
        }
        assert!(
            eventually(Duration::from_secs(30), || ex.fds() == fds_base),
            "descriptors back to the baseline: {} vs {fds_base}",
            ex.fds()
        );
        probe.send_text(&format!("round {round} closed"));
        assert_eq!(probe.recv(), Got::Text(format!("round {round} closed")));
        rss_after_round.push(ex.proc_status("VmRSS:"));
    }
    let (first, second) = (rss_after_round[0], rss_after_round[1]);
    assert!(
        second <= first + 1024,
        "RSS grew from {first} KiB to {second} KiB over a second identical round"
    );
    ex.stop();
}
