//! A table of malformed inputs, each with the error, close code or HTTP status it must
//! produce, whole and at every 2-way split point.

mod common;

use common::*;
use uproar_wire::OpCode;
use uproar_wire::conn::{Config, Connection};
use uproar_wire::error::ProtocolError as E;
use uproar_wire::handshake::{HandshakeError as H, Request, validate_upgrade};

const K: [u8; 4] = KEY;

fn raw(head: &[u8], masked_payload_len: usize) -> Vec<u8> {
    let mut v = head.to_vec();
    v.extend_from_slice(&K);
    v.extend(std::iter::repeat_n(0u8, masked_payload_len));
    v
}

struct Case {
    name: &'static str,
    server: bool,
    config: Config,
    input: Vec<u8>,
    want: E,
    code: u16,
}

fn cases() -> Vec<Case> {
    let small = Config {
        max_frame_size: 1000,
        max_message_size: 1500,
        ..Config::default()
    };
    let c = |name, input, want, code| Case {
        name,
        server: true,
        config: Config::default(),
        input,
        want,
        code,
    };
    let mut v = vec![
        c(
            "RSV1 without extension",
            raw(&[0xC1, 0x80], 0),
            E::ReservedBits,
            1002,
        ),
        c("RSV2", raw(&[0xA1, 0x80], 0), E::ReservedBits, 1002),
        c("RSV3", raw(&[0x91, 0x80], 0), E::ReservedBits, 1002),
        c("opcode 3", raw(&[0x83, 0x80], 0), E::ReservedOpcode, 1002),
        c("opcode 7", raw(&[0x87, 0x80], 0), E::ReservedOpcode, 1002),
        c("opcode 0xB", raw(&[0x8B, 0x80], 0), E::ReservedOpcode, 1002),
        c("opcode 0xF", raw(&[0x8F, 0x80], 0), E::ReservedOpcode, 1002),
        c(
            "ping of 126 bytes",
            raw(&[0x89, 0xFE, 0x00, 0x7E], 126),
            E::ControlFrameTooLong,
            1002,
        ),
        c(
            "close of 127 bytes (64-bit length)",
            raw(&[0x88, 0xFF, 0, 0, 0, 0, 0, 0, 0, 127], 127),
            E::ControlFrameTooLong,
            1002,
        ),
        c(
            "fragmented ping",
            raw(&[0x09, 0x80], 0),
            E::FragmentedControlFrame,
            1002,
        ),
        c(
            "fragmented close",
            raw(&[0x08, 0x80], 0),
            E::FragmentedControlFrame,
            1002,
        ),
        c(
            "64-bit length with high bit",
            raw(&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1], 0),
            E::LengthHighBit,
            1002,
        ),
        c(
            "16-bit length of 125",
            raw(&[0x82, 0xFE, 0x00, 125], 125),
            E::NonMinimalLength,
            1002,
        ),
        c(
            "64-bit length of 65535",
            raw(&[0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF], 0),
            E::NonMinimalLength,
            1002,
        ),
        c(
            "64-bit length of 5",
            raw(&[0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0, 5], 5),
            E::NonMinimalLength,
            1002,
        ),
        c(
            "unmasked client frame",
            vec![0x81, 0x02, b'h', b'i'],
            E::UnmaskedClientFrame,
            1002,
        ),
        c(
            "continuation without message",
            cframe(true, OpCode::Continuation, b"x"),
            E::UnexpectedContinuation,
            1002,
        ),
        c(
            "text inside a fragmented message",
            [
                cframe(false, OpCode::Text, b"a"),
                cframe(true, OpCode::Text, b"b"),
            ]
            .concat(),
            E::ExpectedContinuation,
            1002,
        ),
        c(
            "binary inside a fragmented message after a ping",
            [
                cframe(false, OpCode::Binary, b"a"),
                cframe(true, OpCode::Ping, b""),
                cframe(false, OpCode::Binary, b"b"),
            ]
            .concat(),
            E::ExpectedContinuation,
            1002,
        ),
        c(
            "close with 1-byte payload",
            cframe(true, OpCode::Close, &[0x03]),
            E::CloseFrameTooShort,
            1002,
        ),
        c(
            "invalid UTF-8 text",
            cframe(true, OpCode::Text, b"ab\xffcd"),
            E::InvalidUtf8,
            1007,
        ),
        c(
            "UTF-8 surrogate",
            cframe(true, OpCode::Text, b"\xed\xa0\x80"),
            E::InvalidUtf8,
            1007,
        ),
        c(
            "text ending mid code point",
            cframe(true, OpCode::Text, "é".as_bytes().split_at(1).0),
            E::InvalidUtf8,
            1007,
        ),
        c(
            "invalid UTF-8 across fragments",
            [
                cframe(false, OpCode::Text, b"ok\xe2\x82"),
                cframe(true, OpCode::Continuation, b"\x28"),
            ]
            .concat(),
            E::InvalidUtf8,
            1007,
        ),
        c(
            "close reason not UTF-8",
            cframe(true, OpCode::Close, &close_payload(1000, b"\xc3\x28")),
            E::InvalidCloseReason,
            1007,
        ),
        Case {
            name: "masked server frame (client role)",
            server: false,
            config: Config::default(),
            input: cframe(true, OpCode::Text, b"hi"),
            want: E::MaskedServerFrame,
            code: 1002,
        },
        Case {
            name: "frame over max_frame_size",
            server: true,
            config: small.clone(),
            input: cframe(true, OpCode::Binary, &[0; 1001]),
            want: E::FrameTooLarge,
            code: 1009,
        },
        Case {
            name: "message over max_message_size",
            server: true,
            config: small,
            input: [
                cframe(false, OpCode::Binary, &[0; 800]),
                cframe(true, OpCode::Continuation, &[0; 800]),
            ]
            .concat(),
            want: E::MessageTooLarge,
            code: 1009,
        },
    ];
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        v.push(Case {
            name: "close with a code a peer must not send",
            server: true,
            config: Config::default(),
            input: cframe(true, OpCode::Close, &close_payload(code, b"")),
            want: E::InvalidCloseCode,
            code: 1002,
        });
    }
    v
}

#[test]
fn malformed_frames_close_with_their_code_at_every_split() {
    for case in cases() {
        for pieces in two_way_splits(&case.input) {
            let mut conn = if case.server {
                Connection::server(case.config.clone())
            } else {
                Connection::client(case.config.clone(), 1)
            };
            let run = feed(&mut conn, &pieces);
            assert_eq!(
                run.events.last(),
                Some(&Ev::Err(case.want)),
                "{}: events {:?}",
                case.name,
                run.events
            );
            assert_eq!(case.want.close_code().0, case.code, "{}", case.name);
            // The close frame that went out carries the code.
            let close = run
                .sent
                .last()
                .unwrap_or_else(|| panic!("{}: no close sent", case.name));
            let mut dec = peer_of(&conn);
            let got = feed(&mut dec, &[close]);
            match &got.events[..] {
                [Ev::Close(code, _)] => assert_eq!(*code, case.code, "{}", case.name),
                other => panic!("{}: sent {other:?}", case.name),
            }
            assert!(
                conn.is_closed(),
                "{}: a failed connection is closed once its close frame is out",
                case.name
            );
            assert!(!conn.can_send());
        }
    }
}

/// Errors are reported as soon as the offending byte arrives, not when the frame completes.
#[test]
fn errors_fail_fast() {
    // Invalid UTF-8 in the first bytes of a 1000-byte frame: the frame is not complete.
    let mut payload = vec![b'a'; 1000];
    payload[3] = 0xff;
    let f = cframe(true, OpCode::Text, &payload);
    let head = &f[..f.len() - 1000 + 10];
    let mut conn = Connection::server(Config::default());
    let run = feed(&mut conn, &[head]);
    assert!(
        matches!(run.events.last(), Some(Ev::Err(E::InvalidUtf8))),
        "{:?}",
        run.events
    );

    // A frame announcing more than the limit fails on its header, before any payload.
    let mut conn = Connection::server(Config {
        max_frame_size: 100,
        ..Config::default()
    });
    let run = feed(
        &mut conn,
        &[&[0x82, 0xFF, 0, 0, 0, 0, 0x10, 0, 0, 0, 1, 2, 3, 4]],
    );
    assert_eq!(run.events, vec![Ev::Err(E::FrameTooLarge)]);
}

struct HsCase {
    name: &'static str,
    req: String,
    want: H,
}

fn req(lines: &[&str]) -> String {
    let mut s = lines.join("\r\n");
    s.push_str("\r\n\r\n");
    s
}

fn handshake_cases() -> Vec<HsCase> {
    let good = [
        "GET /chat HTTP/1.1",
        "Host: example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];
    let without = |i: usize| -> Vec<&str> {
        good.iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, l)| *l)
            .collect()
    };
    let with = |i: usize, l: &'static str| -> Vec<&str> {
        let mut v = good.to_vec();
        v[i] = l;
        v
    };
    let plus = |l: &'static str| -> Vec<&str> {
        let mut v = good.to_vec();
        v.push(l);
        v
    };
    let many: Vec<String> = (0..70).map(|i| format!("X-H{i}: v")).collect();
    let mut many_lines: Vec<&str> = good.to_vec();
    many_lines.extend(many.iter().map(|s| s.as_str()));
    let long = format!("Cookie: {}", "a".repeat(9000));
    let mut long_lines = good.to_vec();
    long_lines.push(&long);
    vec![
        HsCase {
            name: "POST upgrade",
            req: req(&with(0, "POST /chat HTTP/1.1")),
            want: H::MethodNotGet,
        },
        HsCase {
            name: "HTTP/1.0",
            req: req(&with(0, "GET /chat HTTP/1.0")),
            want: H::NotHttp11,
        },
        HsCase {
            name: "no Host",
            req: req(&without(1)),
            want: H::MissingHost,
        },
        HsCase {
            name: "Upgrade: h2c",
            req: req(&with(2, "Upgrade: h2c")),
            want: H::UpgradeNotWebSocket,
        },
        HsCase {
            name: "no Connection",
            req: req(&without(3)),
            want: H::ConnectionNotUpgrade,
        },
        HsCase {
            name: "Connection: keep-alive",
            req: req(&with(3, "Connection: keep-alive")),
            want: H::ConnectionNotUpgrade,
        },
        HsCase {
            name: "no key",
            req: req(&without(4)),
            want: H::BadKey,
        },
        HsCase {
            name: "short key",
            req: req(&with(4, "Sec-WebSocket-Key: dGhlIHNhbXBsZQ==")),
            want: H::BadKey,
        },
        HsCase {
            name: "key not base64",
            req: req(&with(4, "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==")),
            want: H::BadKey,
        },
        HsCase {
            name: "two keys",
            req: req(&plus("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==")),
            want: H::BadKey,
        },
        HsCase {
            name: "version 8",
            req: req(&with(5, "Sec-WebSocket-Version: 8")),
            want: H::UnsupportedVersion,
        },
        HsCase {
            name: "no version",
            req: req(&without(5)),
            want: H::UnsupportedVersion,
        },
        HsCase {
            name: "70 headers",
            req: req(&many_lines),
            want: H::HeadersTooLarge,
        },
        HsCase {
            name: "9000-byte cookie",
            req: req(&long_lines),
            want: H::HeadersTooLarge,
        },
        HsCase {
            name: "garbage",
            req: "GET / HTTP/1.1\r\nHost\u{0}: x\r\n\r\n".into(),
            want: H::Malformed,
        },
        HsCase {
            name: "not HTTP",
            req: "\u{16}\u{3}\u{1}\u{2}\u{0}\u{1}\r\n\r\n".into(),
            want: H::Malformed,
        },
    ]
}

fn outcome(bytes: &[u8]) -> Result<Option<()>, H> {
    match Request::parse(bytes, 8192)? {
        None => Ok(None),
        Some(r) => validate_upgrade(&r).map(|_| Some(())),
    }
}

#[test]
fn malformed_handshakes_get_their_status_and_reason() {
    for case in handshake_cases() {
        let bytes = case.req.as_bytes();
        assert_eq!(outcome(bytes), Err(case.want), "{}", case.name);
        let status = case.want.status();
        let expected_status = match case.want {
            H::HeadersTooLarge => 431,
            H::UnsupportedVersion => 426,
            _ => 400,
        };
        assert_eq!(status, expected_status, "{}", case.name);
        let mut resp = Vec::new();
        case.want.write_response(&mut resp);
        let resp = String::from_utf8(resp).unwrap();
        assert!(resp.starts_with(&format!("HTTP/1.1 {status} ")), "{resp}");
        assert!(
            resp.ends_with(&format!("\r\n\r\n{}\n", case.want.reason())),
            "{resp}"
        );
        assert_eq!(
            resp.contains("Sec-WebSocket-Version: 13\r\n"),
            status == 426,
            "{resp}"
        );
        // A prefix of the request is either incomplete or already the same error, never
        // something else.
        for cut in 0..bytes.len() {
            match outcome(&bytes[..cut]) {
                Ok(None) => {}
                Err(e) => assert!(
                    e == case.want || e == H::Malformed,
                    "{}: prefix {cut} gave {e:?}",
                    case.name
                ),
                Ok(Some(())) => panic!("{}: prefix {cut} accepted", case.name),
            }
        }
    }
}
