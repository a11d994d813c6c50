//! Payload masking (RFC 6455 §5.3): `payload[i] ^= key[i % 4]`.
//!
//! One public entry point, [`unmask`], takes a *phase*: how many bytes of the same payload were
//! already unmasked. A payload that arrives split across receive buffers continues with the
//! right key byte, and the returned phase is passed to the next call.
//!
//! Backends, one file each: `scalar` (the oracle), `swar` (portable, safe), `x86` (SSE2, AVX2,
//! AVX-512) and `aarch64` (NEON). **This file is the only place that chooses one**:
//! compile-time target features first; otherwise a CPU check done once and cached. `cfg(miri)`
//! and `--cfg uproar_force_portable` force SWAR. Inputs shorter than [`SMALL`] bytes skip the
//! dispatch and run inline SWAR: there a vector loop's setup would cost more than it saves.

mod scalar;
mod swar;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86;

use core::sync::atomic::{AtomicU8, Ordering};

/// Below this length `unmask` stays on the inline SWAR path (no dispatch, no vector setup).
/// Why 32: one AVX2 vector; smaller payloads take at most 4 word operations.
pub const SMALL: usize = 32;

/// XOR `buf` with the masking `key`, starting at key byte `phase % 4`; returns the phase for
/// the next piece of the same payload, `(phase + buf.len()) % 4`.
///
/// Masking and unmasking are the same operation.
#[inline(always)]
pub fn unmask(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let k = rotate(key, phase);
    if buf.len() < SMALL {
        swar::short(buf, k);
    } else {
        unmask_dispatched(buf, k);
    }
    (phase + buf.len()) & 3
}

/// The vector path, out of line so the short path inlined into callers stays small and does
/// not pay for this one's register saves.
#[inline(never)]
fn unmask_dispatched(buf: &mut [u8], key: u32) {
    run(Backend::selected(), buf, key);
}

/// [`unmask`] with an explicit backend, for tests and benchmarks.
///
/// # Panics
/// If `backend` is not available on this CPU (see [`Backend::is_available`]).
pub fn unmask_with(backend: Backend, buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    assert!(
        backend.is_available(),
        "mask backend {backend:?} is not available on this CPU"
    );
    if backend == Backend::Scalar {
        scalar::unmask(buf, key, phase);
    } else {
        run(backend, buf, rotate(key, phase));
    }
    (phase + buf.len()) & 3
}

/// The key as a little-endian word whose lowest byte is `key[phase % 4]`.
#[inline]
fn rotate(key: [u8; 4], phase: usize) -> u32 {
    rotate_u32(u32::from_le_bytes(key), phase)
}

/// Advance a rotated key word by `n` bytes.
#[inline]
fn rotate_u32(key: u32, n: usize) -> u32 {
    key.rotate_right(8 * (n as u32 & 3))
}

#[inline]
fn run(backend: Backend, buf: &mut [u8], key: u32) {
    match backend {
        Backend::Scalar => scalar::unmask(buf, key.to_le_bytes(), 0),
        Backend::Swar => swar::xor(buf, key),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSE2 is part of the x86-64 baseline.
        Backend::Sse2 => unsafe { x86::xor_sse2(buf, key) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2` is only selected or accepted after `is_available` saw AVX2.
        Backend::Avx2 => unsafe { x86::xor_avx2(buf, key) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx512` is only selected or accepted after `is_available` saw
        // AVX512F and AVX512BW.
        Backend::Avx512 => unsafe { x86::xor_avx512(buf, key) },
        #[cfg(target_arch = "aarch64")]
        Backend::Neon => aarch64::xor_neon(buf, key),
        // Not compiled for this target; `is_available` is false, so never selected.
        #[allow(unreachable_patterns)]
        _ => swar::xor(buf, key),
    }
}

/// A masking implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Backend {
    /// One byte at a time; the test oracle.
    Scalar = 1,
    /// Eight bytes at a time in a `u64`; portable and safe.
    Swar = 2,
    /// 16-byte SSE2 vectors (x86-64 baseline).
    Sse2 = 3,
    /// 32-byte AVX2 vectors.
    Avx2 = 4,
    /// 64-byte AVX-512 vectors with masked head and tail (needs AVX512F and AVX512BW).
    Avx512 = 5,
    /// 16-byte NEON vectors (aarch64 baseline).
    Neon = 6,
}

static SELECTED: AtomicU8 = AtomicU8::new(0);

impl Backend {
    /// Every backend, available or not.
    pub const ALL: [Backend; 6] = [
        Backend::Scalar,
        Backend::Swar,
        Backend::Sse2,
        Backend::Avx2,
        Backend::Avx512,
        Backend::Neon,
    ];

    /// Whether this backend can run on this CPU and build.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Scalar | Backend::Swar => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Sse2 => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The backend [`unmask`] uses for inputs of [`SMALL`] bytes and more.
    #[inline]
    pub fn selected() -> Backend {
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx512f",
            target_feature = "avx512bw",
            not(miri),
            not(uproar_force_portable)
        ))]
        return Backend::Avx512;
        #[allow(unreachable_code)]
        match SELECTED.load(Ordering::Relaxed) {
            0 => {
                let b = Self::detect();
                SELECTED.store(b as u8, Ordering::Relaxed);
                b
            }
            n => Self::from_u8(n),
        }
    }

    fn detect() -> Backend {
        if cfg!(any(miri, uproar_force_portable)) {
            return Backend::Swar;
        }
        [Backend::Avx512, Backend::Avx2, Backend::Sse2, Backend::Neon]
            .into_iter()
            .find(|b| b.is_available())
            .unwrap_or(Backend::Swar)
    }

    fn from_u8(n: u8) -> Backend {
        Self::ALL
            .into_iter()
            .find(|b| *b as u8 == n)
            .unwrap_or(Backend::Swar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [[u8; 4]; 3] = [
        [0x37, 0xfa, 0x21, 0x3d],
        [0xff, 0x00, 0xff, 0x00],
        [1, 2, 3, 4],
    ];

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    /// Every available backend equals the oracle for every length 0..=300 and some large
    /// ones, at every start offset 0..64 within a buffer, for every key phase.
    #[test]
    fn every_backend_matches_scalar_oracle() {
        let lens: Vec<usize> = (0..=300)
            .chain([511, 1024, 4099, 16384, 65536 + 13])
            .collect();
        let mut tested = 0;
        for backend in Backend::ALL.into_iter().filter(|b| b.is_available()) {
            for &len in &lens {
                let offsets: Vec<usize> = if len <= 300 {
                    (0..64).collect()
                } else {
                    vec![0, 1, 31, 63]
                };
                for off in offsets {
                    for phase in 0..4 {
                        let key = KEYS[(len + off + phase) % KEYS.len()];
                        let mut want = pattern(off + len + 7);
                        let mut got = want.clone();
                        scalar::unmask(&mut want[off..off + len], key, phase);
                        let next = unmask_with(backend, &mut got[off..off + len], key, phase);
                        assert_eq!(next, (phase + len) % 4);
                        assert!(
                            want == got,
                            "{backend:?} differs from oracle: len {len} offset {off} phase {phase}"
                        );
                        tested += 1;
                    }
                }
            }
        }
        assert!(tested > 0);
    }

    #[test]
    fn dispatched_matches_oracle_and_splits_continue_phase() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        for len in [0, 1, 5, 31, 32, 33, 100, 1000, 70000] {
            let mut want = pattern(len);
            scalar::unmask(&mut want, key, 0);
            // Unmask in uneven pieces, threading the phase through.
            let mut got = pattern(len);
            let mut phase = 0;
            let mut pos = 0;
            for (i, step) in [1usize, 3, 7, 40, 33, 500].iter().cycle().enumerate() {
                if pos >= len || i > 100_000 {
                    break;
                }
                let end = (pos + step).min(len);
                phase = unmask(&mut got[pos..end], key, phase);
                pos = end;
            }
            if pos < len {
                phase = unmask(&mut got[pos..], key, phase);
            }
            assert_eq!(phase, len % 4);
            assert_eq!(want, got, "len {len}");
        }
    }

    #[test]
    fn masking_twice_is_identity() {
        let orig = pattern(777);
        let mut buf = orig.clone();
        unmask(&mut buf, [9, 8, 7, 6], 2);
        assert_ne!(buf, orig);
        unmask(&mut buf, [9, 8, 7, 6], 2);
        assert_eq!(buf, orig);
    }

    #[test]
    fn selection_is_stable_and_available() {
        let b = Backend::selected();
        assert!(b.is_available());
        assert_eq!(b, Backend::selected());
        #[cfg(any(miri, uproar_force_portable))]
        assert_eq!(b, Backend::Swar, "the portable cfg forces SWAR");
        #[cfg(all(target_arch = "x86_64", not(miri), not(uproar_force_portable)))]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(matches!(b, Backend::Avx2 | Backend::Avx512));
        }
    }
}
