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

/// XOR fewer than 8 bytes (any count, really) byte by byte with the rotating key.
#[inline]
pub(crate) fn tail(buf: &mut [u8], key: u32) {
    let key = key.to_le_bytes();
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}
