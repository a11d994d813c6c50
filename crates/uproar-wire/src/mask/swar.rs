//! Portable fallback: eight bytes per step in a `u64`, safe code only.
//! Used under miri, with `--cfg uproar_force_portable`, and on targets without a SIMD backend.

/// XOR `buf` with the repeating 4-byte pattern `key` (little-endian: the lowest byte of
/// `key` applies to `buf[0]`).
#[inline]
pub(crate) fn xor(buf: &mut [u8], key: u32) {
    let wide = u64::from(key) | (u64::from(key) << 32);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunk of 8")) ^ wide;
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    tail(chunks.into_remainder(), key);
}

/// XOR up to 7 bytes in at most three steps (4, 2, 1 bytes) instead of a byte loop.
#[inline]
pub(crate) fn tail(buf: &mut [u8], key: u32) {
    let mut buf = buf;
    let mut key = key;
    if buf.len() >= 4 {
        let (w, rest) = buf.split_at_mut(4);
        let v = u32::from_le_bytes(w.try_into().expect("4 bytes")) ^ key;
        w.copy_from_slice(&v.to_le_bytes());
        buf = rest;
    }
    if buf.len() >= 2 {
        let (w, rest) = buf.split_at_mut(2);
        let v = u16::from_le_bytes(w.try_into().expect("2 bytes")) ^ key as u16;
        w.copy_from_slice(&v.to_le_bytes());
        buf = rest;
        key >>= 16;
    }
    for b in buf.iter_mut() {
        *b ^= key as u8;
    }
}

/// XOR fewer than 32 bytes: at most three 8-byte words, then [`tail`].
#[inline]
pub(crate) fn short(buf: &mut [u8], key: u32) {
    debug_assert!(buf.len() < 32);
    let wide = u64::from(key) | (u64::from(key) << 32);
    let mut buf = buf;
    while buf.len() >= 8 {
        let (w, rest) = buf.split_at_mut(8);
        let v = u64::from_le_bytes(w.try_into().expect("8 bytes")) ^ wide;
        w.copy_from_slice(&v.to_le_bytes());
        buf = rest;
    }
    tail(buf, key);
}
