//! The provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19): a pool of equal
//! receive buffers the kernel picks from when a multishot recv has data, so an idle
//! connection holds no read buffer at all.
//!
//! Ownership of each buffer id moves between the kernel and us: the kernel owns every id
//! published in the ring; a recv completion hands one id to us ([`BufRing::take`]); we hand it
//! back with [`BufRing::recycle`]. `owned` records the ids we hold, so a slice is only ever
//! made of a buffer the kernel is not writing to.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

use crate::sys::Mmap;

/// The buffer group id of the worker's one pool.
pub(crate) const BGID: u16 = 0;

#[derive(Debug)]
pub(crate) struct BufRing {
    /// The ring of entries the kernel reads (page-aligned, `entries` x 16 bytes).
    ring: Mmap,
    /// The buffers themselves, `count` x `size` bytes.
    bufs: Mmap,
    size: u32,
    count: u16,
    /// Our copy of the tail: how many entries we have ever published.
    tail: u16,
    /// Ids currently handed to us by the kernel.
    owned: Vec<bool>,
}

impl BufRing {
    /// `count` buffers of `size` bytes; `count` must be a power of two up to 32768.
    pub(crate) fn new(count: u16, size: u32, prefault: bool) -> io::Result<BufRing> {
        assert!(count.is_power_of_two() && count <= 1 << 15);
        let ring = Mmap::anon(usize::from(count) * size_of::<BufRingEntry>(), true)?;
        let bufs = Mmap::anon(usize::from(count) * size as usize, prefault)?;
        let mut br = BufRing {
            ring,
            bufs,
            size,
            count,
            tail: 0,
            owned: vec![true; usize::from(count)],
        };
        for bid in 0..count {
            br.recycle(bid);
        }
        Ok(br)
    }

    /// Address and entry count, for registration with the kernel.
    pub(crate) fn ring_addr(&self) -> (u64, u16) {
        (self.ring.as_ptr() as u64, self.count)
    }

    /// Record that a completion handed `bid` to us; its first `len` bytes hold data.
    /// Returns the data, or `None` for an id that is out of range or already ours (a kernel
    /// or bookkeeping bug: better lost data than a race).
    pub(crate) fn take(&mut self, bid: u16, len: usize) -> Option<&mut [u8]> {
        let owned = self.owned.get_mut(usize::from(bid))?;
        if *owned || len > self.size as usize {
            return None;
        }
        *owned = true;
        let start = usize::from(bid) * self.size as usize;
        debug_assert!(start + len <= self.bufs.len());
        // SAFETY: `bid < count`, so `start + len` is inside the buffer mapping; the kernel
        // handed this id to us (it was not ours, now it is) and will not write to it until
        // `recycle` publishes it again, which needs `&mut self` and so ends this borrow.
        Some(unsafe { std::slice::from_raw_parts_mut(self.bufs.as_ptr().add(start), len) })
    }

    /// How many buffers we hold (the rest are the kernel's). Zero between loop turns.
    pub(crate) fn held(&self) -> usize {
        self.owned.iter().filter(|&&o| o).count()
    }

    /// Give `bid` back to the kernel. Ids we do not hold are ignored.
    pub(crate) fn recycle(&mut self, bid: u16) {
        let Some(owned) = self.owned.get_mut(usize::from(bid)) else {
            return;
        };
        if !*owned {
            return;
        }
        *owned = false;
        let base = self.ring.as_ptr().cast::<BufRingEntry>();
        let idx = usize::from(self.tail & (self.count - 1));
        // SAFETY: `idx < count`, inside the ring mapping, which is aligned for entries. The
        // entry at the tail is not visible to the kernel until the tail moves past it. The
        // setters write addr, len and bid only, never the `resv` field that entry 0 shares
        // with the ring's tail.
        let entry = unsafe { &mut *base.add(idx) };
        entry.set_addr(self.bufs.as_ptr() as u64 + u64::from(bid) * u64::from(self.size));
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field is the u16 at offset 14 of entry 0, inside the mapping and
        // 2-byte aligned; the kernel reads it concurrently, so it is written atomically with
        // release ordering, after the entry it publishes.
        let tail = unsafe { AtomicU16::from_ptr(BufRingEntry::tail(base).cast_mut()) };
        tail.store(self.tail, Ordering::Release);
    }
}
