//! aarch64 backend: NEON is part of the aarch64 baseline, so no runtime check is needed.
//! Not compiled on the project's x86-64 machines; keep it as small as possible.

use core::arch::aarch64::*;

use super::swar;

/// XOR with the rotated key (lowest byte applies to `buf[0]`), 16 bytes per step.
pub(crate) fn xor_neon(buf: &mut [u8], key: u32) {
    let mut chunks = buf.chunks_exact_mut(16);
    for c in &mut chunks {
        // SAFETY: `c` is exactly 16 bytes long; NEON is always present on aarch64 and
        // `vld1q_u8`/`vst1q_u8` have no alignment requirement.
        unsafe {
            let k = vreinterpretq_u8_u32(vdupq_n_u32(key));
            vst1q_u8(c.as_mut_ptr(), veorq_u8(vld1q_u8(c.as_ptr()), k));
        }
    }
    swar::xor(chunks.into_remainder(), key);
}
