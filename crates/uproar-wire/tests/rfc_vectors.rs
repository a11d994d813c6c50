//! RFC 6455 §5.7 examples and the §1.3 accept vector, fed whole, at every 2-way split point
//! and in random n-way splits, in both roles and both delivery modes.

mod common;

use common::*;
use uproar_wire::conn::{Config, Connection, DataKind, Delivery};
use uproar_wire::handshake::accept_key;

fn text(s: &str) -> Ev {
    Ev::Msg(DataKind::Text, s.as_bytes().to_vec())
}

/// The §5.7 examples: (name, bytes, events a receiver sees).
fn server_received() -> Vec<(&'static str, Vec<u8>, Vec<Ev>)> {
    let bin256: Vec<u8> = (0..256u32).map(|i| i as u8).collect();
    let bin64k: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
    vec![
        (
            "masked Hello",
            vec![
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
            ],
            vec![text("Hello")],
        ),
        (
            "masked pong Hello",
            vec![
                0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
            ],
            vec![Ev::Pong(b"Hello".to_vec())],
        ),
        (
            "fragmented Hel+lo, masked",
            [
                cframe(false, uproar_wire::OpCode::Text, b"Hel"),
                cframe(true, uproar_wire::OpCode::Continuation, b"lo"),
            ]
            .concat(),
            vec![text("Hello")],
        ),
        (
            "masked ping Hello",
            cframe(true, uproar_wire::OpCode::Ping, b"Hello"),
            vec![Ev::Ping(b"Hello".to_vec())],
        ),
        (
            "256 B binary, masked",
            cframe(true, uproar_wire::OpCode::Binary, &bin256),
            vec![Ev::Msg(DataKind::Binary, bin256.clone())],
        ),
        (
            "64 KiB binary, masked",
            cframe(true, uproar_wire::OpCode::Binary, &bin64k),
            vec![Ev::Msg(DataKind::Binary, bin64k.clone())],
        ),
    ]
}

fn client_received() -> Vec<(&'static str, Vec<u8>, Vec<Ev>)> {
    let bin256: Vec<u8> = (0..256u32).map(|i| i as u8).collect();
    let mut bin256_frame = vec![0x82, 0x7E, 0x01, 0x00];
    bin256_frame.extend_from_slice(&bin256);
    let bin64k: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
    let mut bin64k_frame = vec![0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00];
    bin64k_frame.extend_from_slice(&bin64k);
    vec![
        (
            "unmasked Hello",
            vec![0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f],
            vec![text("Hello")],
        ),
        (
            "fragmented unmasked Hel+lo",
            vec![0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f],
            vec![text("Hello")],
        ),
        (
            "unmasked ping Hello",
            vec![0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f],
            vec![Ev::Ping(b"Hello".to_vec())],
        ),
        (
            "256 B binary in one unmasked frame",
            bin256_frame,
            vec![Ev::Msg(DataKind::Binary, bin256)],
        ),
        (
            "64 KiB binary in one unmasked frame",
            bin64k_frame,
            vec![Ev::Msg(DataKind::Binary, bin64k)],
        ),
    ]
}

fn new_conn(server: bool, delivery: Delivery) -> Connection {
    let config = Config {
        delivery,
        ..Config::default()
    };
    if server {
        Connection::server(config)
    } else {
        Connection::client(config, 42)
    }
}

fn check(
    server: bool,
    name: &str,
    bytes: &[u8],
    want: &[Ev],
    splits: &mut dyn Iterator<Item = Vec<&[u8]>>,
) -> usize {
    let mut n = 0;
    for pieces in splits {
        for delivery in [Delivery::Whole, Delivery::Fragments] {
            let mut conn = new_conn(server, delivery);
            let run = feed(&mut conn, &pieces);
            let got = normalize(run.events);
            assert_eq!(
                got,
                want,
                "{name}: pieces {:?}, {delivery:?}",
                pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
            );
            n += 1;
        }
    }
    assert!(n > 0);
    let _ = bytes;
    n
}

#[test]
fn section_5_7_examples_at_every_two_way_split() {
    for (server, cases) in [(true, server_received()), (false, client_received())] {
        for (name, bytes, want) in &cases {
            let n = check(server, name, bytes, want, &mut two_way_splits(bytes));
            assert_eq!(n, 2 * (bytes.len() + 1));
        }
    }
}

#[test]
fn section_5_7_examples_in_random_splits() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for (server, cases) in [(true, server_received()), (false, client_received())] {
        for (name, bytes, want) in &cases {
            for max_piece in [1, 2, 3, 5, 13, 100, 4096] {
                let rounds = if bytes.len() > 1000 && max_piece < 100 {
                    2
                } else {
                    20
                };
                let splits: Vec<Vec<&[u8]>> = (0..rounds)
                    .map(|_| random_split(bytes, &mut rng, max_piece))
                    .collect();
                check(server, name, bytes, want, &mut splits.into_iter());
            }
        }
    }
}

/// All the examples back to back in one stream, split at every point: state carries across
/// frames (the masking phase, partial headers, a message in progress).
#[test]
fn concatenated_stream_at_every_split() {
    for (server, cases) in [(true, server_received()), (false, client_received())] {
        let small: Vec<_> = cases.iter().filter(|c| c.1.len() < 1000).collect();
        let stream: Vec<u8> = small.iter().flat_map(|c| c.1.clone()).collect();
        let want: Vec<Ev> = small.iter().flat_map(|c| c.2.clone()).collect();
        check(
            server,
            "stream",
            &stream,
            &want,
            &mut two_way_splits(&stream),
        );
        let mut rng = Rng(7);
        let splits: Vec<_> = (0..200)
            .map(|_| random_split(&stream, &mut rng, 7))
            .collect();
        check(server, "stream", &stream, &want, &mut splits.into_iter());
    }
}

#[test]
fn section_1_3_accept_vector() {
    assert_eq!(
        &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}
