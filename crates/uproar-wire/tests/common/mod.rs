//! Test helpers: an owned copy of events, feeding input in pieces, and frame builders.
#![allow(dead_code, unreachable_pub)]

use uproar_wire::conn::{Config, Connection, DataKind, Event};
use uproar_wire::error::ProtocolError;
use uproar_wire::frame::Role;
use uproar_wire::frame::{OpCode, encode_frame};

/// An owned event, comparable across runs. Fragments are merged into whole messages by
/// [`normalize`], so runs that split input differently can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    Msg(DataKind, Vec<u8>),
    Frag {
        kind: DataKind,
        data: Vec<u8>,
        first: bool,
        last: bool,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(u16, String),
    Err(ProtocolError),
}

fn own(e: Event<'_>) -> Ev {
    match e {
        Event::Message { kind, data } => Ev::Msg(kind, data.to_vec()),
        Event::Fragment {
            kind,
            data,
            first,
            last,
        } => Ev::Frag {
            kind,
            data: data.to_vec(),
            first,
            last,
        },
        Event::Ping(p) => Ev::Ping(p.to_vec()),
        Event::Pong(p) => Ev::Pong(p.to_vec()),
        Event::Compressed { .. } => unreachable!("permessage-deflate is not enabled here"),
        Event::Close { code, reason } => Ev::Close(code.0, reason.to_owned()),
    }
}

/// What a run produced: events, and every control frame the connection asked to send.
#[derive(Debug, Default)]
pub struct Run {
    pub events: Vec<Ev>,
    pub sent: Vec<Vec<u8>>,
}

/// Feed `pieces` one after another, each in its own buffer (as receive buffers arrive), and
/// collect events and output. Stops at the first error.
pub fn feed(conn: &mut Connection, pieces: &[&[u8]]) -> Run {
    let mut run = Run::default();
    'outer: for piece in pieces {
        let mut buf = piece.to_vec();
        let mut pos = 0;
        loop {
            match conn.handle_read(&mut buf, &mut pos) {
                Ok(Some(e)) => run.events.push(own(e)),
                Ok(None) => break,
                Err(e) => {
                    run.events.push(Ev::Err(e));
                    while let Some(f) = conn.poll_transmit() {
                        run.sent.push(f.as_bytes().to_vec());
                    }
                    break 'outer;
                }
            }
        }
        assert_eq!(pos, buf.len(), "handle_read must take in the whole buffer");
        while let Some(f) = conn.poll_transmit() {
            run.sent.push(f.as_bytes().to_vec());
        }
    }
    run
}

/// Merge consecutive fragments of one message into `Ev::Msg`, checking their flags.
pub fn normalize(events: Vec<Ev>) -> Vec<Ev> {
    let mut out = Vec::new();
    let mut cur: Option<(DataKind, Vec<u8>)> = None;
    for e in events {
        match e {
            Ev::Frag {
                kind,
                data,
                first,
                last,
            } => {
                assert_eq!(
                    first,
                    cur.is_none(),
                    "first flag must mark a message's first piece"
                );
                let c = cur.get_or_insert_with(|| (kind, Vec::new()));
                assert_eq!(c.0, kind);
                c.1.extend_from_slice(&data);
                if last {
                    let (k, d) = cur.take().unwrap();
                    out.push(Ev::Msg(k, d));
                }
            }
            other => out.push(other),
        }
    }
    assert!(cur.is_none(), "message left open");
    out
}

/// Every way to cut `bytes` in two.
pub fn two_way_splits(bytes: &[u8]) -> impl Iterator<Item = Vec<&[u8]>> {
    (0..=bytes.len()).map(move |i| vec![&bytes[..i], &bytes[i..]])
}

/// A small deterministic PRNG for random splits.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Cut `bytes` into random pieces (empty pieces included).
pub fn random_split<'a>(bytes: &'a [u8], rng: &mut Rng, max_piece: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let n = (rng.below(max_piece as u64 + 1) as usize).min(bytes.len() - pos);
        out.push(&bytes[pos..pos + n]);
        pos += n;
    }
    out
}

/// A complete frame; masked with `mask` if given.
pub fn frame(fin: bool, op: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(&mut v, fin, op, payload, mask);
    v
}

pub const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A masked frame as a client sends it.
pub fn cframe(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    frame(fin, op, payload, Some(KEY))
}

/// A close frame payload: code and reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut v = code.to_be_bytes().to_vec();
    v.extend_from_slice(reason);
    v
}

/// A connection of the opposite role, to decode what `conn` sends.
pub fn peer_of(conn: &Connection) -> Connection {
    match conn.role() {
        Role::Server => Connection::client(Config::default(), 3),
        Role::Client => Connection::server(Config::default()),
    }
}
