//! A hashed timing wheel of connection deadlines. Entries are never removed: a connection
//! keeps the tick it is armed for, and an entry that fires for a tick the connection no longer
//! expects is ignored. A deadline that moves later (every message pushes the idle timeout
//! back) therefore costs nothing until the old tick fires and re-arms it.

use std::time::{Duration, Instant};

use crate::id::ConnId;

/// "Not armed".
pub(crate) const NONE: u32 = u32::MAX;

/// Entries a slot keeps room for after firing; why 64: the steady state of a busy server
/// spreads its deadlines over many ticks, so slots stay small; a burst is not kept.
const SLOT_KEEP: usize = 64;

/// `d` in nanoseconds, saturating at `u64::MAX` (584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug)]
pub(crate) struct Wheel {
    start: Instant,
    tick: Duration,
    slots: Vec<Vec<ConnId>>,
    /// The next tick to fire.
    cursor: u32,
    len: usize,
}

impl Wheel {
    /// `slots` ticks of `tick` each; deadlines further out are parked at the far end and
    /// re-armed when that fires.
    pub(crate) fn new(start: Instant, tick: Duration, slots: usize) -> Wheel {
        Wheel {
            start,
            tick,
            slots: (0..slots).map(|_| Vec::new()).collect(),
            cursor: 0,
            len: 0,
        }
    }

    /// The first tick at or after `t`. In 64-bit nanoseconds (584 years from the wheel's
    /// start): called on every flush, and 128-bit division is a library call.
    pub(crate) fn tick_of(&self, t: Instant) -> u32 {
        let d = nanos(t.saturating_duration_since(self.start));
        d.div_ceil(nanos(self.tick).max(1)).min(u64::from(NONE - 1)) as u32
    }

    /// Arm `key` for tick `tick` (from [`tick_of`](Self::tick_of)); returns the tick it will
    /// fire at (remember it on the connection: the entry is valid only while that matches).
    pub(crate) fn insert_at(&mut self, key: ConnId, tick: u32) -> u32 {
        let n = self.slots.len() as u32;
        let t = tick.clamp(self.cursor, self.cursor + n - 1);
        self.slots[(t % n) as usize].push(key);
        self.len += 1;
        t
    }

    /// When the next entry could fire, if any is armed.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        (self.len > 0).then(|| self.start + self.tick * self.cursor)
    }

    /// Move every entry whose tick is at or before `now` into `out`, with its tick.
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<(ConnId, u32)>) {
        let now_tick = (nanos(now.saturating_duration_since(self.start)) / nanos(self.tick).max(1))
            .min(u64::from(NONE - 1)) as u32;
        if self.len == 0 {
            self.cursor = self.cursor.max(now_tick + 1);
            return;
        }
        let n = self.slots.len() as u32;
        while self.cursor <= now_tick {
            let slot = &mut self.slots[(self.cursor % n) as usize];
            self.len -= slot.len();
            out.extend(slot.drain(..).map(|k| (k, self.cursor)));
            // A burst (thousands of connections arriving together) lands in one slot; do not
            // keep its capacity, or every slot ends up sized for the largest burst it saw.
            if slot.capacity() > SLOT_KEEP {
                *slot = Vec::new();
            }
            self.cursor += 1;
            if self.len == 0 {
                self.cursor = now_tick + 1;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_the_first_tick_after_the_deadline_and_parks_far_ones() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Wheel::new(t0, ms(10), 8);
        let a = w.insert_at(ConnId::new(1, 0), w.tick_of(t0 + ms(25)));
        let b = w.insert_at(ConnId::new(2, 0), w.tick_of(t0 + ms(1000)));
        assert_eq!(a, 3);
        assert_eq!(b, 7, "beyond the wheel: parked at its far end");
        let mut out = Vec::new();
        w.expire(t0 + ms(29), &mut out);
        assert!(out.is_empty());
        w.expire(t0 + ms(30), &mut out);
        assert_eq!(out, vec![(ConnId::new(1, 0), 3)]);
        out.clear();
        w.expire(t0 + ms(75), &mut out);
        assert_eq!(out, vec![(ConnId::new(2, 0), 7)]);
        assert_eq!(w.next_wake(), None);
        // Armed again after a long idle stretch: still in the future.
        let c = w.insert_at(ConnId::new(3, 0), w.tick_of(t0 + ms(5000)));
        assert!(c >= 8);
        out.clear();
        w.expire(t0 + ms(5000), &mut out);
        assert_eq!(
            out.len(),
            1,
            "fires (early, parked) within the wheel's span"
        );
    }
}
