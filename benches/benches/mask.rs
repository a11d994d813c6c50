//! Unmasking throughput: every backend beside the scalar oracle, an in-place constant XOR of
//! the same buffer (the ceiling: no key rotation, just a load-xor-store stream) and
//! `fastwebsockets::unmask` (the best-known Rust peer), at aligned and odd start offsets.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use uproar_wire::mask::{Backend, unmask, unmask_with};

const SIZES: [usize; 6] = [16, 125, 1024, 16 << 10, 64 << 10, 1 << 20];
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A 64-byte aligned buffer with `offset` bytes of lead-in, so the payload's alignment is
/// exactly `offset`.
struct Buf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buf {
    fn new(len: usize, offset: usize) -> Buf {
        let storage = vec![0x5au8; len + offset + 128];
        let start = storage.as_ptr().align_offset(64) + offset;
        Buf {
            storage,
            start,
            len,
        }
    }
    fn get(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

#[inline(never)]
fn xor_ceiling(buf: &mut [u8]) {
    for b in buf {
        *b ^= 0x5a;
    }
}

fn bench(c: &mut Criterion) {
    for offset in [0usize, 1] {
        let mut g = c.benchmark_group(format!("unmask/offset{offset}"));
        for size in SIZES {
            g.throughput(Throughput::Bytes(size as u64));
            let mut buf = Buf::new(size, offset);
            g.bench_with_input(BenchmarkId::new("xor_ceiling", size), &size, |b, _| {
                b.iter(|| xor_ceiling(black_box(buf.get())))
            });
            g.bench_with_input(BenchmarkId::new("dispatched", size), &size, |b, _| {
                b.iter(|| unmask(black_box(buf.get()), black_box(KEY), 0))
            });
            g.bench_with_input(BenchmarkId::new("fastwebsockets", size), &size, |b, _| {
                b.iter(|| fastwebsockets::unmask(black_box(buf.get()), black_box(KEY)))
            });
            if offset == 0 {
                for backend in Backend::ALL.into_iter().filter(|b| b.is_available()) {
                    if backend == Backend::Scalar && size > 64 << 10 {
                        continue;
                    }
                    let name = format!("{backend:?}").to_lowercase();
                    g.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                        b.iter(|| unmask_with(backend, black_box(buf.get()), black_box(KEY), 0))
                    });
                }
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
