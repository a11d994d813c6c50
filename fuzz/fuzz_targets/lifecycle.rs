//! The whole connection lifecycle under random input: bytes split anywhere (upgrade requests,
//! frames, garbage), sends completed partially or failed, EOF, resets, time passing,
//! publishes, shutdown; under io_uring's and epoll's bookkeeping. Asserts: no panic, bounded
//! memory (queued bytes per connection within the limit plus one message), every frame
//! written whole before a close frame and nothing after it, FIN only at a frame boundary, and
//! every accepted connection freed once everything ends.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use uproar::sim::{Sim, client_frame, upgrade_request};
use uproar_wire::{DataKind, OpCode};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut data)) = data.split_first() else {
        return;
    };
    let mut s = Sim::new(Sim::small_config(), mode & 1 == 1);
    let limit = Sim::small_config().max_buffered_bytes + (1 << 17) + 64 * (1 << 16);
    let mut ids = Vec::new();
    let take = |data: &mut &[u8], n: usize| -> Vec<u8> {
        let n = n.min(data.len());
        let (a, b) = data.split_at(n);
        *data = b;
        a.to_vec()
    };
    while let Some((&op, rest)) = data.split_first() {
        data = rest;
        let pick = |ids: &Vec<_>, b: u8| ids.get(b as usize % ids.len().max(1)).copied();
        let arg = data.first().copied().unwrap_or(0);
        match op % 12 {
            0 => {
                if let Some(id) = s.connect() {
                    ids.push(id);
                }
            }
            1 => {
                if let Some(id) = pick(&ids, arg) {
                    let path = ["/echo", "/ws/a", "/ws/b", "/nope"][arg as usize % 4];
                    s.feed(id, &upgrade_request(path));
                }
            }
            2 => {
                if let Some(id) = pick(&ids, arg) {
                    let len = take(&mut data, 1).first().copied().unwrap_or(0) as usize;
                    let bytes = take(&mut data, len);
                    s.feed(id, &bytes);
                }
            }
            3 => {
                if let Some(id) = pick(&ids, arg) {
                    let b = take(&mut data, 3);
                    let (kind, size) = (b.get(1).copied().unwrap_or(0), b.get(2).copied().unwrap_or(0));
                    let ops = [OpCode::Text, OpCode::Binary, OpCode::Ping, OpCode::Continuation, OpCode::Close];
                    let op = ops[kind as usize % ops.len()];
                    let payload: Vec<u8> = if kind & 0x80 != 0 {
                        format!("flood {} {}", size % 8, size as usize * 97).into_bytes()
                    } else {
                        vec![b'a'; size as usize * 13]
                    };
                    s.feed(id, &client_frame(kind & 0x40 == 0, op, &payload));
                }
            }
            4 => {
                if let Some(id) = pick(&ids, arg) {
                    let n = take(&mut data, 2).get(1).copied().unwrap_or(0) as usize;
                    s.complete(id, Some(n * 31));
                }
            }
            5 => {
                if let Some(id) = pick(&ids, arg) {
                    s.complete_in_turn(id, Some(arg as usize));
                }
            }
            6 => {
                if let Some(id) = pick(&ids, arg) {
                    s.fail_send(id);
                }
            }
            7 => {
                if let Some(id) = pick(&ids, arg) {
                    s.eof(id);
                }
            }
            8 => {
                if let Some(id) = pick(&ids, arg) {
                    s.reset(id);
                }
            }
            9 => s.advance(Duration::from_millis(u64::from(arg) * 20)),
            10 => {
                let topic = if arg & 1 == 0 { "a" } else { "b" };
                for _ in 0..=(arg >> 5) {
                    s.post(topic, DataKind::Binary, &vec![arg; usize::from(arg) * 40]);
                }
                s.take_inbox();
            }
            _ => {
                if arg == 0xff {
                    s.shutdown(Duration::from_millis(500));
                }
            }
        }
        for &id in &ids {
            assert!(s.buffered(id) <= limit, "unbounded backlog: {}", s.buffered(id));
        }
        s.check_streams();
    }
    // Everything ends: sends complete, peers close, time passes, the server shuts down.
    s.shutdown(Duration::from_millis(500));
    for _ in 0..20 {
        s.drain();
        for &id in &ids {
            s.eof(id);
        }
        s.advance(Duration::from_millis(300));
    }
    s.drain();
    s.check_streams();
    assert_eq!(s.open(), 0, "every accepted connection is freed");
    assert!(s.finished());
    for id in &ids {
        assert!(s.peers[id].freed, "{id:?} never freed");
    }
});
