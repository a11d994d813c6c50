//! x86-64 backends: SSE2 (baseline on x86-64), AVX2 and AVX-512 (AVX512F + AVX512BW).
//!
//! Each takes the key already rotated to the buffer's phase (see `mask::rotate`), so the
//! lowest byte of `key` applies to `buf[0]`. A 4-byte pattern repeats exactly inside every
//! 16/32/64-byte vector, so one broadcast register serves the whole body. Loads and stores are
//! unaligned (`loadu`/`storeu`), which cost nothing extra on aligned addresses; the AVX2 and
//! AVX-512 kernels first step to a vector-aligned address so no body access splits a cache line.

use core::arch::x86_64::*;

use super::swar;

/// # Safety
/// The CPU must support SSE2 (always true on x86-64).
#[target_feature(enable = "sse2")]
pub(crate) unsafe fn xor_sse2(buf: &mut [u8], key: u32) {
    let k = _mm_set1_epi32(key as i32);
    let mut chunks = buf.chunks_exact_mut(64);
    for c in &mut chunks {
        let p = c.as_mut_ptr().cast::<__m128i>();
        // SAFETY: `c` is 64 bytes long, so `p.add(0..4)` covers exactly its four 16-byte
        // lanes; unaligned load/store intrinsics accept any address.
        unsafe {
            let (a, b) = (_mm_loadu_si128(p), _mm_loadu_si128(p.add(1)));
            let (c2, d) = (_mm_loadu_si128(p.add(2)), _mm_loadu_si128(p.add(3)));
            _mm_storeu_si128(p, _mm_xor_si128(a, k));
            _mm_storeu_si128(p.add(1), _mm_xor_si128(b, k));
            _mm_storeu_si128(p.add(2), _mm_xor_si128(c2, k));
            _mm_storeu_si128(p.add(3), _mm_xor_si128(d, k));
        }
    }
    let mut chunks16 = chunks.into_remainder().chunks_exact_mut(16);
    for c in &mut chunks16 {
        let p = c.as_mut_ptr().cast::<__m128i>();
        // SAFETY: `c` is exactly 16 bytes; unaligned access is allowed.
        unsafe { _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), k)) };
    }
    // 64 and 16 are multiples of 4: the key phase is unchanged for the tail.
    swar::xor(chunks16.into_remainder(), key);
}

/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn xor_avx2(buf: &mut [u8], key: u32) {
    // Long buffers first step to a 32-byte boundary (so no store splits a cache line), then run
    // 128 bytes per iteration. Head and tail are under 32 bytes: a few word-sized steps.
    let mut key = key;
    let mut body = buf;
    if body.len() >= 256 {
        let head = body.as_ptr().align_offset(32).min(31);
        let (h, rest) = body.split_at_mut(head);
        swar::short(h, key);
        key = super::rotate_u32(key, head);
        body = rest;
    }
    let k = _mm256_set1_epi32(key as i32);
    let len = body.len();
    let p = body.as_mut_ptr();
    let mut i = 0;
    while i + 128 <= len {
        // SAFETY: `i + 128 <= len`: the four 32-byte vectors at `p + i` lie inside `body`;
        // unaligned load/store intrinsics accept any address.
        unsafe {
            let q = p.add(i).cast::<__m256i>();
            let a = _mm256_loadu_si256(q);
            let b = _mm256_loadu_si256(q.add(1));
            let c = _mm256_loadu_si256(q.add(2));
            let d = _mm256_loadu_si256(q.add(3));
            _mm256_storeu_si256(q, _mm256_xor_si256(a, k));
            _mm256_storeu_si256(q.add(1), _mm256_xor_si256(b, k));
            _mm256_storeu_si256(q.add(2), _mm256_xor_si256(c, k));
            _mm256_storeu_si256(q.add(3), _mm256_xor_si256(d, k));
        }
        i += 128;
    }
    while i + 32 <= len {
        // SAFETY: `i + 32 <= len`: the vector at `p + i` lies inside `body`.
        unsafe {
            let q = p.add(i).cast::<__m256i>();
            _mm256_storeu_si256(q, _mm256_xor_si256(_mm256_loadu_si256(q), k));
        }
        i += 32;
    }
    // Multiples of 32 keep the key phase.
    swar::short(&mut body[i..], key);
}

/// # Safety
/// The CPU must support AVX512F and AVX512BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn xor_avx512(buf: &mut [u8], key: u32) {
    let len = buf.len();
    let ptr = buf.as_mut_ptr();
    // Head: a masked vector up to the first 64-byte boundary. Byte-masked loads and stores
    // never touch memory outside the mask, so no bytes past `len` are read or written.
    let head = ptr.align_offset(64).min(len).min(63);
    if head > 0 {
        let m: __mmask64 = (1u64 << head) - 1;
        let k = _mm512_set1_epi32(key as i32);
        // SAFETY: the mask selects bytes `0..head` and `head <= len`, so only bytes of `buf`
        // are accessed; masked-off lanes are neither loaded nor stored (no fault either).
        unsafe {
            let v = _mm512_maskz_loadu_epi8(m, ptr.cast::<i8>());
            _mm512_mask_storeu_epi8(ptr.cast::<i8>(), m, _mm512_xor_si512(v, k));
        }
    }
    let key = super::rotate_u32(key, head);
    let k = _mm512_set1_epi32(key as i32);
    let mut i = head;
    while i + 256 <= len {
        // SAFETY: `i + 256 <= len`: the four 64-byte vectors at `ptr + i` lie inside `buf`.
        unsafe {
            let p = ptr.add(i).cast::<__m512i>();
            let (a, b) = (_mm512_loadu_si512(p), _mm512_loadu_si512(p.add(1)));
            let (c, d) = (_mm512_loadu_si512(p.add(2)), _mm512_loadu_si512(p.add(3)));
            _mm512_storeu_si512(p, _mm512_xor_si512(a, k));
            _mm512_storeu_si512(p.add(1), _mm512_xor_si512(b, k));
            _mm512_storeu_si512(p.add(2), _mm512_xor_si512(c, k));
            _mm512_storeu_si512(p.add(3), _mm512_xor_si512(d, k));
        }
        i += 256;
    }
    while i + 64 <= len {
        // SAFETY: `i + 64 <= len`: the vector at `ptr + i` lies inside `buf`.
        unsafe {
            let p = ptr.add(i).cast::<__m512i>();
            _mm512_storeu_si512(p, _mm512_xor_si512(_mm512_loadu_si512(p), k));
        }
        i += 64;
    }
    if i < len {
        let m: __mmask64 = (1u64 << (len - i)) - 1;
        // SAFETY: `0 < len - i < 64`; the mask selects exactly the bytes `i..len` of `buf`,
        // masked-off lanes are neither loaded nor stored.
        unsafe {
            let p = ptr.add(i).cast::<i8>();
            let v = _mm512_maskz_loadu_epi8(m, p);
            _mm512_mask_storeu_epi8(p, m, _mm512_xor_si512(v, k));
        }
    }
}
