//! Message payloads. Every message carries who sent it, its sequence number and when it was
//! scheduled, then filler derived from the sequence number, so every byte can be checked. All
//! bytes are below 0x80: valid UTF-8, so the same payload works in text and binary frames.
//!
//! Layout: source (2 bytes of 7 bits), sequence (7 bytes, 49 bits), scheduled time in ns
//! since the run's base instant (7 bytes, 49 bits: 6.5 days), filler.

/// Bytes of stamp at the start of every payload; also the smallest message size.
pub const STAMP_LEN: usize = 16;

/// Who sent a message, which one it is, and when it was scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Sender id (a publisher's or connection's index), below 2^14.
    pub source: u16,
    /// Sequence number per sender, from 0.
    pub seq: u64,
    /// Scheduled send time, ns since the run's base instant.
    pub sent_ns: u64,
}

/// Why a received payload is not what was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corrupt {
    /// Shorter than a stamp, or a stamp byte with the high bit set.
    BadStamp,
    /// Not the size that was sent.
    WrongSize,
    /// A filler byte differs.
    WrongBytes,
}

fn put7(out: &mut [u8], mut v: u64) {
    for b in out {
        *b = (v & 0x7F) as u8;
        v >>= 7;
    }
}

fn get7(bytes: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        if *b >= 0x80 {
            return None;
        }
        v |= u64::from(*b) << (7 * i);
    }
    Some(v)
}

/// The 8-byte filler pattern for a sequence number (bytes below 0x80).
fn filler(seq: u64, source: u16) -> u64 {
    (seq ^ (u64::from(source) << 50)).wrapping_mul(0x9E37_79B9_7F4A_7C15) & 0x7F7F_7F7F_7F7F_7F7F
}

/// JSON-like text after the stamp, with fields that change from message to message (market
/// ticks), deterministic from the stamp: realistic for compression, checkable byte for byte.
fn json_filler(out: &mut [u8], seq: u64, source: u16) {
    let mut x = (seq ^ (u64::from(source) << 50)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut pos = 0;
    let mut line = Vec::with_capacity(96);
    while pos < out.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        line.clear();
        let _ = std::io::Write::write_fmt(
            &mut line,
            format_args!(
                "{{\"sym\":\"{}\",\"bid\":{}.{:02},\"ask\":{}.{:02},\"qty\":{},\"ts\":{}}},",
                ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META"][(x % 6) as usize],
                100 + x % 400,
                x % 100,
                101 + x % 400,
                (x >> 4) % 100,
                (x >> 8) % 100,
                1_700_000_000_000u64 + (x >> 20) % 1_000_000
            ),
        );
        let n = line.len().min(out.len() - pos);
        out[pos..pos + n].copy_from_slice(&line[..n]);
        pos += n;
    }
}

/// Append a payload of `size` bytes (at least [`STAMP_LEN`]) for `stamp` to `out`, with
/// JSON-like text as filler (see [`json_filler`]).
pub fn write_json(out: &mut Vec<u8>, size: usize, stamp: Stamp) {
    let start = out.len();
    write(out, size, stamp);
    json_filler(&mut out[start + STAMP_LEN..], stamp.seq, stamp.source);
}

/// [`verify`] for a payload made by [`write_json`].
pub fn verify_json(p: &[u8], size: usize) -> Result<Stamp, Corrupt> {
    let s = stamp(p)?;
    if p.len() != size {
        return Err(Corrupt::WrongSize);
    }
    let mut want = vec![0u8; size - STAMP_LEN];
    json_filler(&mut want, s.seq, s.source);
    if p[STAMP_LEN..] != want[..] {
        return Err(Corrupt::WrongBytes);
    }
    Ok(s)
}

/// Append a payload of `size` bytes (at least [`STAMP_LEN`]) for `stamp` to `out`.
pub fn write(out: &mut Vec<u8>, size: usize, stamp: Stamp) {
    debug_assert!(size >= STAMP_LEN);
    let start = out.len();
    out.resize(start + size, 0);
    let p = &mut out[start..];
    put7(&mut p[0..2], u64::from(stamp.source));
    put7(&mut p[2..9], stamp.seq);
    put7(&mut p[9..16], stamp.sent_ns);
    let pattern = filler(stamp.seq, stamp.source).to_le_bytes();
    let mut words = p[STAMP_LEN..].chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&pattern);
    }
    let rest = words.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&pattern[..n]);
}

/// Read the stamp of a payload without checking the rest.
pub fn stamp(p: &[u8]) -> Result<Stamp, Corrupt> {
    if p.len() < STAMP_LEN {
        return Err(Corrupt::BadStamp);
    }
    let source = get7(&p[0..2]).ok_or(Corrupt::BadStamp)? as u16;
    let seq = get7(&p[2..9]).ok_or(Corrupt::BadStamp)?;
    let sent_ns = get7(&p[9..16]).ok_or(Corrupt::BadStamp)?;
    Ok(Stamp {
        source,
        seq,
        sent_ns,
    })
}

/// Check a whole payload: its stamp, its size and every filler byte.
pub fn verify(p: &[u8], size: usize) -> Result<Stamp, Corrupt> {
    let s = stamp(p)?;
    if p.len() != size {
        return Err(Corrupt::WrongSize);
    }
    let pattern = filler(s.seq, s.source);
    let mut words = p[STAMP_LEN..].chunks_exact(8);
    for w in &mut words {
        if u64::from_le_bytes(w.try_into().expect("8 bytes")) != pattern {
            return Err(Corrupt::WrongBytes);
        }
    }
    let rest = words.remainder();
    if rest != &pattern.to_le_bytes()[..rest.len()] {
        return Err(Corrupt::WrongBytes);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flipped_byte_is_caught() {
        for size in [16, 17, 20, 24, 100, 16 << 10] {
            let st = Stamp {
                source: 1234,
                seq: (1 << 48) + 5,
                sent_ns: 123_456_789_012,
            };
            let mut v = Vec::new();
            write(&mut v, size, st);
            assert_eq!(v.len(), size);
            assert!(v.iter().all(|b| *b < 0x80), "text-safe");
            assert_eq!(verify(&v, size), Ok(st));
            assert_eq!(verify(&v, size + 1), Err(Corrupt::WrongSize));
            for i in (0..size).step_by(size / 16 + 1) {
                let mut bad = v.clone();
                bad[i] ^= 0x01;
                let got = verify(&bad, size);
                if i < STAMP_LEN {
                    // A changed stamp names another message, whose filler then differs.
                    assert!(got.is_err() || got.unwrap() != st, "byte {i}");
                } else {
                    assert_eq!(got, Err(Corrupt::WrongBytes), "byte {i}");
                }
            }
        }
    }

    #[test]
    fn json_payloads_round_trip_are_text_and_vary() {
        for size in [16, 17, 100, 1024, 16 << 10] {
            let st = Stamp {
                source: 3,
                seq: 77,
                sent_ns: 42,
            };
            let mut v = Vec::new();
            write_json(&mut v, size, st);
            assert_eq!(v.len(), size);
            assert!(std::str::from_utf8(&v).is_ok());
            assert_eq!(verify_json(&v, size), Ok(st));
            if size > STAMP_LEN {
                let mut bad = v.clone();
                bad[size - 1] ^= 1;
                assert_eq!(verify_json(&bad, size), Err(Corrupt::WrongBytes));
            }
            if size >= 100 {
                let mut other = Vec::new();
                write_json(&mut other, size, Stamp { seq: 78, ..st });
                assert_ne!(
                    v[STAMP_LEN..],
                    other[STAMP_LEN..],
                    "fields change per message"
                );
            }
        }
    }
}
