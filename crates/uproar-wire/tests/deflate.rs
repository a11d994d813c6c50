//! permessage-deflate in the connection: RSV1 rules (RFC 7692 section 6), compressed messages
//! delivered whole at every split point, and inflated messages checked.

mod common;

use uproar_wire::conn::{Config, Connection, DataKind, Event};
use uproar_wire::deflate::{Deflater, Inflater};
use uproar_wire::error::ProtocolError;
use uproar_wire::frame::{FrameHead, OpCode};

const KEY: [u8; 4] = [1, 2, 3, 4];

/// A masked client frame with the given RSV bits.
fn rframe(fin: bool, rsv: u8, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = FrameHead::with_rsv(fin, rsv, op, payload.len() as u64, Some(KEY))
        .as_bytes()
        .to_vec();
    let start = out.len();
    out.extend_from_slice(payload);
    uproar_wire::mask::unmask(&mut out[start..], KEY, 0);
    out
}

fn server(deflate: bool) -> Connection {
    let mut c = Connection::server(Config::default());
    if deflate {
        c.enable_deflate(15);
    }
    c
}

/// What a run produced: compressed payloads, other messages, the first error.
#[derive(Debug, Default)]
struct Seen {
    compressed: Vec<(DataKind, Vec<u8>)>,
    plain: Vec<Vec<u8>>,
    err: Option<ProtocolError>,
}

/// Feed `input` in the given pieces, each in its own buffer.
fn run(c: &mut Connection, pieces: &[&[u8]]) -> Seen {
    let mut seen = Seen::default();
    for p in pieces {
        let mut buf = p.to_vec();
        let mut pos = 0;
        loop {
            match c.handle_read(&mut buf, &mut pos) {
                Ok(Some(Event::Compressed { kind, data })) => {
                    seen.compressed.push((kind, data.to_vec()))
                }
                Ok(Some(Event::Message { data, .. })) => seen.plain.push(data.to_vec()),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    seen.err = Some(e);
                    return seen;
                }
            }
        }
    }
    seen
}

fn close_code(c: &mut Connection) -> Option<u16> {
    let mut code = None;
    while let Some(f) = c.poll_transmit() {
        if f.opcode() == OpCode::Close {
            let b = f.as_bytes();
            code = Some(u16::from_be_bytes([b[2], b[3]]));
        }
    }
    code
}

fn compress(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Deflater::new(15, 8, 6, true).compress(msg, &mut out);
    out
}

#[test]
fn rsv1_on_a_control_frame_a_continuation_or_without_negotiation_is_1002() {
    let cases: Vec<(bool, Vec<u8>, ProtocolError)> = vec![
        (
            true,
            rframe(true, 0b100, OpCode::Ping, b"p"),
            ProtocolError::CompressedBitMisplaced,
        ),
        (
            true,
            rframe(true, 0b100, OpCode::Close, &1000u16.to_be_bytes()),
            ProtocolError::CompressedBitMisplaced,
        ),
        (
            true,
            [
                rframe(false, 0b100, OpCode::Text, b"a"),
                rframe(true, 0b100, OpCode::Continuation, b"b"),
            ]
            .concat(),
            ProtocolError::CompressedBitMisplaced,
        ),
        (
            false,
            rframe(true, 0b100, OpCode::Text, &compress(b"hi")),
            ProtocolError::ReservedBits,
        ),
        (
            true,
            rframe(true, 0b010, OpCode::Text, b"x"),
            ProtocolError::ReservedBits,
        ),
    ];
    for (deflate, input, want) in cases {
        let mut c = server(deflate);
        assert_eq!(run(&mut c, &[&input]).err, Some(want));
        assert_eq!(close_code(&mut c), Some(1002));
    }
}

/// A compressed message fragmented over three frames, with a ping between, fed in two pieces
/// split at every byte: one compressed event with every compressed byte, which inflates to
/// the message; uncompressed messages still pass as before.
#[test]
fn compressed_messages_whole_at_every_split_point() {
    let msg = b"hello hello hello compressed world".repeat(20);
    let z = compress(&msg);
    let third = z.len() / 3;
    let mut input = rframe(false, 0b100, OpCode::Text, &z[..third]);
    input.extend(rframe(true, 0, OpCode::Ping, b"p"));
    input.extend(rframe(false, 0, OpCode::Continuation, &z[third..2 * third]));
    input.extend(rframe(true, 0, OpCode::Continuation, &z[2 * third..]));
    input.extend(rframe(true, 0, OpCode::Text, b"plain"));
    for split in 0..=input.len() {
        let mut c = server(true);
        let Seen {
            compressed: comp,
            plain,
            err,
        } = run(&mut c, &[&input[..split], &input[split..]]);
        assert_eq!(err, None, "split {split}");
        assert_eq!(comp.len(), 1, "split {split}");
        assert_eq!(comp[0].0, DataKind::Text);
        assert_eq!(comp[0].1, z, "split {split}");
        assert_eq!(plain, vec![b"plain".to_vec()]);
        let mut out = Vec::new();
        let mut inf = Inflater::new(true);
        inf.inflate(&comp[0].1, &mut out, 1 << 20).unwrap();
        inf.finish(&mut out, 1 << 20).unwrap();
        assert_eq!(out, msg);
        assert_eq!(c.check_inflated(DataKind::Text, Ok(&out)), Ok(()));
    }
}

/// An inflated text that is not UTF-8 closes with 1007; inflating errors close with theirs.
#[test]
fn inflated_messages_are_checked() {
    for (kind, r, code) in [
        (DataKind::Text, Ok(&[0xffu8, 0xfe][..]), 1007u16),
        (DataKind::Text, Err(ProtocolError::BadCompressedData), 1007),
        (DataKind::Binary, Err(ProtocolError::MessageTooLarge), 1009),
    ] {
        let mut c = server(true);
        assert!(c.check_inflated(kind, r).is_err());
        assert_eq!(close_code(&mut c), Some(code));
        assert!(c.check_inflated(DataKind::Binary, Ok(b"x")).is_ok());
    }
    let mut c = server(true);
    assert_eq!(
        c.check_inflated(DataKind::Binary, Ok(&[0xff])),
        Ok(()),
        "binary is not checked"
    );
}

/// The compressed header: RSV1 on the first frame of a message only.
#[test]
fn compressed_frames_we_send_carry_rsv1_on_the_first_frame_only() {
    let mut c = server(true);
    let (first, _) = c.compressed_data_head(OpCode::Text, false, 10).unwrap();
    assert_eq!(first.as_bytes()[0], 0x40 | 0x01);
    let (cont, _) = c
        .compressed_data_head(OpCode::Continuation, true, 10)
        .unwrap();
    assert_eq!(cont.as_bytes()[0], 0x80);
}
