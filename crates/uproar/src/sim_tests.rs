//! The lifecycle without sockets: every scenario runs under the simulator (`sim.rs`) with
//! io_uring's bookkeeping (multishot reads, sends in flight until completed) and with epoll's.

use std::time::Duration;

use uproar_wire::{DataKind, OpCode};

use crate::sim::{Sim, client_frame, frames, upgrade_request};

fn both(mut f: impl FnMut(bool)) {
    f(true);
    f(false);
}

fn sim(multishot: bool) -> Sim {
    Sim::new(Sim::small_config(), multishot)
}

/// An open WebSocket on `path`, its 101 written.
fn open(s: &mut Sim, path: &str) -> crate::ConnId {
    let id = s.connect().unwrap();
    s.feed(id, &upgrade_request(path));
    s.drain();
    assert!(s.peers[&id].output.starts_with(b"HTTP/1.1 101 "));
    id
}

fn count(s: &Sim, prefix: &str) -> usize {
    s.log().iter().filter(|l| l.starts_with(prefix)).count()
}

/// Two pipelined keep-alive requests, split at every byte, get two responses in order; then
/// `Connection: close` is answered and followed by our FIN, and the peer's FIN frees the slot.
#[test]
fn keep_alive_and_pipelining_at_every_split_point() {
    both(|m| {
        let reqs = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /bb HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in 0..=reqs.len() {
            let mut s = sim(m);
            let id = s.connect().unwrap();
            s.feed(id, &reqs[..split]);
            s.feed(id, &reqs[split..]);
            s.drain();
            let out = String::from_utf8(s.peers[&id].output.clone()).unwrap();
            assert_eq!(
                out.matches("HTTP/1.1 200 ").count(),
                2,
                "split {split}: {out}"
            );
            assert!(out.find("\r\n\r\na").unwrap() < out.find("\r\n\r\nbb").unwrap());
            assert!(!s.peers[&id].fin, "keep-alive");
            s.feed(id, b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n");
            s.drain();
            assert!(s.peers[&id].fin, "FIN after the last response");
            assert!(String::from_utf8_lossy(&s.peers[&id].output).ends_with("\r\n\r\nc"));
            assert_eq!(s.open(), 1, "lingers until the peer's FIN");
            s.eof(id);
            assert_eq!(s.open(), 0);
            assert!(s.peers[&id].freed);
        }
    });
}

/// The upgrade request and the first frame, in one stream split at every byte: the 101, then
/// the echo.
#[test]
fn upgrade_then_a_frame_at_every_split_point() {
    both(|m| {
        let mut input = upgrade_request("/echo");
        input.extend(client_frame(true, OpCode::Text, b"hello"));
        for split in 0..=input.len() {
            let mut s = sim(m);
            let id = s.connect().unwrap();
            s.feed(id, &input[..split]);
            s.feed(id, &input[split..]);
            s.drain();
            assert_eq!(
                frames(&s.peers[&id].output),
                vec![(OpCode::Text, b"hello".to_vec())],
                "split {split}"
            );
            s.check_streams();
        }
    });
}

/// A fragmented message with a ping between its fragments, fed in two receives split at every
/// byte: one pong, then the whole message echoed once.
#[test]
fn fragmented_input_at_every_split_point() {
    both(|m| {
        let mut input = client_frame(false, OpCode::Text, b"frag");
        input.extend(client_frame(true, OpCode::Ping, b"p"));
        input.extend(client_frame(false, OpCode::Continuation, b"men"));
        input.extend(client_frame(true, OpCode::Continuation, b"ted"));
        for split in 0..=input.len() {
            let mut s = sim(m);
            let id = open(&mut s, "/echo");
            s.feed(id, &input[..split]);
            s.feed(id, &input[split..]);
            s.drain();
            assert_eq!(
                frames(&s.peers[&id].output),
                vec![
                    (OpCode::Pong, b"p".to_vec()),
                    (OpCode::Text, b"fragmented".to_vec())
                ],
                "split {split}"
            );
        }
    });
}

/// Sends complete a byte at a time, in any pattern: the peer gets every frame whole, in order.
#[test]
fn partial_sends_keep_frames_whole_and_in_order() {
    both(|m| {
        let mut s = sim(m);
        let id = open(&mut s, "/echo");
        for i in 0..5u8 {
            s.feed(id, &client_frame(true, OpCode::Binary, &vec![i; 300]));
        }
        let mut step = 1;
        while s.complete(id, Some(step)) {
            step = step % 7 + 1;
        }
        let got = frames(&s.peers[&id].output);
        assert_eq!(got.len(), 5);
        for (i, (op, p)) in got.iter().enumerate() {
            assert_eq!(
                (*op, p.as_slice()),
                (OpCode::Binary, &vec![i as u8; 300][..])
            );
        }
        s.check_streams();
    });
}

/// A request head that does not arrive in time: 408, FIN, and the slot freed at the linger
/// deadline when the peer never closes.
#[test]
fn handshake_and_linger_timeouts() {
    both(|m| {
        let mut s = sim(m);
        let id = s.connect().unwrap();
        s.feed(id, b"GET / HTTP/1.1\r\n");
        s.advance(Duration::from_millis(1900));
        assert!(s.peers[&id].output.is_empty());
        s.advance(Duration::from_millis(200));
        s.drain();
        assert!(s.peers[&id].output.starts_with(b"HTTP/1.1 408 "));
        assert!(s.peers[&id].fin);
        assert_eq!(s.open(), 1);
        s.advance(Duration::from_millis(1200));
        assert_eq!(s.open(), 0, "freed at the close timeout");
        assert!(s.peers[&id].aborted && s.peers[&id].freed);
    });
}

/// Idle: pinged after the idle timeout, closed (1006) after as long again without an answer;
/// a peer that answers stays.
#[test]
fn idle_ping_and_close() {
    both(|m| {
        let mut s = sim(m);
        let quiet = open(&mut s, "/echo");
        let live = open(&mut s, "/echo");
        s.advance(Duration::from_millis(10_100));
        s.drain();
        assert_eq!(
            frames(&s.peers[&quiet].output),
            vec![(OpCode::Ping, vec![])]
        );
        s.feed(live, &client_frame(true, OpCode::Pong, b""));
        s.advance(Duration::from_millis(10_100));
        s.drain();
        assert!(
            s.log()
                .iter()
                .any(|l| l == &format!("close {} 1006 clean=false", quiet.index))
        );
        assert!(s.peers[&quiet].freed);
        assert!(!s.peers[&live].freed);
    });
}

/// Our close frame unanswered: the connection is dropped at the close timeout.
#[test]
fn close_handshake_timeout() {
    both(|m| {
        let mut s = sim(m);
        let id = open(&mut s, "/echo");
        s.feed(id, &client_frame(true, OpCode::Text, b"close"));
        s.drain();
        assert_eq!(frames(&s.peers[&id].output)[0].0, OpCode::Close);
        s.advance(Duration::from_millis(1200));
        s.drain();
        assert!(s.peers[&id].freed, "dropped at the close timeout");
        assert_eq!(count(&s, "close "), 1);
    });
}

/// A slow subscriber closed while half a frame is written: the other half goes out before the
/// 1008 close frame, only whole frames are dropped, and the close is counted.
#[test]
fn slow_consumer_closed_after_a_short_send_gets_whole_frames_then_1008() {
    both(|m| {
        let mut s = sim(m);
        let id = open(&mut s, "/ws/t");
        let big = vec![b'x'; 20_000];
        s.publish("t", DataKind::Text, &big);
        // In one turn: the send completes short (the rest of the frame goes back to the
        // queue), then a burst of publishes takes the backlog over the limit.
        assert!(s.complete_in_turn(id, Some(1000)), "a short send");
        for _ in 0..5 {
            assert!(s.post("t", DataKind::Text, &big));
        }
        s.take_inbox();
        s.drain();
        let got = frames(&s.peers[&id].output);
        let last = got.last().unwrap();
        assert_eq!(last.0, OpCode::Close);
        assert_eq!(&last.1[..2], &1008u16.to_be_bytes());
        assert!(
            got[..got.len() - 1]
                .iter()
                .all(|(op, p)| *op == OpCode::Text && p == &big)
        );
        s.check_streams();
        assert_eq!(s.stats().slow_closes, 1);
    });
}

/// A direct send over the limit closes under the close policy, and is counted like a
/// fan-out's slow close.
#[test]
fn direct_sends_over_the_limit_close_and_are_counted() {
    both(|m| {
        let mut s = sim(m);
        let id = open(&mut s, "/echo");
        s.feed(id, &client_frame(true, OpCode::Text, b"flood 8 30000"));
        let got = frames(&s.peers[&id].output);
        assert!(got.is_empty(), "nothing completed yet");
        s.drain();
        let got = frames(&s.peers[&id].output);
        assert_eq!(got.last().unwrap().0, OpCode::Close);
        assert_eq!(s.stats().slow_closes, 1);
        s.check_streams();
    });
}

/// Shutdown: every WebSocket gets 1001; an idle HTTP connection is dropped; at the grace
/// deadline whatever is left is aborted and the worker is finished.
#[test]
fn shutdown_closes_with_1001_then_drops_at_the_deadline() {
    both(|m| {
        let mut s = sim(m);
        let a = open(&mut s, "/echo");
        let b = open(&mut s, "/echo");
        let h = s.connect().unwrap();
        s.shutdown(Duration::from_secs(1));
        assert!(s.connect().is_none(), "no new connections");
        s.drain();
        for id in [a, b] {
            let f = frames(&s.peers[&id].output);
            assert_eq!(f.last().unwrap().0, OpCode::Close);
            assert_eq!(&f.last().unwrap().1[..2], &1001u16.to_be_bytes());
        }
        assert!(s.peers[&h].freed);
        // One answers the close and closes its socket; the other never does.
        s.feed(
            a,
            &client_frame(true, OpCode::Close, &1001u16.to_be_bytes()),
        );
        s.eof(a);
        s.drain();
        assert!(s.peers[&a].freed);
        assert!(!s.finished());
        s.advance(Duration::from_millis(1100));
        assert!(s.peers[&b].freed);
        assert!(s.finished());
    });
}

/// A reset while a send is in flight: the slot is freed only when the send completes, once.
#[test]
fn reset_with_a_send_in_flight_frees_once_after_it() {
    let mut s = sim(true);
    let id = open(&mut s, "/echo");
    s.feed(id, &client_frame(true, OpCode::Binary, &[1; 100]));
    assert!(s.peers[&id].in_flight.is_some());
    s.reset(id);
    assert!(!s.peers[&id].freed, "a send is in flight");
    assert!(s.fail_send(id));
    assert!(s.peers[&id].freed);
    assert_eq!(count(&s, "close "), 1);
}

/// Bad frames close with their codes: 1002 for a protocol error, 1007 for bad UTF-8, 1009 for
/// a frame over the limit; each one close, then the slot is freed.
#[test]
fn bad_frames_close_with_their_codes() {
    both(|m| {
        for (input, code) in [
            (client_frame(true, OpCode::Continuation, b"x"), 1002u16),
            (client_frame(true, OpCode::Text, &[0xff, 0xfe]), 1007),
            (client_frame(true, OpCode::Binary, &vec![0; 70_000]), 1009),
        ] {
            let mut s = sim(m);
            let id = open(&mut s, "/echo");
            s.feed(id, &input);
            s.drain();
            let f = frames(&s.peers[&id].output);
            assert_eq!(f.last().unwrap().0, OpCode::Close);
            assert_eq!(&f.last().unwrap().1[..2], &code.to_be_bytes());
            assert!(s.peers[&id].fin);
            s.eof(id);
            assert!(s.peers[&id].freed);
        }
    });
}

/// Over max_connections: refused with 503, no slot spent.
#[test]
fn over_the_connection_limit_is_refused() {
    let mut cfg = Sim::small_config();
    cfg.max_connections = 2;
    let mut s = Sim::new(cfg, true);
    assert!(s.connect().is_some());
    assert!(s.connect().is_some());
    assert!(s.connect().is_none());
    assert_eq!(
        s.stats().rejections[crate::Rejection::ALL
            .iter()
            .position(|r| *r == crate::Rejection::Overloaded)
            .unwrap()],
        1
    );
}
