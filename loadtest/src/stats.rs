//! What each worker thread counts, merged at the end.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hdrhistogram::Histogram;

/// Arrival order of one sender's messages at one receiver.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    next: u64,
    missing: BTreeSet<u64>,
    /// Distinct messages received.
    pub received: u64,
    /// Messages received again.
    pub duplicated: u64,
    /// Messages that arrived after a later one.
    pub reordered: u64,
}

/// A gap this large is not loss but a corrupted sequence number.
const MAX_GAP: u64 = 1 << 20;

/// How a message arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next one expected.
    InOrder,
    /// Later ones were skipped (maybe lost, maybe reordered).
    Ahead,
    /// Fills an earlier gap: reordered.
    Late,
    /// Seen before.
    Duplicate,
    /// Impossibly far ahead.
    Bogus,
}

impl SeqTracker {
    /// Record `seq`.
    pub fn on(&mut self, seq: u64) -> Arrival {
        if seq == self.next {
            self.next += 1;
            self.received += 1;
            Arrival::InOrder
        } else if seq > self.next {
            if seq - self.next > MAX_GAP {
                return Arrival::Bogus;
            }
            self.missing.extend(self.next..seq);
            self.next = seq + 1;
            self.received += 1;
            Arrival::Ahead
        } else if self.missing.remove(&seq) {
            self.received += 1;
            self.reordered += 1;
            Arrival::Late
        } else {
            self.duplicated += 1;
            Arrival::Duplicate
        }
    }

    /// Messages never received out of the `sent` the sender sent.
    pub fn lost(&self, sent: u64) -> u64 {
        self.missing.len() as u64 + sent.saturating_sub(self.next)
    }
}

/// A latency histogram in microseconds, 1 µs to 1 hour at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Percentiles reported everywhere: p50, p90, p99, p99.9, p99.99 and max, in µs.
pub fn percentiles(h: &Histogram<u64>) -> Vec<(&'static str, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut v: Vec<(&'static str, u64)> = [
        ("p50", 50.0),
        ("p90", 90.0),
        ("p99", 99.0),
        ("p99.9", 99.9),
        ("p99.99", 99.99),
    ]
    .into_iter()
    .map(|(n, q)| (n, h.value_at_quantile(q / 100.0)))
    .collect();
    v.push(("max", h.max()));
    v
}

/// Counters of one worker (or all of them, merged).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Data messages sent.
    pub sent: u64,
    /// Data messages received and verified, at any time.
    pub received: u64,
    /// Received inside the measured window (after warm-up, before the end).
    pub measured: u64,
    /// Payloads whose bytes were wrong.
    pub corrupt: u64,
    /// Received twice.
    pub duplicated: u64,
    /// Received after a later message of the same sender.
    pub reordered: u64,
    /// Never received (filled in at the end).
    pub lost: u64,
    /// Connections that failed (connect, handshake, I/O, unexpected close).
    pub errors: u64,
    /// Connections opened (handshake complete).
    pub opened: u64,
    /// Of those, connections that negotiated permessage-deflate.
    pub deflate: u64,
    /// Bytes read from open connections' sockets (frames as they came over the wire).
    pub wire_in: u64,
    /// Payload bytes of the messages received (inflated, for compressed ones).
    pub payload_in: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.sent += o.sent;
        self.received += o.received;
        self.measured += o.measured;
        self.corrupt += o.corrupt;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.lost += o.lost;
        self.errors += o.errors;
        self.opened += o.opened;
        self.deflate += o.deflate;
        self.wire_in += o.wire_in;
        self.payload_in += o.payload_in;
    }
}

/// Everything one worker measured.
#[derive(Debug)]
pub struct ThreadStats {
    /// Send-to-receive latency of measured messages, µs.
    pub latency: Histogram<u64>,
    /// Connect + handshake latency, µs.
    pub connect: Histogram<u64>,
    /// Counters.
    pub counters: Counters,
    /// Broadcast: per (publisher, seq), how many fast subscribers got it and the latest arrival
    /// (ns after the scheduled send).
    pub fanout: HashMap<(u16, u64), (u32, u64)>,
    /// Close codes the server sent, by code.
    pub close_codes: BTreeMap<u16, u64>,
    /// Slow subscribers: how each ended (`closed 1008`, `reset`, `open`...).
    pub slow_outcomes: BTreeMap<String, u64>,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Fast subscribers: per subscriber, one tracker per publisher.
    pub sub_trackers: Vec<Vec<SeqTracker>>,
    /// Per publisher, messages sent (broadcast).
    pub published: BTreeMap<u16, u64>,
}

impl ThreadStats {
    /// Empty stats.
    pub fn new() -> ThreadStats {
        ThreadStats {
            latency: histogram(),
            connect: histogram(),
            counters: Counters::default(),
            fanout: HashMap::new(),
            close_codes: BTreeMap::new(),
            slow_outcomes: BTreeMap::new(),
            error_samples: Vec::new(),
            sub_trackers: Vec::new(),
            published: BTreeMap::new(),
        }
    }

    /// Count a failed connection, keeping the first messages.
    pub fn error(&mut self, msg: String) {
        self.counters.errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(msg);
        }
    }

    /// Add another worker's figures.
    pub fn merge(&mut self, o: ThreadStats) {
        self.latency.add(&o.latency).expect("same bounds");
        self.connect.add(&o.connect).expect("same bounds");
        self.counters.add(&o.counters);
        for (k, (n, max)) in o.fanout {
            let e = self.fanout.entry(k).or_insert((0, 0));
            e.0 += n;
            e.1 = e.1.max(max);
        }
        for (k, v) in o.close_codes {
            *self.close_codes.entry(k).or_default() += v;
        }
        for (k, v) in o.slow_outcomes {
            *self.slow_outcomes.entry(k).or_default() += v;
        }
        self.sub_trackers.extend(o.sub_trackers);
        for (k, v) in o.published {
            *self.published.entry(k).or_default() += v;
        }
        for e in o.error_samples {
            if self.error_samples.len() < 5 {
                self.error_samples.push(e);
            }
        }
    }
}

impl Default for ThreadStats {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_classifies_arrivals() {
        let mut t = SeqTracker::default();
        let seq = [0, 1, 3, 2, 2, 5, 4, 7];
        let got: Vec<Arrival> = seq.iter().map(|s| t.on(*s)).collect();
        use Arrival::*;
        assert_eq!(
            got,
            [InOrder, InOrder, Ahead, Late, Duplicate, Ahead, Late, Ahead]
        );
        assert_eq!((t.received, t.duplicated, t.reordered), (7, 1, 2));
        // 6 never came, and 8 and 9 of 10 sent.
        assert_eq!(t.lost(10), 3);
        assert_eq!(t.on(u64::MAX / 2), Bogus);
    }

    /// Percentiles of a known distribution: 1..=100_000 µs, each once.
    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut h = histogram();
        for v in 1..=100_000u64 {
            h.record(v).unwrap();
        }
        let p: HashMap<_, _> = percentiles(&h).into_iter().collect();
        let close = |got: u64, want: u64| (got as f64 - want as f64).abs() / want as f64 <= 0.002;
        assert!(close(p["p50"], 50_000), "{}", p["p50"]);
        assert!(close(p["p90"], 90_000), "{}", p["p90"]);
        assert!(close(p["p99"], 99_000), "{}", p["p99"]);
        assert!(close(p["p99.9"], 99_900), "{}", p["p99.9"]);
        assert!(close(p["p99.99"], 99_990), "{}", p["p99.99"]);
        assert!(close(p["max"], 100_000), "{}", p["max"]);
    }

    /// A bimodal distribution: 99% at 100 µs, 1% at 10 ms. p99 is the edge, p99.9 the tail.
    #[test]
    fn percentiles_of_a_bimodal_distribution() {
        let mut h = histogram();
        h.record_n(100, 99_000).unwrap();
        h.record_n(10_000, 1_000).unwrap();
        let p: HashMap<_, _> = percentiles(&h).into_iter().collect();
        assert_eq!(p["p50"], 100);
        assert_eq!(p["p90"], 100);
        assert_eq!(p["p99"], 100);
        assert!((9_990..=10_010).contains(&p["p99.9"]));
        assert!((9_990..=10_010).contains(&p["max"]));
    }
}
