//! Decoding: one small frame's header (beside tungstenite's public header parser), the
//! connection over a buffer of many small masked frames (frames/s), and one large masked frame
//! (bytes/s, unmasking included).

use std::hint::black_box;
use std::io::Cursor;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use uproar_wire::conn::{Config, Connection, Event};
use uproar_wire::frame::{FrameHeader, OpCode, Role, encode_frame};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn frames(n: usize, payload: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let body = vec![b'x'; payload];
    for _ in 0..n {
        encode_frame(&mut v, true, OpCode::Binary, &body, Some(KEY));
    }
    v
}

// Frames are binary: decoding unmasks payloads in place and leaves headers alone, so the same
// buffer decodes again on the next iteration (its payloads toggle between two states) with no
// copy to refresh it. Text validation is measured in the utf8 bench.
fn drain(conn: &mut Connection, buf: &mut [u8]) -> usize {
    let mut pos = 0;
    let mut n = 0;
    while let Some(ev) = conn.handle_read(buf, &mut pos).expect("valid input") {
        if let Event::Message { data, .. } = ev {
            n += data.len();
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("header");
    let small = frames(1, 20);
    g.bench_function("uproar_parse", |b| {
        b.iter(|| FrameHeader::parse(black_box(&small), Role::Server))
    });
    g.bench_function("tungstenite_parse", |b| {
        b.iter(|| {
            tungstenite::protocol::frame::FrameHeader::parse(&mut Cursor::new(black_box(
                &small[..],
            )))
            .map(|h| h.is_some())
        })
    });
    g.finish();

    // 64 different small-frame headers per iteration (lengths 0..=63, distinct keys): the
    // per-header cost without the harness's per-call `black_box` round trip through memory.
    let batch: Vec<Vec<u8>> = (0..64u8)
        .map(|i| {
            let mut v = Vec::new();
            encode_frame(
                &mut v,
                true,
                OpCode::Binary,
                &vec![0; usize::from(i)],
                Some([i, 1, 2, 3]),
            );
            v
        })
        .collect();
    let mut g = c.benchmark_group("header_x64");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("uproar_parse", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for f in black_box(&batch) {
                if let Ok(Some((h, n))) = FrameHeader::parse(f, Role::Server) {
                    sum += h.payload_len + n as u64;
                }
            }
            sum
        })
    });
    g.bench_function("tungstenite_parse", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for f in black_box(&batch) {
                if let Ok(Some((_, len))) =
                    tungstenite::protocol::frame::FrameHeader::parse(&mut Cursor::new(&f[..]))
                {
                    sum += len;
                }
            }
            sum
        })
    });
    g.finish();

    let mut g = c.benchmark_group("decode");
    let n = 1000;
    let input = frames(n, 20);
    let mut buf = input.clone();
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("1000_frames_of_20B", |b| {
        b.iter(|| {
            let mut conn = Connection::server(Config::default());
            drain(&mut conn, black_box(&mut buf))
        })
    });
    let big = frames(1, 1 << 20);
    let mut buf = big.clone();
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("one_1MiB_frame", |b| {
        b.iter(|| {
            let mut conn = Connection::server(Config::default());
            drain(&mut conn, black_box(&mut buf))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
