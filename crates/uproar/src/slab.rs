//! Connection slots addressed by (index, generation). A slot's generation comes from one
//! counter per slab, so a stale id (a late completion, or an id the application kept) never
//! matches the slot's next occupant, even after the slab was trimmed.

use crate::ring::UserData;

#[derive(Debug)]
enum Slot<T> {
    Free,
    Used { generation: u32, value: T },
}

#[derive(Debug)]
pub(crate) struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
    next_generation: u32,
}

impl<T> Slab<T> {
    /// A slab with room for `capacity` slots reserved up front: address space only (pages are
    /// touched as slots fill), and growing never copies the table.
    pub(crate) fn with_capacity(capacity: usize) -> Slab<T> {
        Slab {
            slots: Vec::with_capacity(capacity),
            free: Vec::new(),
            len: 0,
            next_generation: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Insert, returning (index, generation).
    pub(crate) fn insert(&mut self, value: T) -> (u32, u32) {
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & UserData::GEN_MASK;
        let slot = Slot::Used { generation, value };
        let index = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.len += 1;
        (index, generation)
    }

    pub(crate) fn get(&self, index: u32, generation: u32) -> Option<&T> {
        match self.slots.get(index as usize)? {
            Slot::Used {
                generation: g,
                value,
            } if *g == generation => Some(value),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, index: u32, generation: u32) -> Option<&mut T> {
        match self.slots.get_mut(index as usize)? {
            Slot::Used {
                generation: g,
                value,
            } if *g == generation => Some(value),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, index: u32, generation: u32) -> Option<T> {
        let slot = self.slots.get_mut(index as usize)?;
        if !matches!(slot, Slot::Used { generation: g, .. } if *g == generation) {
            return None;
        }
        let Slot::Used { value, .. } = std::mem::replace(slot, Slot::Free) else {
            unreachable!("checked above")
        };
        self.free.push(index);
        self.len -= 1;
        Some(value)
    }

    /// Every occupied slot's value.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> + '_ {
        self.slots.iter().filter_map(|s| match s {
            Slot::Used { value, .. } => Some(value),
            Slot::Free => None,
        })
    }

    /// (index, generation) of every occupied slot.
    pub(crate) fn keys(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| match s {
            Slot::Used { generation, .. } => Some((i as u32, *generation)),
            Slot::Free => None,
        })
    }

    /// After a burst: drop free slots at the end (their memory is reused by the next burst
    /// without growing), when at most a quarter of the slots are in use.
    pub(crate) fn trim(&mut self) {
        if self.len * 4 > self.slots.len() || self.slots.len() < 64 {
            return;
        }
        while matches!(self.slots.last(), Some(Slot::Free)) {
            self.slots.pop();
        }
        let n = self.slots.len() as u32;
        self.free.retain(|&i| i < n);
        self.free.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_never_match_a_reused_slot() {
        let mut s = Slab::with_capacity(0);
        let (i, g) = s.insert("a");
        assert_eq!(s.remove(i, g), Some("a"));
        let (j, h) = s.insert("b");
        assert_eq!(i, j, "the slot is reused");
        assert_ne!(g, h);
        assert_eq!(s.get(i, g), None);
        assert_eq!(s.remove(i, g), None);
        assert_eq!(s.get(j, h), Some(&"b"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn trim_keeps_live_slots_and_fresh_generations() {
        let mut s = Slab::with_capacity(0);
        let keys: Vec<_> = (0..1000).map(|v| s.insert(v)).collect();
        for &(i, g) in &keys[1..] {
            s.remove(i, g);
        }
        s.trim();
        assert_eq!(s.get(keys[0].0, keys[0].1), Some(&0));
        assert_eq!(s.keys().count(), 1);
        let (i, g) = s.insert(7);
        assert!(i < 1000);
        assert!(
            keys.iter().all(|&k| k != (i, g)),
            "no old id matches the new occupant"
        );
    }
}
