//! The oracle: one byte at a time, straight from RFC 6455 §5.3.
//! Every other backend is tested against this one.

/// `buf[i] ^= key[(phase + i) % 4]`.
pub(crate) fn unmask(buf: &mut [u8], key: [u8; 4], phase: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(phase + i) & 3];
    }
}
