//! The one connection id: (slot index, generation). The slab hands it out, the io_uring
//! driver carries it in `user_data` and in each send buffer, the epoll driver in its token,
//! the timing wheel and the pub/sub registry key on it, and the application addresses
//! connections with it. A slot's generation changes on every reuse, so a stale id (a late
//! completion, an event for a closed socket, an id the application kept) never matches the
//! slot's next occupant.

/// A connection's id, valid on the worker that accepted it. Ids are never reused while a
/// connection could still be referred to: a closed connection's id matches nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl ConnId {
    /// Generations are 24 bits: the io_uring driver packs (operation, generation, index) into
    /// a 64-bit `user_data`.
    pub(crate) const GEN_MASK: u32 = (1 << 24) - 1;

    pub(crate) fn new(index: u32, generation: u32) -> ConnId {
        ConnId {
            index,
            generation: generation & Self::GEN_MASK,
        }
    }

    /// The id as one integer (the epoll driver's token).
    pub(crate) fn to_u64(self) -> u64 {
        u64::from(self.generation) << 32 | u64::from(self.index)
    }

    /// The inverse of [`to_u64`](Self::to_u64).
    pub(crate) fn from_u64(v: u64) -> ConnId {
        ConnId::new(v as u32, (v >> 32) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::ConnId;

    #[test]
    fn round_trips_through_one_integer() {
        for id in [
            ConnId::new(0, 0),
            ConnId::new(u32::MAX, ConnId::GEN_MASK),
            ConnId::new(7, 1 << 23),
        ] {
            assert_eq!(ConnId::from_u64(id.to_u64()), id);
        }
        assert_eq!(
            ConnId::new(1, 1 << 24).generation,
            0,
            "generations wrap at 24 bits"
        );
    }
}
