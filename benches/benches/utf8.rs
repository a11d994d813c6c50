//! UTF-8 validation of multi-byte text: the incremental validator over 1000-byte fragments
//! (code points split at fragment edges) beside simdutf8 over the whole text in one call
//! (the ceiling) and std's validator.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use uproar_wire::utf8::Utf8Validator;

fn bench(c: &mut Criterion) {
    // Mixed 1-, 2-, 3- and 4-byte code points, 1 MiB or so.
    let unit = "héllo wörld — ∑ 𝄞 κόσμε 日本語 ";
    let text = unit.repeat((1 << 20) / unit.len());
    let bytes = text.as_bytes();
    let mut g = c.benchmark_group("utf8");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("incremental_1000B_fragments", |b| {
        b.iter(|| {
            let mut v = Utf8Validator::new();
            for piece in black_box(bytes).chunks(1000) {
                v.feed(piece).unwrap();
            }
            v.finish().unwrap();
        })
    });
    // The floor of any validator that calls simdutf8's fast API once per fragment: the same
    // calls with no carry logic at all (pieces cut mid-code-point fail, which costs the same).
    g.bench_function("simdutf8_per_1000B_call_floor", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for piece in black_box(bytes).chunks(1000) {
                ok += usize::from(simdutf8::basic::from_utf8(piece).is_ok());
            }
            ok
        })
    });
    g.bench_function("simdutf8_whole_ceiling", |b| {
        b.iter(|| simdutf8::basic::from_utf8(black_box(bytes)).is_ok())
    });
    g.bench_function("std_whole", |b| {
        b.iter(|| std::str::from_utf8(black_box(bytes)).is_ok())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
