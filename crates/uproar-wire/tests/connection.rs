//! Behaviour of the connection state machine.

mod common;

use std::time::{Duration, Instant};

use common::*;
use uproar_wire::close::{CloseCode, Initiator};
use uproar_wire::conn::{Config, Connection, DataKind, Delivery, SendError, State};
use uproar_wire::handshake::{
    ClientHandshake, ClientHandshakeError, Request, random_bytes, validate_upgrade,
};
use uproar_wire::{FrameHeader, OpCode, Role};

fn server() -> Connection {
    Connection::server(Config::default())
}

/// Decode what a server sent, as its client would.
fn decode_sent(sent: &[Vec<u8>]) -> Vec<Ev> {
    let mut c = Connection::client(Config::default(), 5);
    let pieces: Vec<&[u8]> = sent.iter().map(|v| v.as_slice()).collect();
    feed(&mut c, &pieces).events
}

#[test]
fn control_frames_interleaved_in_a_fragmented_message() {
    let input = [
        cframe(false, OpCode::Text, b"Hel"),
        cframe(true, OpCode::Ping, b"p1"),
        cframe(false, OpCode::Continuation, b"l"),
        cframe(true, OpCode::Pong, b"p2"),
        cframe(true, OpCode::Continuation, b"o"),
    ]
    .concat();
    for pieces in two_way_splits(&input) {
        let mut c = server();
        let run = feed(&mut c, &pieces);
        assert_eq!(
            run.events,
            vec![
                Ev::Ping(b"p1".to_vec()),
                Ev::Pong(b"p2".to_vec()),
                Ev::Msg(DataKind::Text, b"Hello".to_vec())
            ]
        );
        assert_eq!(
            decode_sent(&run.sent),
            vec![Ev::Pong(b"p1".to_vec())],
            "auto-pong echoes the ping payload"
        );
    }
}

#[test]
fn only_the_latest_ping_is_answered_when_pings_queue_up() {
    let input = [
        cframe(true, OpCode::Ping, b"a"),
        cframe(true, OpCode::Ping, b"b"),
    ]
    .concat();
    let mut c = server();
    let run = feed(&mut c, &[&input]);
    assert_eq!(
        run.events,
        vec![Ev::Ping(b"a".to_vec()), Ev::Ping(b"b".to_vec())]
    );
    assert_eq!(decode_sent(&run.sent), vec![Ev::Pong(b"b".to_vec())]);

    let mut c = Connection::server(Config {
        auto_pong: false,
        ..Config::default()
    });
    let run = feed(&mut c, &[&input]);
    assert!(run.sent.is_empty(), "auto_pong off sends nothing");
}

#[test]
fn peer_initiated_close_is_echoed_and_input_after_it_ignored() {
    let input = [
        cframe(true, OpCode::Ping, b"x"),
        cframe(true, OpCode::Close, &close_payload(1000, b"bye")),
        cframe(true, OpCode::Text, b"after close"),
    ]
    .concat();
    let mut c = server();
    let run = feed(&mut c, &[&input]);
    assert_eq!(
        run.events,
        vec![Ev::Ping(b"x".to_vec()), Ev::Close(1000, "bye".into())]
    );
    // The pong queued before the close still goes out, before the close reply.
    assert_eq!(
        decode_sent(&run.sent),
        vec![Ev::Pong(b"x".to_vec()), Ev::Close(1000, String::new())]
    );
    assert_eq!(c.state(), State::Closed);
    let info = c.close_info().unwrap();
    assert_eq!(
        (info.code, info.initiator, info.received, info.sent),
        (CloseCode::NORMAL, Initiator::Remote, true, true)
    );
    assert!(!c.can_send());
    assert_eq!(c.queue_ping(b""), Err(SendError::Closing));
}

#[test]
fn empty_close_is_answered_with_an_empty_close() {
    let mut c = server();
    let run = feed(&mut c, &[&cframe(true, OpCode::Close, b"")]);
    assert_eq!(run.events, vec![Ev::Close(1005, String::new())]);
    assert_eq!(run.sent, vec![vec![0x88, 0x00]]);
}

#[test]
fn locally_initiated_close_waits_for_the_peer() {
    let mut c = server();
    c.queue_close(CloseCode::GOING_AWAY, "shutdown").unwrap();
    assert_eq!(
        c.queue_close(CloseCode::NORMAL, ""),
        Err(SendError::Closing)
    );
    assert!(
        c.data_head(OpCode::Text, true, 1).is_err(),
        "no data after our close"
    );
    let f = c.poll_transmit().unwrap();
    assert_eq!(
        decode_sent(&[f.as_bytes().to_vec()]),
        vec![Ev::Close(1001, "shutdown".into())]
    );
    assert_eq!(c.state(), State::Closing);
    // Data still in flight from the peer is delivered; then its close completes the handshake.
    let input = [
        cframe(true, OpCode::Text, b"late"),
        cframe(true, OpCode::Close, &close_payload(1001, b"")),
    ]
    .concat();
    let run = feed(&mut c, &[&input]);
    assert_eq!(
        run.events,
        vec![
            Ev::Msg(DataKind::Text, b"late".to_vec()),
            Ev::Close(1001, String::new())
        ]
    );
    assert!(run.sent.is_empty(), "no second close frame");
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.close_info().unwrap().initiator, Initiator::Local);
}

#[test]
fn invalid_close_arguments_are_refused() {
    let mut c = server();
    for code in [1005, 1006, 1015, 999, 2000] {
        assert_eq!(
            c.queue_close(CloseCode(code), ""),
            Err(SendError::InvalidClose)
        );
    }
    assert_eq!(
        c.queue_close(CloseCode::NORMAL, &"x".repeat(124)),
        Err(SendError::InvalidClose)
    );
    assert_eq!(c.queue_ping(&[0; 126]), Err(SendError::ControlTooLong));
    assert_eq!(c.state(), State::Open);
}

#[test]
fn idle_timeout_pings_then_gives_up() {
    let t0 = Instant::now();
    let idle = Duration::from_secs(10);
    let mut c = Connection::server(Config {
        idle_timeout: Some(idle),
        ..Config::default()
    });
    c.note_activity(t0);
    assert_eq!(c.poll_timeout(), Some(t0 + idle));
    c.handle_timeout(t0 + Duration::from_secs(5));
    assert!(c.poll_transmit().is_none(), "not idle yet");
    c.handle_timeout(t0 + idle);
    let ping = c.poll_transmit().expect("idle ping");
    assert_eq!(ping.opcode(), OpCode::Ping);
    // The peer answers: the idle clock restarts.
    c.note_activity(t0 + Duration::from_secs(11));
    feed(&mut c, &[&cframe(true, OpCode::Pong, b"")]);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(21)));
    c.handle_timeout(t0 + Duration::from_secs(21));
    assert!(c.poll_transmit().is_some());
    // Silence after the ping: closed, code 1006, nothing to send.
    c.handle_timeout(t0 + Duration::from_secs(41));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.close_info().unwrap().code, CloseCode::ABNORMAL);
    assert!(c.poll_transmit().is_none());
    assert_eq!(c.poll_timeout(), None);
}

/// The idle deadline stays the last input plus the timeout, to the nanosecond, however many
/// timer calls come between and in whatever order their times arrive.
#[test]
fn the_idle_deadline_counts_from_the_last_input_across_timer_calls() {
    let t0 = Instant::now();
    let idle = Duration::from_secs(10);
    let mut c = Connection::server(Config {
        idle_timeout: Some(idle),
        ..Config::default()
    });
    assert_eq!(c.poll_timeout(), None, "no time given yet");
    // Before any input, the first time given counts as the last input.
    c.handle_timeout(t0);
    assert_eq!(c.poll_timeout(), Some(t0 + idle));
    let input = t0 + Duration::from_nanos(1_234_567_891);
    c.note_activity(input);
    let mut t = input;
    for step in [1u64, 999_999, 3_000_000_007, 7, 2_500_000_000] {
        t += Duration::from_nanos(step);
        c.handle_timeout(t);
        assert_eq!(
            c.poll_timeout(),
            Some(input + idle),
            "after a step of {step} ns"
        );
    }
    // A time earlier than the last one given (a caller's stale clock) moves nothing.
    c.handle_timeout(input + Duration::from_secs(1));
    assert_eq!(c.poll_timeout(), Some(input + idle));
    c.handle_timeout(input + idle - Duration::from_nanos(1));
    assert!(c.poll_transmit().is_none(), "one nanosecond early");
    c.handle_timeout(input + idle);
    assert_eq!(c.poll_transmit().map(|f| f.opcode()), Some(OpCode::Ping));
    assert_eq!(
        c.poll_timeout(),
        Some(input + idle * 2),
        "the ping's answer is due"
    );
    // Long past due (the process was stopped): due at once, then given up.
    c.handle_timeout(input + Duration::from_secs(3600));
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn close_timeout_ends_an_unanswered_close() {
    let t0 = Instant::now();
    let mut c = server();
    c.note_activity(t0);
    c.queue_close(CloseCode::NORMAL, "").unwrap();
    assert!(c.poll_transmit().is_some());
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    c.handle_timeout(t0 + Duration::from_secs(4));
    assert_eq!(c.state(), State::Closing);
    c.handle_timeout(t0 + Duration::from_secs(5));
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn fragments_mode_streams_pieces_and_validates_text_across_them() {
    let text = "ünïcödé ".repeat(500);
    let input = [
        cframe(false, OpCode::Text, &text.as_bytes()[..1001]),
        cframe(true, OpCode::Continuation, &text.as_bytes()[1001..]),
    ]
    .concat();
    let mut c = Connection::server(Config {
        delivery: Delivery::Fragments,
        ..Config::default()
    });
    let pieces: Vec<&[u8]> = input.chunks(333).collect();
    let run = feed(&mut c, &pieces);
    assert!(
        run.events.len() > 3,
        "delivered in pieces: {}",
        run.events.len()
    );
    assert_eq!(
        normalize(run.events),
        vec![Ev::Msg(DataKind::Text, text.into_bytes())]
    );
}

#[test]
fn whole_mode_zero_copy_for_single_frame_messages() {
    let f = cframe(true, OpCode::Binary, &[7; 300]);
    let mut buf = f.clone();
    let mut c = server();
    let mut pos = 0;
    let base = buf.as_ptr() as usize;
    match c.handle_read(&mut buf, &mut pos).unwrap() {
        Some(uproar_wire::Event::Message { data, .. }) => {
            assert_eq!(data, &[7; 300][..]);
            assert_eq!(
                data.as_ptr() as usize,
                base + f.len() - 300,
                "payload is a view into the receive buffer"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn client_role_masks_what_it_sends_and_a_server_reads_it() {
    let mut client = Connection::client(Config::default(), 99);
    let (head, key) = client.data_head(OpCode::Binary, true, 5).unwrap();
    let key = key.expect("clients mask");
    let mut payload = *b"hello";
    uproar_wire::mask::unmask(&mut payload, key, 0);
    let wire = [head.as_bytes(), &payload].concat();
    let (h, _) = FrameHeader::parse(&wire, Role::Server).unwrap().unwrap();
    assert_eq!(h.mask, Some(key));
    let mut s = server();
    assert_eq!(
        feed(&mut s, &[&wire]).events,
        vec![Ev::Msg(DataKind::Binary, b"hello".to_vec())]
    );
    // Keys differ frame to frame.
    let (_, k2) = client.data_head(OpCode::Binary, true, 5).unwrap();
    assert_ne!(Some(key), k2);
    // Client control frames are masked too, and the server reads them.
    client.queue_close(CloseCode::NORMAL, "done").unwrap();
    let f = client.poll_transmit().unwrap();
    assert_eq!(
        feed(&mut s, &[f.as_bytes()]).events,
        vec![Ev::Close(1000, "done".into())]
    );
}

#[test]
fn handshake_round_trip_with_subprotocol() {
    let hs = ClientHandshake::new(random_bytes());
    let mut req = Vec::new();
    hs.write_request(
        &mut req,
        "127.0.0.1:9001",
        "/ws/news?mode=sub",
        &["chat", "superchat"],
        &[("Origin", "http://x")],
    );
    let parsed = Request::parse(&req, 8192).unwrap().unwrap();
    assert_eq!(parsed.head_len(), req.len());
    assert!(parsed.wants_websocket());
    assert_eq!(parsed.path(), "/ws/news");
    assert_eq!(parsed.query(), Some("mode=sub"));
    let up = validate_upgrade(&parsed).unwrap();
    assert_eq!(up.origin(), Some(&b"http://x"[..]));
    assert_eq!(up.protocols().collect::<Vec<_>>(), ["chat", "superchat"]);
    let mut resp = Vec::new();
    up.write_accept(&mut resp, Some("superchat"));
    resp.extend_from_slice(&[0x81, 0x00]); // a frame right after the head
    let r = hs
        .parse_response(&resp, &["chat", "superchat"])
        .unwrap()
        .unwrap();
    assert_eq!(r.protocol, Some("superchat"));
    assert_eq!(&resp[r.head_len..], &[0x81, 0x00]);
    // Every prefix of the head is incomplete.
    for cut in 0..r.head_len {
        assert_eq!(
            hs.parse_response(&resp[..cut], &["chat", "superchat"]),
            Ok(None)
        );
    }
    // The wrong key's accept, an unoffered protocol, and a refusal are errors.
    let other = ClientHandshake::new([0; 16]);
    assert_eq!(
        other.parse_response(&resp, &["superchat"]),
        Err(ClientHandshakeError::BadAccept)
    );
    assert_eq!(
        hs.parse_response(&resp, &["chat"]),
        Err(ClientHandshakeError::UnexpectedProtocol)
    );
    let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(
        hs.parse_response(refused, &[]),
        Err(ClientHandshakeError::Rejected(403))
    );
}

#[test]
fn plain_http_requests_are_not_upgrades() {
    let r = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let parsed = Request::parse(r, 8192).unwrap().unwrap();
    assert!(!parsed.wants_websocket());
    assert_eq!(parsed.header("HOST"), Some(&b"x"[..]));
    // Upgrade token matching is case-insensitive and list-aware.
    let r = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: foo, WebSocket\r\nConnection: keep-alive, UPGRADE\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let parsed = Request::parse(r, 8192).unwrap().unwrap();
    assert!(parsed.wants_websocket());
    assert!(validate_upgrade(&parsed).is_ok());
}

/// `read_event` names where each payload is: a one-frame message in the caller's buffer, a
/// fragmented one in the assembly buffer, which `take_assembly` hands out and
/// `restore_assembly` takes back without disturbing the next message.
#[test]
fn raw_events_name_their_payload() {
    use uproar_wire::{Payload, RawEvent};
    let mut c = server();
    let mut buf = [
        cframe(true, OpCode::Binary, b"one"),
        cframe(false, OpCode::Text, b"tw"),
        cframe(true, OpCode::Ping, b"p"),
        cframe(true, OpCode::Continuation, b"o"),
        cframe(true, OpCode::Text, b"three"),
    ]
    .concat();
    let mut pos = 0;
    let ev = c.read_event(&mut buf, &mut pos).unwrap().unwrap();
    let RawEvent::Message(DataKind::Binary, p @ Payload::Buf(_)) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(c.payload(&p, &buf), b"one");
    let ev = c.read_event(&mut buf, &mut pos).unwrap().unwrap();
    let RawEvent::Ping(p) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(c.payload(&p, &buf), b"p");
    let ev = c.read_event(&mut buf, &mut pos).unwrap().unwrap();
    assert_eq!(ev, RawEvent::Message(DataKind::Text, Payload::Assembly));
    let whole = c.take_assembly();
    assert_eq!(whole, b"two");
    c.restore_assembly(whole);
    let ev = c.read_event(&mut buf, &mut pos).unwrap().unwrap();
    let RawEvent::Message(DataKind::Text, p) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(c.payload(&p, &buf), b"three");
    assert_eq!(c.read_event(&mut buf, &mut pos), Ok(None));
    assert_eq!(pos, buf.len());
}

/// A connection must stay small: servers hold tens of thousands. Rarely used state (split
/// control frames, queued control frames, the close deadline) lives in a box freed when empty.
#[test]
fn a_connection_is_small() {
    let n = size_of::<Connection>();
    assert!(n <= 152, "Connection grew to {n} bytes");
}
