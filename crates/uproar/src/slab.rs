//! Connection slots addressed by [`ConnId`] (index, generation). A slot's generation comes
//! from one counter per slab, so a stale id (a late completion, or an id the application kept)
//! never matches the slot's next occupant, even after the slab was trimmed.

use crate::id::ConnId;

/// A value that carries the generation of the id it is stored under, so that a slot is the
/// value alone: no tag and no generation beside it (8 bytes of every connection's slot).
pub(crate) trait Slotted {
    fn generation(&self) -> u32;
    fn set_generation(&mut self, generation: u32);
}

#[derive(Debug)]
pub(crate) struct Slab<T> {
    /// `None` is a free slot; `Option<T>` costs nothing over `T` when `T` has a niche (an
    /// enum inside it), as a connection does.
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    len: usize,
    next_generation: u32,
}

impl<T: Slotted> Slab<T> {
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
    pub(crate) fn insert(&mut self, mut value: T) -> ConnId {
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & ConnId::GEN_MASK;
        value.set_generation(generation);
        let index = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(value);
                i
            }
            None => {
                self.slots.push(Some(value));
                (self.slots.len() - 1) as u32
            }
        };
        self.len += 1;
        ConnId::new(index, generation)
    }

    pub(crate) fn get(&self, id: ConnId) -> Option<&T> {
        self.slots
            .get(id.index as usize)?
            .as_ref()
            .filter(|v| v.generation() == id.generation)
    }

    pub(crate) fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        self.slots
            .get_mut(id.index as usize)?
            .as_mut()
            .filter(|v| v.generation() == id.generation)
    }

    pub(crate) fn remove(&mut self, id: ConnId) -> Option<T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.as_ref()?.generation() != id.generation {
            return None;
        }
        let value = slot.take();
        self.free.push(id.index);
        self.len -= 1;
        value
    }

    /// Every occupied slot's value.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> + '_ {
        self.slots.iter().flatten()
    }

    /// The id of every occupied slot.
    pub(crate) fn keys(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some(ConnId::new(i as u32, s.as_ref()?.generation())))
    }

    /// After a burst: drop free slots at the end (their memory is reused by the next burst
    /// without growing), when at most a quarter of the slots are in use.
    pub(crate) fn trim(&mut self) {
        if self.len * 4 > self.slots.len() || self.slots.len() < 64 {
            return;
        }
        while matches!(self.slots.last(), Some(None)) {
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

    /// A value with its generation, as a connection carries it.
    #[derive(Debug, PartialEq)]
    struct V<T>(T, u32);

    impl<T> Slotted for V<T> {
        fn generation(&self) -> u32 {
            self.1
        }
        fn set_generation(&mut self, generation: u32) {
            self.1 = generation;
        }
    }

    #[test]
    fn stale_ids_never_match_a_reused_slot() {
        let mut s = Slab::with_capacity(0);
        let a = s.insert(V("a", 0));
        assert_eq!(s.remove(a).map(|v| v.0), Some("a"));
        let b = s.insert(V("b", 0));
        assert_eq!(a.index, b.index, "the slot is reused");
        assert_ne!(a, b);
        assert_eq!(s.get(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get(b).map(|v| v.0), Some("b"));
        assert_eq!(
            s.get(b).map(|v| v.1),
            Some(b.generation),
            "the value carries its id's generation"
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn trim_keeps_live_slots_and_fresh_generations() {
        let mut s = Slab::with_capacity(0);
        let keys: Vec<_> = (0..1000).map(|v| s.insert(V(v, 0))).collect();
        for &k in &keys[1..] {
            s.remove(k);
        }
        s.trim();
        assert_eq!(s.get(keys[0]).map(|v| v.0), Some(0));
        assert_eq!(s.keys().count(), 1);
        let n = s.insert(V(7, 0));
        assert!(n.index < 1000);
        assert!(
            keys.iter().all(|&k| k != n),
            "no old id matches the new occupant"
        );
    }
}
