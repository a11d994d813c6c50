//! permessage-deflate: compressing and inflating one message at the window sizes the engine
//! uses (15 for shared mode, 11 for dedicated), for small (100 B) and 1 KiB JSON-like text and
//! a 64 KiB message; throughput in input bytes and time per message. Shared mode resets per
//! message (no context takeover); dedicated keeps the window across messages.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use uproar_wire::deflate::{Deflater, Inflater};

/// JSON-like text with changing fields (market ticks), `n` bytes, different for each `seed`.
fn ticks(n: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(
            format!(
                "{{\"sym\":\"{}\",\"bid\":{}.{:02},\"ask\":{}.{:02},\"qty\":{},\"ts\":{}}},",
                ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META"][(x % 6) as usize],
                100 + x % 400,
                x % 100,
                101 + x % 400,
                (x >> 8) % 100,
                (x >> 16) % 5000,
                1_700_000_000_000u64 + (x >> 20) % 1_000_000
            )
            .as_bytes(),
        );
    }
    out.truncate(n);
    out
}

fn bench(c: &mut Criterion) {
    // 16 different messages per size, cycled, so a dedicated compressor sees realistic reuse.
    let sizes = [100usize, 1024, 64 << 10];
    let mut g = c.benchmark_group("deflate");
    for &n in &sizes {
        let msgs: Vec<Vec<u8>> = (0..16).map(|s| ticks(n, s)).collect();
        g.throughput(Throughput::Bytes(n as u64));
        for (mode, bits, nct) in [("shared_w15", 15u8, true), ("dedicated_w11", 11, false)] {
            let mut d = Deflater::new(bits, if nct { 8 } else { 1 }, 6, nct);
            let mut out = Vec::with_capacity(2 * n);
            let mut i = 0;
            g.bench_function(BenchmarkId::new(mode, n), |b| {
                b.iter(|| {
                    out.clear();
                    d.compress(black_box(&msgs[i % 16]), &mut out);
                    i += 1;
                    out.len()
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("inflate");
    for &n in &sizes {
        let msgs: Vec<Vec<u8>> = (0..16).map(|s| ticks(n, s)).collect();
        g.throughput(Throughput::Bytes(n as u64));
        for (mode, bits, nct) in [("shared_w15", 15u8, true), ("dedicated_w11", 11, false)] {
            // The compressed stream of 16 messages, inflated in the same order, over and over
            // (with context takeover, a dedicated stream is replayed from a fresh inflater).
            let mut d = Deflater::new(bits, 8, 6, nct);
            let compressed: Vec<Vec<u8>> = msgs
                .iter()
                .map(|m| {
                    let mut c = Vec::new();
                    d.compress(m, &mut c);
                    c
                })
                .collect();
            let mut inf = Inflater::new(nct);
            let mut out = Vec::with_capacity(2 * n);
            let mut i = 0;
            g.bench_function(BenchmarkId::new(mode, n), |b| {
                b.iter(|| {
                    if i % 16 == 0 {
                        inf.reset();
                    }
                    out.clear();
                    inf.inflate(black_box(&compressed[i % 16]), &mut out, 1 << 20)
                        .unwrap();
                    inf.finish(&mut out, 1 << 20).unwrap();
                    i += 1;
                    out.len()
                })
            });
        }
    }
    g.finish();

    // How small it gets: printed once, for the record (not timed).
    for &n in &sizes {
        for (mode, bits, nct) in [("shared_w15", 15u8, true), ("dedicated_w11", 11, false)] {
            let mut d = Deflater::new(bits, 8, 6, nct);
            let mut total = (0, 0);
            for s in 0..16 {
                let mut c = Vec::new();
                let msg = ticks(n, s);
                d.compress(&msg, &mut c);
                total = (total.0 + msg.len(), total.1 + c.len());
            }
            eprintln!("ratio {mode} {n} B: {:.3}", total.1 as f64 / total.0 as f64);
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
