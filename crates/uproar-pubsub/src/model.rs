//! A naive model of the registry (a map of sets), and a checker that drives both with the
//! same operations, decoded from bytes, asserting they agree after every step. Used by the
//! unit tests (random streams) and the `pubsub_model` fuzz target.

use std::collections::{BTreeMap, BTreeSet};

use crate::{OnFull, Outcome, Policy, Registry, Sink};

/// The model's subscribers: which are over the limit, and what each received, in order.
struct Recorder<'a, F: Fn(u8) -> bool> {
    over: F,
    got: Vec<u8>,
    received: &'a mut BTreeMap<u8, Vec<(String, u64)>>,
}

impl<F: Fn(u8) -> bool> Sink<u8, (String, u64)> for Recorder<'_, F> {
    fn buffered(&self, sub: u8) -> usize {
        if (self.over)(sub) { LIMIT + 1 } else { LIMIT }
    }

    fn deliver(&mut self, sub: u8, m: &(String, u64)) -> Outcome {
        self.got.push(sub);
        self.received.entry(sub).or_default().push(m.clone());
        Outcome::Delivered
    }
}

const SUBS: u8 = 8;
const TOPICS: u8 = 4;
const LIMIT: usize = 100;

fn topic(i: u8) -> String {
    format!("t{}", i % TOPICS)
}

/// Run the operations encoded in `ops` against a [`Registry`] and the model; panic on any
/// disagreement. Byte 0 picks the policy; then each operation takes three bytes.
pub fn check(ops: &[u8]) {
    let on_full = if ops.first().is_some_and(|b| b & 1 == 1) {
        OnFull::Drop
    } else {
        OnFull::Close
    };
    let mut reg: Registry<u8> = Registry::new(Policy {
        max_buffered: LIMIT,
        on_full,
    });
    let mut model: BTreeMap<String, BTreeSet<u8>> = BTreeMap::new();
    // What each subscriber received: (topic, sequence number), in order.
    let mut received: BTreeMap<u8, Vec<(String, u64)>> = BTreeMap::new();
    let mut seq: BTreeMap<String, u64> = BTreeMap::new();
    let mut totals = (0u64, 0u64, 0u64, 0u64);
    for op in ops.get(1..).unwrap_or_default().chunks_exact(3) {
        let (kind, s, arg) = (op[0] % 4, op[1] % SUBS, op[2]);
        let t = topic(arg);
        match kind {
            0 => {
                let fresh = model.entry(t.clone()).or_default().insert(s);
                assert_eq!(reg.subscribe(s, &t), fresh, "subscribe {s} {t}");
            }
            1 => {
                let was = model.get_mut(&t).is_some_and(|m| m.remove(&s));
                assert_eq!(reg.unsubscribe(s, &t), was, "unsubscribe {s} {t}");
            }
            2 => {
                let mut n = 0;
                for m in model.values_mut() {
                    n += usize::from(m.remove(&s));
                }
                assert_eq!(reg.remove(s), n, "remove {s}");
            }
            _ => {
                // Subscribers whose id bit is set in `arg` are over the limit.
                let over = |sub: u8| arg >> (sub % 8) & 1 == 1 && sub != s;
                let n = seq.entry(t.clone()).or_default();
                *n += 1;
                let msg = (t.clone(), *n);
                let mut rec = Recorder {
                    over,
                    got: Vec::new(),
                    received: &mut received,
                };
                let r = reg.publish(&t, &msg, &mut rec);
                let got = rec.got;
                let members = model.get(&t).cloned().unwrap_or_default();
                let want: BTreeSet<u8> = members.iter().copied().filter(|&m| !over(m)).collect();
                let got_set: BTreeSet<u8> = got.iter().copied().collect();
                assert_eq!(
                    got.len(),
                    got_set.len(),
                    "each subscriber gets a message once"
                );
                assert_eq!(
                    got_set, want,
                    "publish to {t} reaches exactly its subscribers"
                );
                let full: BTreeSet<u8> = members.iter().copied().filter(|&m| over(m)).collect();
                match on_full {
                    OnFull::Close => {
                        assert_eq!(r.to_close.iter().copied().collect::<BTreeSet<_>>(), full);
                        assert_eq!(r.dropped, 0);
                        // The caller closes slow subscribers and removes them.
                        for sub in &r.to_close {
                            reg.remove(*sub);
                            for m in model.values_mut() {
                                m.remove(sub);
                            }
                        }
                    }
                    OnFull::Drop => {
                        assert_eq!(r.dropped, full.len());
                        assert!(r.to_close.is_empty());
                    }
                }
                assert_eq!(r.delivered, want.len());
                totals.0 += 1;
                totals.1 += want.len() as u64;
                totals.2 += r.dropped as u64;
                totals.3 += r.to_close.len() as u64;
            }
        }
        model.retain(|_, m| !m.is_empty());
        for i in 0..TOPICS {
            let t = topic(i);
            let got: BTreeSet<u8> = reg.subscribers(&t).iter().copied().collect();
            assert_eq!(got.len(), reg.subscribers(&t).len(), "no duplicate member");
            assert_eq!(
                got,
                model.get(&t).cloned().unwrap_or_default(),
                "members of {t}"
            );
        }
        for sub in 0..SUBS {
            let got: BTreeSet<String> = reg.topics_of(sub).map(str::to_owned).collect();
            let want: BTreeSet<String> = model
                .iter()
                .filter(|(_, m)| m.contains(&sub))
                .map(|(t, _)| t.clone())
                .collect();
            assert_eq!(got, want, "topics of {sub}");
        }
        assert_eq!(reg.topic_count(), model.len());
        let subs: BTreeSet<u8> = model.values().flatten().copied().collect();
        assert_eq!(reg.subscriber_count(), subs.len());
    }
    // Per topic, every subscriber saw that topic's messages in publish order.
    for list in received.values() {
        let mut last: BTreeMap<&str, u64> = BTreeMap::new();
        for (t, n) in list {
            let prev = last.insert(t, *n);
            assert!(prev.is_none_or(|p| p < *n), "out of order on {t}");
        }
    }
    let c = reg.counters();
    assert_eq!(
        (c.published, c.deliveries, c.drops, c.slow_closes),
        totals,
        "counters"
    );
}

#[cfg(test)]
mod tests {
    /// Random operation streams (xorshift, fixed seeds) against the model.
    #[test]
    fn registry_agrees_with_the_model() {
        for seed in 1..=300u64 {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let ops: Vec<u8> = (0..1 + 3 * 400)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            super::check(&ops);
        }
    }
}
