//! permessage-deflate through the engine, on the driver `UPROAR_DRIVER` names: negotiation on
//! the wire, compressed echo and fan-out in both modes (a compressing subscriber and a plain one
//! on the same topic both get every message intact, the message compressed once per worker),
//! and bad input: RSV1 where it does not belong (1002), corrupt data (1007), a bomb (1009 at
//! the limit, memory bounded), a truncated stream.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use std::time::Duration;

use common::*;
use uproar::{Ctx, Deflate, Frame, Handler, Message, Upgrade, UpgradeRequest, WebSocket};
use uproar_wire::deflate::{Deflater, Inflater};
use uproar_wire::frame::{FrameHead, FrameHeader, OpCode, Role};

/// `/echo` echoes; `/ws/T` subscribes to T and publishes what it gets; `/raw/T` subscribes to
/// T and publishes with compression turned off for the message.
struct App;

impl Handler for App {
    type Conn = (String, bool);

    fn on_upgrade<'r>(
        &mut self,
        _: &mut Ctx<Self::Conn>,
        req: &UpgradeRequest<'r>,
    ) -> Upgrade<'r, Self::Conn> {
        let p = req.path();
        let (topic, compress) = if let Some(t) = p.strip_prefix("/ws/") {
            (t, true)
        } else if let Some(t) = p.strip_prefix("/raw/") {
            (t, false)
        } else {
            ("", true)
        };
        Upgrade::accept((topic.to_owned(), compress))
    }

    fn on_open(&mut self, ws: &mut WebSocket<'_, Self::Conn>) {
        let t = ws.data().0.clone();
        if !t.is_empty() {
            ws.subscribe(&t);
        }
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, Self::Conn>, msg: Message<'_>) {
        let (t, compress) = ws.data().clone();
        if t.is_empty() {
            let _ = ws.send(msg.kind(), msg.data());
        } else {
            let mut f = Frame::new(msg.kind(), msg.data());
            if !compress {
                f = f.no_compression();
            }
            ws.ctx().publish_frame(&t, &f);
        }
    }
}

/// The tests of this file one at a time: the bomb test reads the process's peak RSS, which
/// another test's server running beside it would raise.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: std::sync::Mutex<()> = std::sync::Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

fn server(mode: Deflate, threads: usize) -> uproar::Server {
    builder()
        .deflate(mode)
        .threads(threads)
        .max_message_size(1 << 20)
        .start(|_| App)
        .unwrap()
}

/// A raw client: the upgrade with `offer` (if any); returns the socket and the 101's
/// `Sec-WebSocket-Extensions` value.
fn open(addr: SocketAddr, path: &str, offer: Option<&str>) -> (Peer, Option<String>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ext = offer.map_or(String::new(), |o| {
        format!("Sec-WebSocket-Extensions: {o}\r\n")
    });
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let ext = head.lines().find_map(|l| {
        l.strip_prefix("Sec-WebSocket-Extensions: ")
            .map(str::to_owned)
    });
    (Peer::new(s), ext)
}

/// Send a masked frame with the given RSV bits.
fn send(p: &mut Peer, rsv: u8, op: OpCode, payload: &[u8]) {
    let key = [9, 8, 7, 6];
    let mut out = FrameHead::with_rsv(true, rsv, op, payload.len() as u64, Some(key))
        .as_bytes()
        .to_vec();
    let start = out.len();
    out.extend_from_slice(payload);
    uproar_wire::mask::unmask(&mut out[start..], key, 0);
    p.s.write_all(&out).unwrap();
}

fn compress(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Deflater::new(15, 8, 6, true).compress(msg, &mut out);
    out
}

/// The client side of one connection: its socket, bytes read past the last frame, and its
/// inflater (kept across messages: under context takeover a message refers to earlier ones).
struct Peer {
    s: TcpStream,
    buf: Vec<u8>,
    inflater: Inflater,
}

impl Peer {
    fn new(s: TcpStream) -> Peer {
        Peer {
            s,
            buf: Vec::new(),
            inflater: Inflater::new(false),
        }
    }
}

/// Read one frame: (rsv, opcode, payload).
fn recv(p: &mut Peer) -> (u8, OpCode, Vec<u8>) {
    let mut b = [0u8; 4096];
    loop {
        if let Ok(Some((h, n))) = FrameHeader::parse_with(&p.buf, Role::Client, 0b100) {
            let end = n + h.payload_len as usize;
            if p.buf.len() >= end {
                let payload = p.buf[n..end].to_vec();
                p.buf.drain(..end);
                return (h.rsv, h.opcode, payload);
            }
        }
        let k = p.s.read(&mut b).unwrap();
        assert!(k > 0, "closed");
        p.buf.extend_from_slice(&b[..k]);
    }
}

/// A data message as a client sees it: inflated if RSV1 is set.
fn recv_message(p: &mut Peer) -> (bool, OpCode, Vec<u8>) {
    let (rsv, op, payload) = recv(p);
    if rsv & 0b100 == 0 {
        return (false, op, payload);
    }
    let mut out = Vec::new();
    p.inflater.inflate(&payload, &mut out, 16 << 20).unwrap();
    p.inflater.finish(&mut out, 16 << 20).unwrap();
    (true, op, out)
}

fn close_code(p: &mut Peer) -> u16 {
    loop {
        let (_, op, payload) = recv(p);
        if op == OpCode::Close {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

fn json_like(n: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut x = seed;
    while out.len() < n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(
            format!("{{\"sym\":\"S{}\",\"px\":{}.{}}},", x % 40, x % 997, x % 89).as_bytes(),
        );
    }
    out.truncate(n);
    out
}

#[test]
fn compressed_echo_in_both_modes_and_plain_without_an_offer() {
    let _serial = serial();
    for (mode, want) in [
        (
            Deflate::Shared,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        (
            Deflate::Dedicated,
            "permessage-deflate; server_max_window_bits=11",
        ),
    ] {
        let srv = server(mode, 1);
        let (mut s, ext) = open(srv.local_addr(), "/echo", Some("permessage-deflate"));
        assert_eq!(ext.as_deref(), Some(want));
        for n in [1usize, 63, 64, 1000, 100_000] {
            let msg = json_like(n, n as u64);
            send(&mut s, 0b100, OpCode::Text, &compress(&msg));
            let (compressed, op, got) = recv_message(&mut s);
            assert_eq!((op, got), (OpCode::Text, msg), "{mode:?} {n}");
            assert_eq!(
                compressed,
                n >= 64,
                "{mode:?} {n}: compressed only from 64 bytes"
            );
        }
        // Uncompressed frames still pass on a connection that negotiated.
        send(&mut s, 0, OpCode::Binary, b"plain");
        assert_eq!(
            recv_message(&mut s),
            (false, OpCode::Binary, b"plain".to_vec())
        );
        let (mut p, ext) = open(srv.local_addr(), "/echo", None);
        assert_eq!(ext, None, "no offer, no extension");
        send(&mut p, 0, OpCode::Text, &json_like(500, 1));
        assert_eq!(
            recv_message(&mut p),
            (false, OpCode::Text, json_like(500, 1))
        );
        let st = srv.handle().stats()[0];
        assert!(
            st.deflate_compressed >= 3 && st.deflate_bytes_after < st.deflate_bytes_before,
            "{st:?}"
        );
        srv.handle().shutdown(Duration::ZERO);
        srv.join().unwrap();
    }
}

/// A subscriber that negotiated deflate and one that did not, on the same topic, on two
/// workers: both receive every message intact; a message is compressed once per worker (not
/// once per subscriber); a message published with `no_compression` goes out plain to both.
#[test]
fn compressed_and_plain_subscribers_on_one_topic() {
    let _serial = serial();
    let srv = server(Deflate::Shared, 2);
    let addr = srv.local_addr();
    let mut subs: Vec<(Peer, bool)> = (0..8)
        .map(|i| {
            let offer = (i % 2 == 0).then_some("permessage-deflate; client_max_window_bits");
            (open(addr, "/ws/t", offer).0, i % 2 == 0)
        })
        .collect();
    let (mut publisher, _) = open(addr, "/ws/t", None);
    // The publisher is a subscriber too: it gets its own messages back.
    for i in 0..20u64 {
        send(&mut publisher, 0, OpCode::Text, &json_like(800, i));
    }
    for (s, negotiated) in &mut subs {
        for i in 0..20u64 {
            let (compressed, op, got) = recv_message(s);
            assert_eq!((op, got), (OpCode::Text, json_like(800, i)));
            assert_eq!(compressed, *negotiated);
        }
    }
    // Only now the second publisher: order is kept per publisher, not across publishers on
    // different workers, so sending it earlier could overtake the first one's messages.
    let (mut raw_pub, _) = open(addr, "/raw/t", None);
    send(&mut raw_pub, 0, OpCode::Binary, &[7; 500]);
    for (s, _) in &mut subs {
        assert_eq!(
            recv_message(s),
            (false, OpCode::Binary, vec![7; 500]),
            "opted out: plain"
        );
    }
    // (A worker publishes its statistics after it writes: poll.)
    let sum =
        |f: fn(&uproar::WorkerStats) -> u64| -> u64 { srv.handle().stats().iter().map(f).sum() };
    assert!(
        eventually(Duration::from_secs(5), || sum(|s| s.deflate_plain) == 4),
        "the opted-out message to the 4 that negotiated: {}",
        sum(|s| s.deflate_plain)
    );
    assert_eq!(
        sum(|s| s.deflate_compressed),
        4 * 20,
        "per delivery, to the 4 that negotiated"
    );
    srv.handle().shutdown(Duration::ZERO);
    srv.join().unwrap();
}

#[test]
fn rsv1_misplaced_or_unnegotiated_is_1002() {
    let _serial = serial();
    let srv = server(Deflate::Shared, 1);
    let addr = srv.local_addr();
    let (mut s, _) = open(addr, "/echo", Some("permessage-deflate"));
    send(&mut s, 0b100, OpCode::Ping, b"p");
    assert_eq!(close_code(&mut s), 1002, "RSV1 on a control frame");
    let (mut s, _) = open(addr, "/echo", Some("permessage-deflate"));
    let z = compress(b"hello hello hello");
    let mut first = FrameHead::with_rsv(false, 0b100, OpCode::Text, 3, Some([0; 4]))
        .as_bytes()
        .to_vec();
    first.extend_from_slice(&z[..3]);
    s.s.write_all(&first).unwrap();
    send(&mut s, 0b100, OpCode::Continuation, &z[3..]);
    assert_eq!(close_code(&mut s), 1002, "RSV1 on a continuation");
    let (mut s, _) = open(addr, "/echo", None);
    send(&mut s, 0b100, OpCode::Text, &z);
    assert_eq!(close_code(&mut s), 1002, "RSV1 without negotiation");
    srv.handle().shutdown(Duration::ZERO);
    srv.join().unwrap();
}

#[test]
fn corrupt_data_is_1007_and_counted() {
    let _serial = serial();
    for mode in [Deflate::Shared, Deflate::Dedicated] {
        let srv = server(mode, 1);
        let (mut s, _) = open(srv.local_addr(), "/echo", Some("permessage-deflate"));
        send(&mut s, 0b100, OpCode::Binary, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(close_code(&mut s), 1007);
        assert!(eventually(Duration::from_secs(5), || srv.handle().stats()
            [0]
        .inflate_corrupt
            == 1));
        // Others are still served.
        let (mut t, _) = open(srv.local_addr(), "/echo", Some("permessage-deflate"));
        send(&mut t, 0b100, OpCode::Text, &compress(b"still fine"));
        assert_eq!(recv_message(&mut t).2, b"still fine");
        srv.handle().shutdown(Duration::ZERO);
        srv.join().unwrap();
    }
}

/// 16 MiB of zeros compressed to about 16 KiB, against a 1 MiB message limit: closed with
/// 1009 once the limit is reached; the server's memory grows by about the limit, not 16 MiB.
#[test]
fn a_bomb_is_1009_at_the_limit_with_memory_bounded() {
    let _serial = serial();
    let srv = server(Deflate::Shared, 1);
    let rss_kib = || -> u64 {
        let st = std::fs::read_to_string("/proc/self/status").unwrap();
        st.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .map(|v| v.trim().trim_end_matches(" kB").parse().unwrap())
            .unwrap()
    };
    // Compressed in 64 KiB steps, so the test itself never holds 16 MiB.
    let mut z = zlib_rs::Deflate::new(9, false, 15);
    let zeros = vec![0u8; 64 << 10];
    let mut bomb = vec![0u8; 64 << 10];
    for i in 0..256 {
        let flush = if i == 255 {
            zlib_rs::DeflateFlush::SyncFlush
        } else {
            zlib_rs::DeflateFlush::NoFlush
        };
        let at = z.total_out() as usize;
        z.compress(&zeros, &mut bomb[at..], flush).unwrap();
    }
    assert_eq!(z.total_in(), 16 << 20);
    bomb.truncate(z.total_out() as usize - 4);
    assert!(bomb.len() < 40 << 10, "{}", bomb.len());
    let before = rss_kib();
    let (mut s, _) = open(srv.local_addr(), "/echo", Some("permessage-deflate"));
    send(&mut s, 0b100, OpCode::Binary, &bomb);
    assert_eq!(close_code(&mut s), 1009);
    assert!(eventually(Duration::from_secs(5), || srv.handle().stats()
        [0]
    .inflate_too_big
        == 1));
    let grew = rss_kib().saturating_sub(before);
    assert!(
        grew < 6 << 10,
        "peak RSS grew by {grew} KiB for a 1 MiB limit"
    );
    srv.handle().shutdown(Duration::ZERO);
    srv.join().unwrap();
}

/// A compressed message cut short (its deflate stream truncated): raw deflate has no
/// checksum, so the server closes with 1007 if the rest does not decode, or delivers what
/// does; either way nothing hangs and the next connection is served.
#[test]
fn a_truncated_stream_does_not_hang_the_server() {
    let _serial = serial();
    let srv = server(Deflate::Shared, 1);
    let z = compress(&json_like(5000, 3));
    let (mut s, _) = open(srv.local_addr(), "/echo", Some("permessage-deflate"));
    send(&mut s, 0b100, OpCode::Text, &z[..z.len() / 2]);
    let (_, op, p) = recv(&mut s);
    if op == OpCode::Close {
        assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1007);
    } else {
        assert_eq!(op, OpCode::Text);
    }
    let (mut t, _) = open(srv.local_addr(), "/echo", Some("permessage-deflate"));
    send(&mut t, 0b100, OpCode::Text, &compress(b"next"));
    assert_eq!(recv_message(&mut t).2, b"next");
    srv.handle().shutdown(Duration::ZERO);
    srv.join().unwrap();
}
