//! Incremental UTF-8 validation for text messages that arrive in pieces.

use crate::error::ProtocolError;

/// Validates a text message fed in pieces split anywhere, even inside a code point.
///
/// Each piece is validated with `simdutf8`'s fast API up to its last complete code point; an
/// incomplete trailing code point (at most 3 bytes) is checked to be a valid prefix and carried
/// into the next piece. An invalid byte fails the piece it arrives in, never later.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    partial: [u8; 4],
    len: u8,
}

/// Length of the sequence a lead byte starts, or 0 for a byte that cannot start one.
#[inline]
fn seq_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7F => 1,
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

/// Below this length a piece is first checked for ASCII 8 bytes at a time (simdutf8's SIMD
/// path starts at 64 bytes).
const SHORT: usize = 64;

/// Whether every byte of `data` is ASCII: the bytes ORed together 8 at a time.
#[inline]
fn short_is_ascii(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(8);
    let mut acc = 0u64;
    for w in &mut words {
        acc |= u64::from_ne_bytes(w.try_into().expect("8 bytes"));
    }
    let mut rest = 0u8;
    for &b in words.remainder() {
        rest |= b;
    }
    acc & 0x8080_8080_8080_8080 == 0 && rest < 0x80
}

/// Where an incomplete code point at the end of `data` starts (`data.len()` if none).
#[inline]
fn incomplete_tail(data: &[u8]) -> usize {
    let len = data.len();
    for i in (len.saturating_sub(3)..len).rev() {
        let b = data[i];
        if b & 0xC0 != 0x80 {
            let n = seq_len(b);
            return if n > len - i { i } else { len };
        }
    }
    len
}

/// Whether `s` (1 to 4 bytes from a lead byte on) is a valid code point or the start of one
/// (Unicode table 3-7: the second byte's range depends on the lead, which excludes overlong
/// forms, surrogates and values over U+10FFFF; later bytes are plain continuations).
#[inline]
fn is_valid_prefix(s: &[u8]) -> bool {
    let Some(&lead) = s.first() else { return true };
    let n = seq_len(lead);
    if n == 0 || s.len() > n {
        return false;
    }
    if let Some(&b1) = s.get(1) {
        let ok = match lead {
            0xE0 => (0xA0..=0xBF).contains(&b1),
            0xED => (0x80..=0x9F).contains(&b1),
            0xF0 => (0x90..=0xBF).contains(&b1),
            0xF4 => (0x80..=0x8F).contains(&b1),
            _ => b1 & 0xC0 == 0x80,
        };
        if !ok {
            return false;
        }
    }
    s.iter().skip(2).all(|b| b & 0xC0 == 0x80)
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validate the next piece of the message.
    #[inline]
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), ProtocolError> {
        if self.len > 0 {
            let held = usize::from(self.len);
            let need = seq_len(self.partial[0]);
            let take = (need - held).min(data.len());
            self.partial[held..held + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            let cp = &self.partial[..held + take];
            if cp.len() < need {
                self.len = cp.len() as u8;
                return if is_valid_prefix(cp) {
                    Ok(())
                } else {
                    Err(ProtocolError::InvalidUtf8)
                };
            }
            if simdutf8::basic::from_utf8(cp).is_err() {
                return Err(ProtocolError::InvalidUtf8);
            }
            self.len = 0;
        }
        // Short all-ASCII pieces (chat lines, ticks, most echo traffic) need no more: for
        // inputs under 64 bytes simdutf8 hands over to std's scalar validator, which costs
        // several times this check.
        if data.len() < SHORT && short_is_ascii(data) {
            return Ok(());
        }
        let split = incomplete_tail(data);
        let (body, tail) = data.split_at(split);
        if simdutf8::basic::from_utf8(body).is_err() {
            return Err(ProtocolError::InvalidUtf8);
        }
        if !tail.is_empty() {
            if !is_valid_prefix(tail) {
                return Err(ProtocolError::InvalidUtf8);
            }
            self.partial[..tail.len()].copy_from_slice(tail);
            self.len = tail.len() as u8;
        }
        Ok(())
    }

    /// End of message: fails if it ended inside a code point. Resets the validator.
    #[inline]
    pub fn finish(&mut self) -> Result<(), ProtocolError> {
        let incomplete = self.len != 0;
        self.len = 0;
        if incomplete {
            Err(ProtocolError::InvalidUtf8)
        } else {
            Ok(())
        }
    }

    /// Forget any carried bytes.
    pub fn reset(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_all_splits(bytes: &[u8]) -> bool {
        let want = core::str::from_utf8(bytes).is_ok();
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let mut v = Utf8Validator::new();
                let got = v
                    .feed(&bytes[..a])
                    .and_then(|_| v.feed(&bytes[a..b]))
                    .and_then(|_| v.feed(&bytes[b..]))
                    .and_then(|_| v.finish());
                assert_eq!(got.is_ok(), want, "{bytes:x?} split at {a},{b}");
            }
        }
        want
    }

    /// The short ASCII path: one non-ASCII byte (a lone continuation, a lead without its
    /// continuation, or a whole 2-byte code point) at every position of pieces up to 70
    /// bytes long (across the 8-byte words, the remainder and the 64-byte cut-over) agrees
    /// with std, whole and at every 2-way split.
    #[test]
    fn one_non_ascii_byte_anywhere_in_a_short_piece_agrees_with_std() {
        for len in 0..=70usize {
            let mut plain = vec![b'a'; len];
            let mut v = Utf8Validator::new();
            assert!(v.feed(&plain).and_then(|_| v.finish()).is_ok(), "{len}");
            for pos in 0..len {
                for bad in [&[0x80u8][..], &[0xC3], &[0xC3, 0xA9], &[0xFF], &[0x7F]] {
                    plain.truncate(0);
                    plain.resize(len, b'a');
                    let end = (pos + bad.len()).min(len);
                    plain[pos..end].copy_from_slice(&bad[..end - pos]);
                    let want = core::str::from_utf8(&plain).is_ok();
                    let mut v = Utf8Validator::new();
                    let got = v.feed(&plain).and_then(|_| v.finish()).is_ok();
                    assert_eq!(got, want, "{len} {pos} {bad:x?}");
                    for cut in [pos, pos + 1, len / 2] {
                        let cut = cut.min(len);
                        let mut v = Utf8Validator::new();
                        let got = v
                            .feed(&plain[..cut])
                            .and_then(|_| v.feed(&plain[cut..]))
                            .and_then(|_| v.finish())
                            .is_ok();
                        assert_eq!(got, want, "{len} {pos} {bad:x?} cut {cut}");
                    }
                }
            }
        }
    }

    #[test]
    fn agrees_with_std_at_every_3_way_split() {
        let cases: &[&[u8]] = &[
            "".as_bytes(),
            "hello".as_bytes(),
            "κόσμε".as_bytes(),
            "a€b𝄞c".as_bytes(),
            "\u{10FFFF}\u{7FF}\u{800}\u{FFFF}".as_bytes(),
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
            b"\xf4\x90\x80\x80",
            b"\xed\xa0\x80",
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xf8\x88\x80\x80\x80",
            b"\x80",
            b"ab\xc2",
            b"\xef\xbf",
            b"\xf0\x9f\x98",
            b"\xff\xfe",
        ];
        for c in cases {
            check_all_splits(c);
        }
    }

    #[test]
    fn every_2_byte_and_3_byte_sequence_matches_std() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let s = [a, b];
                let want = core::str::from_utf8(&s).is_ok();
                let mut v = Utf8Validator::new();
                let got = v
                    .feed(&s[..1])
                    .and_then(|_| v.feed(&s[1..]))
                    .and_then(|_| v.finish());
                assert_eq!(got.is_ok(), want, "{s:x?}");
            }
        }
        for a in 0xE0..=0xF4u8 {
            for b in 0x70..=0xC0u8 {
                for c in [0x41u8, 0x80, 0xBF, 0xC0] {
                    check_all_splits(&[a, b, c]);
                }
            }
        }
    }

    /// Every sequence of 1 to 4 bytes drawn from the values at UTF-8's range boundaries, at
    /// every split, agrees with std.
    #[test]
    fn boundary_bytes_up_to_4_long_agree_with_std() {
        const B: [u8; 19] = [
            0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xED,
            0xEF, 0xF0, 0xF4, 0xF5, 0xFF,
        ];
        let mut seq = Vec::with_capacity(4);
        for len in 1..=4u32 {
            for mut i in 0..B.len().pow(len) {
                seq.clear();
                for _ in 0..len {
                    seq.push(B[i % B.len()]);
                    i /= B.len();
                }
                check_all_splits(&seq);
            }
        }
    }

    /// Fail fast: the error comes with the piece holding the first bad byte, even if that piece
    /// ends in the middle of a would-be code point.
    #[test]
    fn fails_at_first_bad_byte() {
        let mut v = Utf8Validator::new();
        assert!(v.feed("κόσ".as_bytes()).is_ok());
        assert!(v.feed(b"\xce").is_ok()); // a valid prefix
        assert!(v.feed(b"\xff").is_err());

        let mut v = Utf8Validator::new();
        assert!(v.feed(b"ok\xed").is_ok());
        assert!(
            v.feed(b"\xa0").is_err(),
            "surrogate prefix ED A0 must fail at once"
        );

        let mut v = Utf8Validator::new();
        assert!(
            v.feed(b"\xf4\x90").is_err(),
            "F4 90 can only encode > U+10FFFF"
        );
    }
}
