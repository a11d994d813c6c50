//! The connection over arbitrary bytes cut into arbitrary chunks (uWS-style: a chunk-size
//! prefix drives the cuts). Oracle: the same bytes in one buffer give the same messages and the
//! same error; plus invariants (text is UTF-8, limits hold, nothing after an error or a close).
#![no_main]

use libfuzzer_sys::fuzz_target;
use uproar_wire::conn::{Config, Connection, DataKind, Delivery, Event};
use uproar_wire::error::ProtocolError;

#[derive(Debug, PartialEq)]
enum Ev {
    Msg(DataKind, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(u16, String),
}

struct Out {
    events: Vec<Ev>,
    error: Option<ProtocolError>,
    sent: Vec<Vec<u8>>,
}

fn run(config: &Config, server: bool, pieces: &[&[u8]]) -> Out {
    let mut conn = if server { Connection::server(config.clone()) } else { Connection::client(config.clone(), 7) };
    let mut out = Out { events: Vec::new(), error: None, sent: Vec::new() };
    let mut partial: Option<(DataKind, Vec<u8>)> = None;
    'outer: for piece in pieces {
        let mut buf = piece.to_vec();
        let len = buf.len();
        let mut pos = 0;
        loop {
            let ev = match conn.handle_read(&mut buf, &mut pos) {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(e);
                    assert!(!conn.can_send());
                    break 'outer;
                }
            };
            match ev {
                Event::Message { kind, data } => {
                    assert!(partial.is_none());
                    assert!(data.len() as u64 <= config.max_message_size);
                    if kind == DataKind::Text {
                        assert!(std::str::from_utf8(data).is_ok(), "text message must be UTF-8");
                    }
                    out.events.push(Ev::Msg(kind, data.to_vec()));
                }
                Event::Fragment { kind, data, first, last } => {
                    assert_eq!(first, partial.is_none());
                    let p = partial.get_or_insert_with(|| (kind, Vec::new()));
                    assert_eq!(p.0, kind);
                    p.1.extend_from_slice(data);
                    assert!(p.1.len() as u64 <= config.max_message_size);
                    if last {
                        let (k, d) = partial.take().unwrap();
                        if k == DataKind::Text {
                            assert!(std::str::from_utf8(&d).is_ok(), "text message must be UTF-8");
                        }
                        out.events.push(Ev::Msg(k, d));
                    }
                }
                Event::Ping(p) => out.events.push(Ev::Ping(p.to_vec())),
                Event::Pong(p) => out.events.push(Ev::Pong(p.to_vec())),
                Event::Compressed { .. } => unreachable!("permessage-deflate is not enabled"),
                Event::Close { code, reason } => {
                    assert!(code.is_valid_received() || code.0 == 1005);
                    out.events.push(Ev::Close(code.0, reason.to_owned()))
                }
            }
        }
        assert_eq!(pos, len);
    }
    while let Some(f) = conn.poll_transmit() {
        out.sent.push(f.as_bytes().to_vec());
    }
    // A close frame, if any, is the last thing sent.
    if let Some(i) = out.sent.iter().position(|f| f[0] & 0xF == 0x8) {
        assert_eq!(i, out.sent.len() - 1);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [flags, cut_seed, rest @ ..] = data else { return };
    let server = flags & 1 == 0;
    let delivery = if flags & 2 == 0 { Delivery::Whole } else { Delivery::Fragments };
    let config = Config {
        max_frame_size: if flags & 4 == 0 { 1 << 20 } else { 300 },
        max_message_size: if flags & 8 == 0 { 1 << 20 } else { 500 },
        delivery,
        ..Config::default()
    };
    // Chunk sizes from a tiny PRNG seeded by the input, 0..=(flags>>4)*4+1 bytes each.
    let max_piece = usize::from(flags >> 4) * 4 + 1;
    let mut state = u32::from(*cut_seed) | 0x100;
    let mut pieces = Vec::new();
    let mut pos = 0;
    while pos < rest.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % (max_piece + 1)).min(rest.len() - pos);
        pieces.push(&rest[pos..pos + n]);
        pos += n;
    }
    let chunked = run(&config, server, &pieces);
    let whole = run(&config, server, &[rest]);
    assert_eq!(chunked.error, whole.error);
    assert_eq!(chunked.events, whole.events);
    if let Some(e) = whole.error {
        // The last frame out is a close carrying the error's code (unless a close was sent).
        let last = whole.sent.last().expect("a failed connection sends a close");
        assert_eq!(last[0], 0x88);
        let _ = e;
    }
});
