//! Connection slots addressed by [`ConnId`] (index, generation). A slot's generation comes
//! from one counter per slab, so a stale id (a late completion, or an id the application kept)
//! never matches the slot's next occupant, even after the slab was trimmed.

use crate::id::ConnId;

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

    /// Insert, returning the new occupant's id.
    pub(crate) fn insert(&mut self, value: T) -> ConnId {
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & ConnId::GEN_MASK;
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
        ConnId::new(index, generation)
    }

    pub(crate) fn get(&self, id: ConnId) -> Option<&T> {
        match self.slots.get(id.index as usize)? {
            Slot::Used { generation, value } if *generation == id.generation => Some(value),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        match self.slots.get_mut(id.index as usize)? {
            Slot::Used { generation, value } if *generation == id.generation => Some(value),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, id: ConnId) -> Option<T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if !matches!(slot, Slot::Used { generation, .. } if *generation == id.generation) {
            return None;
        }
        let Slot::Used { value, .. } = std::mem::replace(slot, Slot::Free) else {
            unreachable!("checked above")
        };
        self.free.push(id.index);
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

    /// The id of every occupied slot.
    pub(crate) fn keys(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| match s {
            Slot::Used { generation, .. } => Some(ConnId::new(i as u32, *generation)),
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
        let a = s.insert("a");
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_eq!(a.index, b.index, "the slot is reused");
        assert_ne!(a, b);
        assert_eq!(s.get(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn trim_keeps_live_slots_and_fresh_generations() {
        let mut s = Slab::with_capacity(0);
        let keys: Vec<_> = (0..1000).map(|v| s.insert(v)).collect();
        for &k in &keys[1..] {
            s.remove(k);
        }
        s.trim();
        assert_eq!(s.get(keys[0]), Some(&0));
        assert_eq!(s.keys().count(), 1);
        let n = s.insert(7);
        assert!(n.index < 1000);
        assert!(
            keys.iter().all(|&k| k != n),
            "no old id matches the new occupant"
        );
    }
}
