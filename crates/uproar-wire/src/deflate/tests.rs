use super::*;

fn server_answer(policy: ServerPolicy, headers: &[&str]) -> Option<String> {
    policy
        .negotiate(headers.iter().map(|h| h.as_bytes()))
        .map(|a| a.response_value())
}

const DEDICATED: ServerPolicy = ServerPolicy {
    no_context_takeover: false,
    server_max_window_bits: 12,
    client_max_window_bits: 12,
};

/// The exact response in each mode, for browsers' offers, every offer Autobahn 13.x makes,
/// window bits 8-15 either side, unknown and duplicate parameters, several offers in one
/// header and across headers.
#[test]
fn negotiation_table() {
    use ServerPolicy as P;
    let shared = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    let table: &[(&[&str], Option<&str>, Option<&str>)] = &[
        // (offer headers, shared answer, dedicated answer)
        // Chromium
        (
            &["permessage-deflate; client_max_window_bits"],
            Some(shared),
            Some("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"),
        ),
        // Firefox
        (
            &["permessage-deflate"],
            Some(shared),
            Some("permessage-deflate; server_max_window_bits=12"),
        ),
        // Autobahn 13.1 / 13.2: no parameters; 13.3-13.7 (offers it makes)
        (
            &["permessage-deflate; client_no_context_takeover; client_max_window_bits"],
            Some(shared),
            Some(
                "permessage-deflate; client_no_context_takeover; server_max_window_bits=12; \
                 client_max_window_bits=12",
            ),
        ),
        (
            &["permessage-deflate; server_max_window_bits=8"],
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=8",
            ),
            Some("permessage-deflate; server_max_window_bits=8"),
        ),
        (
            &["permessage-deflate; server_max_window_bits=15"],
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=15",
            ),
            Some("permessage-deflate; server_max_window_bits=12"),
        ),
        (
            &["permessage-deflate; client_max_window_bits=8"],
            Some(shared),
            // The client already promised 8, under our 12: nothing to ask.
            Some("permessage-deflate; server_max_window_bits=12"),
        ),
        (
            &["permessage-deflate; client_max_window_bits=15"],
            Some(shared),
            Some("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"),
        ),
        (
            &["permessage-deflate; server_no_context_takeover"],
            Some(shared),
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=12"),
        ),
        (
            &[
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=9",
            ],
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=9",
            ),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=9",
            ),
        ),
        // Quoted values are tokens after unquoting.
        (
            &["permessage-deflate; server_max_window_bits=\"10\""],
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=10",
            ),
            Some("permessage-deflate; server_max_window_bits=10"),
        ),
        // Declined offers: unknown, duplicate, out of range, not canonical, value on a flag,
        // no value where one is required. The handshake still succeeds, uncompressed.
        (&["permessage-deflate; foo"], None, None),
        (
            &["permessage-deflate; client_max_window_bits; client_max_window_bits"],
            None,
            None,
        ),
        (
            &["permessage-deflate; server_max_window_bits=7"],
            None,
            None,
        ),
        (
            &["permessage-deflate; server_max_window_bits=16"],
            None,
            None,
        ),
        (
            &["permessage-deflate; server_max_window_bits=08"],
            None,
            None,
        ),
        (&["permessage-deflate; server_max_window_bits"], None, None),
        (
            &["permessage-deflate; server_no_context_takeover=1"],
            None,
            None,
        ),
        (
            &["permessage-deflate; client_max_window_bits=abc"],
            None,
            None,
        ),
        (&["x-webkit-deflate-frame"], None, None),
        (
            &["permessage-deflate; server_max_window_bits=\"1 0\""],
            None,
            None,
        ),
        // Several offers in one header: the first acceptable one wins.
        (
            &[
                "permessage-deflate; foo=1, permessage-deflate; server_max_window_bits=10, permessage-deflate",
            ],
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=10",
            ),
            Some("permessage-deflate; server_max_window_bits=10"),
        ),
        // ... and across headers, other extensions skipped.
        (
            &[
                "x-foo, permessage-deflate; bogus",
                "permessage-deflate; client_max_window_bits=10",
            ],
            Some(shared),
            Some("permessage-deflate; server_max_window_bits=12"),
        ),
        // A malformed header loses its offers, not the next header's.
        (
            &["permessage-deflate; =x", "permessage-deflate"],
            Some(shared),
            Some("permessage-deflate; server_max_window_bits=12"),
        ),
    ];
    for (headers, want_shared, want_dedicated) in table {
        assert_eq!(
            server_answer(P::SHARED, headers).as_deref(),
            *want_shared,
            "shared, offer {headers:?}"
        );
        assert_eq!(
            server_answer(DEDICATED, headers).as_deref(),
            *want_dedicated,
            "dedicated, offer {headers:?}"
        );
    }
}

/// Window bits 8-15 on both sides, valued and valueless: the server never answers a window
/// larger than offered, never announces client_max_window_bits when not offered, and its own
/// compressor's window honours the answer.
#[test]
fn window_bits_every_value_both_sides() {
    for policy in [ServerPolicy::SHARED, DEDICATED] {
        for s in 8..=15u8 {
            for c in 8..=15u8 {
                let h = format!(
                    "permessage-deflate; server_max_window_bits={s}; client_max_window_bits={c}"
                );
                let a = policy.negotiate([h.as_bytes()]).unwrap();
                assert!(a.server_max_window_bits <= s);
                assert!(a.client_max_window_bits <= c);
                let offer = offers([h.as_bytes()])[0].unwrap();
                let resp = a.response_value();
                // The client's own check agrees.
                let seen = client_accepts(&offer, [resp.as_bytes()]).unwrap().unwrap();
                assert_eq!(
                    seen.server_max_window_bits, a.server_max_window_bits,
                    "{resp}"
                );
                assert_eq!(
                    seen.client_max_window_bits, a.client_max_window_bits,
                    "{resp}"
                );
            }
            let h = format!("permessage-deflate; server_max_window_bits={s}");
            let a = policy.negotiate([h.as_bytes()]).unwrap();
            assert!(!a.response_value().contains("client_max_window_bits"));
        }
    }
}

/// The client role: the offer it writes, and responses it must refuse.
#[test]
fn client_refuses_responses_it_did_not_allow() {
    let offer = Offer {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: Some(10),
        client_max_window_bits: ClientBits::Absent,
    };
    assert_eq!(
        client_offer(&offer),
        "permessage-deflate; server_max_window_bits=10"
    );
    let check = |r: &str| client_accepts(&offer, [r.as_bytes()]);
    assert_eq!(
        check("permessage-deflate; server_max_window_bits=11"),
        Err(ResponseError::BadParameter)
    );
    assert_eq!(
        check("permessage-deflate; client_max_window_bits=10"),
        Err(ResponseError::BadParameter)
    );
    assert_eq!(
        check("permessage-deflate; bogus"),
        Err(ResponseError::BadParameter)
    );
    assert_eq!(check("x-other"), Err(ResponseError::NotOffered));
    assert_eq!(
        check("permessage-deflate, permessage-deflate"),
        Err(ResponseError::Malformed)
    );
    assert_eq!(check("permessage-deflate;"), Err(ResponseError::Malformed));
    assert_eq!(
        client_accepts(&offer, []),
        Ok(None),
        "declined: no compression"
    );
    let ok = check("permessage-deflate; server_max_window_bits=9; client_no_context_takeover")
        .unwrap()
        .unwrap();
    assert_eq!(
        (ok.server_max_window_bits, ok.client_max_window_bits),
        (9, 15)
    );
    assert!(ok.client_no_context_takeover && !ok.server_no_context_takeover);
    let nct = Offer {
        server_no_context_takeover: true,
        ..offer
    };
    assert_eq!(
        client_accepts(&nct, [&b"permessage-deflate"[..]]),
        Err(ResponseError::BadParameter),
        "asked for server_no_context_takeover, not granted"
    );
}

fn sample(n: usize) -> Vec<u8> {
    // JSON-like text with varying fields: compressible, not one repeated string.
    let mut out = Vec::new();
    let mut x = 12345u64;
    while out.len() < n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(
            format!(
                "{{\"sym\":\"S{}\",\"px\":{}.{:02},\"qty\":{}}},",
                x % 50,
                x % 1000,
                x % 100,
                x % 7
            )
            .as_bytes(),
        );
    }
    out.truncate(n);
    out
}

fn inflate_all(
    inf: &mut Inflater,
    compressed: &[u8],
    pieces: usize,
    limit: usize,
) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::new();
    let step = compressed.len().div_ceil(pieces.max(1)).max(1);
    for chunk in compressed.chunks(step) {
        inf.inflate(chunk, &mut out, limit)?;
    }
    inf.finish(&mut out, limit)?;
    Ok(out)
}

/// Round trips at every window, with and without context takeover, across many messages, the
/// compressed data fed in pieces of every size.
#[test]
fn round_trips_across_windows_and_pieces() {
    for bits in 8..=15u8 {
        for nct in [false, true] {
            let mut d = Deflater::new(bits, 8, 6, nct);
            let mut i = Inflater::new(nct);
            for (k, n) in [0usize, 1, 20, 1000, 70_000].into_iter().enumerate() {
                let msg = sample(n + k);
                let mut c = Vec::new();
                d.compress(&msg, &mut c);
                assert!(!c.ends_with(&TAIL) || c.len() < 4);
                for pieces in [1, 3, 17] {
                    if pieces > 1 && !nct {
                        continue; // with takeover each message inflates once, in order
                    }
                    let got = inflate_all(&mut i, &c, pieces, 1 << 20).unwrap();
                    assert_eq!(got, msg, "bits {bits} nct {nct} len {n}");
                }
            }
        }
    }
}

/// What we send for `server_max_window_bits=8` (compressed with 9) inflates with an 8-bit
/// window, even when the data repeats at distances between 256 and 512.
#[test]
fn window_8_output_inflates_with_an_8_bit_window() {
    let mut msg = Vec::new();
    for i in 0..50u32 {
        let block: Vec<u8> = (0..300u32).map(|j| ((j * 7 + i) % 251) as u8).collect();
        msg.extend_from_slice(&block);
        msg.extend_from_slice(&block[..100]);
    }
    // With context takeover: three messages through one compressor and one inflater whose
    // window is 256 bytes.
    let mut d = Deflater::new(8, 8, 9, false);
    let mut z = zlib_rs::Inflate::new(false, 8);
    for _ in 0..3 {
        let mut c = Vec::new();
        d.compress(&msg, &mut c);
        c.extend_from_slice(&TAIL);
        let mut out = vec![0u8; msg.len() + 16];
        let before = z.total_out();
        let r = z.decompress(&c, &mut out, zlib_rs::InflateFlush::SyncFlush);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(&out[..(z.total_out() - before) as usize], &msg[..]);
    }
}

/// A decompression bomb stops at the limit: 16 MiB of zeros (about 16 KiB compressed) against
/// a 1 MiB limit never makes the output grow past the limit.
#[test]
fn a_bomb_stops_at_the_limit() {
    let zeros = vec![0u8; 16 << 20];
    let mut c = Vec::new();
    Deflater::new(15, 8, 9, true).compress(&zeros, &mut c);
    assert!(c.len() < 40 << 10, "{}", c.len());
    let mut i = Inflater::new(true);
    let mut out = Vec::new();
    let limit = 1 << 20;
    let mut err = None;
    for chunk in c.chunks(1000) {
        if let Err(e) = i.inflate(chunk, &mut out, limit) {
            err = Some(e);
            break;
        }
        assert!(out.len() <= limit);
    }
    assert_eq!(err, Some(InflateError::TooBig));
    assert!(out.len() <= limit + 1 && out.capacity() <= 2 * limit + (16 << 10));
}

/// Corrupt data and a truncated stream.
#[test]
fn corrupt_and_truncated_data() {
    let mut i = Inflater::new(true);
    let mut out = Vec::new();
    // BTYPE=11 (reserved) in the first block header.
    assert_eq!(
        i.inflate(&[0xff, 0xff, 0xff], &mut out, 1 << 20),
        Err(InflateError::Corrupt)
    );
    i.reset();
    let mut c = Vec::new();
    Deflater::new(15, 8, 6, true).compress(&sample(5000), &mut c);
    let mut out = Vec::new();
    // Truncated: the message ends early. Raw deflate has no checksum, so the tail we append
    // may decode as more symbols: the result is an error or some bounded output, never a
    // hang or a panic, and the inflater serves the next message either way.
    let r = i
        .inflate(&c[..c.len() / 2], &mut out, 1 << 20)
        .and_then(|()| i.finish(&mut out, 1 << 20));
    match r {
        Ok(()) => assert!(out.len() <= 1 << 20),
        Err(e) => assert_eq!(e, InflateError::Corrupt),
    }
    i.reset();
    assert_eq!(inflate_all(&mut i, &c, 1, 1 << 20).unwrap(), sample(5000));
}

/// A message ending in a final (BFINAL=1) block, as some senders make: accepted, and the next
/// message inflates from a fresh stream.
#[test]
fn a_final_block_inside_a_message_is_accepted() {
    let mut i = Inflater::new(false);
    for msg in [b"first message".as_slice(), b"second one"] {
        let mut z = zlib_rs::Deflate::new(6, false, 15);
        let mut c = vec![0u8; 256];
        z.compress(msg, &mut c, zlib_rs::DeflateFlush::Finish)
            .unwrap();
        c.truncate(z.total_out() as usize);
        assert_eq!(inflate_all(&mut i, &c, 2, 1 << 20).unwrap(), msg);
    }
}
