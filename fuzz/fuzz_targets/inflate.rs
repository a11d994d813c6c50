//! The permessage-deflate inflate path with random chunking: random compressed data, and real
//! compressed messages damaged at random, fed to the connection (RSV1 frames, fragmented and
//! split across buffers at input-chosen points) and inflated under a limit. Asserts: no panic;
//! output never past the limit (+1 byte of detection); an undamaged message always inflates
//! back to itself whatever the chunking; the connection's events match the frames sent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use uproar_wire::conn::{Config, Connection, Event};
use uproar_wire::deflate::{Deflater, Inflater};
use uproar_wire::frame::{FrameHead, OpCode};

fn frame(fin: bool, rsv: u8, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let key = [3, 1, 4, 1];
    let mut out = FrameHead::with_rsv(fin, rsv, op, payload.len() as u64, Some(key))
        .as_bytes()
        .to_vec();
    let start = out.len();
    out.extend_from_slice(payload);
    uproar_wire::mask::unmask(&mut out[start..], key, 0);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let limit = 1 + usize::from(ctl) * 97;
    // Half the inputs: compress the rest (so it is valid), then maybe damage one byte.
    let damaged = ctl & 1 == 1;
    let original = rest.to_vec();
    let compressed = if ctl & 2 == 2 {
        let mut c = Vec::new();
        Deflater::new(9 + (ctl >> 4) % 7, 8, 6, true).compress(&original, &mut c);
        if damaged && !c.is_empty() {
            let i = usize::from(ctl) % c.len();
            c[i] ^= 0x5a;
        }
        c
    } else {
        original.clone()
    };
    // Inflated in pieces of input-chosen size.
    let step = 1 + usize::from(ctl >> 2) % 64;
    let mut inf = Inflater::new(true);
    let mut out = Vec::new();
    let mut r = Ok(());
    for chunk in compressed.chunks(step) {
        r = inf.inflate(chunk, &mut out, limit);
        assert!(out.len() <= limit + 1);
        if r.is_err() {
            break;
        }
    }
    if r.is_ok() {
        r = inf.finish(&mut out, limit);
    }
    assert!(out.len() <= limit + 1);
    if ctl & 2 == 2 && !damaged {
        if original.len() <= limit {
            assert_eq!(r, Ok(()));
            assert_eq!(out, original, "a whole message inflates back to itself");
        } else {
            assert!(r.is_err(), "past the limit");
        }
    }
    // Through the connection: the compressed payload in three frames (RSV1 on the first),
    // the bytes cut into buffers of `step` bytes.
    let third = compressed.len() / 3;
    let mut wire = frame(false, 0b100, OpCode::Binary, &compressed[..third]);
    wire.extend(frame(false, 0, OpCode::Continuation, &compressed[third..2 * third]));
    wire.extend(frame(true, 0, OpCode::Continuation, &compressed[2 * third..]));
    let mut conn = Connection::server(Config::default());
    conn.enable_deflate(15);
    let mut got = Vec::new();
    for piece in wire.chunks(step) {
        let mut buf = piece.to_vec();
        let mut pos = 0;
        while let Ok(Some(ev)) = conn.handle_read(&mut buf, &mut pos) {
            if let Event::Compressed { data, .. } = ev {
                got.push(data.to_vec());
            }
        }
    }
    assert_eq!(got, vec![compressed]);
});
