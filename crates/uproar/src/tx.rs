//! A connection's outgoing bytes. Small frames are copied into a staging buffer as they are
//! sent (so a burst of replies becomes one contiguous chunk); shared frames (one encoding
//! fanned out to many connections) are queued by reference. At the end of a loop turn the
//! queue goes to the kernel as one `send`/`sendmsg`; at most one is in flight per connection,
//! and what is queued meanwhile is coalesced into the next.
//!
//! A connection holds a `Tx` only while it has something to send: an idle connection pays
//! one null pointer for it. Idle queues go back to the worker's [`TxPool`] with their buffers,
//! so a connection that sends every turn does not allocate every turn.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// Most chunks in one send (`sendmsg` or `writev`): well under `IOV_MAX` (1024), enough to
/// coalesce a backlog.
pub(crate) const MAX_IOV: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct Tx {
    /// Chunks not yet handed to the kernel, in order.
    queue: VecDeque<Bytes>,
    /// Frames copied in since the last flush; becomes the queue's last chunk at flush.
    staging: BytesMut,
    /// Bytes accepted for sending and not yet written by the kernel.
    pub(crate) buffered: usize,
    /// A send is in flight (its chunks are owned by the ring).
    pub(crate) in_flight: bool,
    /// A send returned `Queued`: tell the application when the backlog is gone.
    pub(crate) wants_drain: bool,
    /// The queue's first chunk is the rest of a chunk the kernel took part of: the peer has
    /// the start of a frame and must get its end before anything else.
    front_partial: bool,
    /// An HTTP response was queued (a 101 or a plain answer): not pooled afterwards.
    pub(crate) http: bool,
}

/// Least staging capacity reserved at once; why 256 bytes: a 101 response or a few small
/// replies fit, and ten thousand connections upgrading at once do not each pin a page.
const STAGING: usize = 256;

/// Most idle send queues a worker keeps for reuse; why 1024: one per connection served in a
/// busy turn (the epoll driver takes up to 1024 events a turn), and the pool is trimmed to
/// what the last 100 ms used, so a quiet worker holds none.
const POOL_MAX: usize = 1024;

/// Largest staging buffer kept with a pooled queue; why 4 KiB: a burst of small replies fits,
/// and the pool's worst case (1024 queues) stays a few MiB, for at most 0.2 s.
const POOLED_STAGING: usize = 4096;

/// Idle send queues with their buffers (the staging buffer, the chunk queue's array), for the
/// worker's next connections to send: without it, every connection would allocate the queue,
/// its array and its staging buffer (then grow it) each turn it sends, and free them after.
#[derive(Debug, Default)]
pub(crate) struct TxPool {
    /// Boxed, as connections hold them: handing one over moves a pointer, not the queue.
    #[allow(clippy::vec_box)]
    free: Vec<Box<Tx>>,
    /// The fewest queues the pool held since the last trim: that many went unused.
    low: usize,
}

impl TxPool {
    /// An empty send queue, reused if one is pooled.
    pub(crate) fn take(&mut self) -> Box<Tx> {
        match self.free.pop() {
            Some(tx) => {
                self.low = self.low.min(self.free.len());
                tx
            }
            None => Box::default(),
        }
    }

    /// Keep an idle queue for reuse (a busy one, or one over the pool's bounds, is dropped).
    pub(crate) fn give(&mut self, mut tx: Box<Tx>) {
        if self.free.len() < POOL_MAX && tx.recycle() {
            self.free.push(tx);
        }
    }

    /// Free the queues the pool did not need since the last trim (called every 100 ms).
    pub(crate) fn trim(&mut self) {
        let unused = self.low.min(self.free.len());
        self.free.truncate(self.free.len() - unused);
        self.free.shrink_to(self.free.len().max(16));
        self.low = self.free.len();
    }

    /// Queues held for reuse.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.free.len()
    }
}

impl Tx {
    /// Make an idle queue ready for another connection, keeping its buffers if they are
    /// within the pool's bounds and no one else holds them; false if it is not idle.
    fn recycle(&mut self) -> bool {
        // A queue that carried an HTTP response is not kept: after a burst of upgrades the
        // pool would be full of queues no WebSocket traffic asked for.
        if !self.is_idle() || self.http {
            return false;
        }
        self.buffered = 0;
        self.wants_drain = false;
        self.front_partial = false;
        self.staging.clear();
        // Asking for one byte more than the capacity left reclaims the whole buffer, which
        // succeeds only if no chunk cut from it is still held; the capacity is then the
        // buffer's size.
        let left = self.staging.capacity();
        if !self.staging.try_reclaim(left + 1) || self.staging.capacity() > POOLED_STAGING {
            self.staging = BytesMut::new();
        }
        if self.queue.capacity() > MAX_IOV {
            self.queue = VecDeque::new();
        }
        true
    }

    /// Copy a frame (header and payload) in.
    /// Inlined: it runs for every message sent, and as a call it spent a third of its
    /// instructions saving and restoring registers.
    #[inline(always)]
    pub(crate) fn push_copy(&mut self, head: &[u8], payload: &[u8]) {
        let n = head.len() + payload.len();
        if self.staging.capacity() - self.staging.len() < n {
            self.staging.reserve(STAGING.max(n));
        }
        match *head {
            // The usual header (a payload under 126 bytes) as a fixed-size copy, inlined
            // instead of a call to `memcpy` for two bytes.
            [b0, b1] => self.staging.extend_from_slice(&[b0, b1]),
            _ => self.staging.extend_from_slice(head),
        }
        self.staging.extend_from_slice(payload);
        self.buffered += n;
    }

    /// Write up to `room` bytes in place with `f` (encryption into the ciphertext queue): `f`
    /// returns how many it wrote, or fails and nothing is queued.
    pub(crate) fn push_with<E>(
        &mut self,
        room: usize,
        f: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let start = self.staging.len();
        self.staging.resize(start + room, 0);
        match f(&mut self.staging[start..]) {
            Ok(n) => {
                self.staging.truncate(start + n.min(room));
                self.buffered += n.min(room);
                Ok(n)
            }
            Err(e) => {
                self.staging.truncate(start);
                Err(e)
            }
        }
    }

    /// Queue an encoded frame by reference (no copy).
    pub(crate) fn push_shared(&mut self, frame: Bytes) {
        self.seal();
        self.buffered += frame.len();
        self.queue.push_back(frame);
    }

    /// Move staged bytes into the queue as one chunk.
    fn seal(&mut self) {
        if !self.staging.is_empty() {
            self.queue.push_back(self.staging.split().freeze());
        }
    }

    /// Drop every whole frame not yet handed to the kernel (a slow consumer being closed: its
    /// close frame should not wait behind the backlog it is being closed for). The rest of a
    /// frame the kernel took part of is kept, so what follows starts on a frame boundary
    /// (every chunk holds whole frames).
    pub(crate) fn discard_queued(&mut self) {
        let keep = usize::from(self.front_partial);
        let queued: usize =
            self.queue.iter().skip(keep).map(|c| c.len()).sum::<usize>() + self.staging.len();
        self.buffered -= queued;
        self.queue.truncate(keep);
        self.staging.clear();
    }

    /// Whether there is something to hand to the kernel now.
    pub(crate) fn ready(&self) -> bool {
        !self.in_flight && (!self.queue.is_empty() || !self.staging.is_empty())
    }

    /// Nothing queued and nothing in flight.
    pub(crate) fn is_idle(&self) -> bool {
        !self.in_flight && self.queue.is_empty() && self.staging.is_empty()
    }

    /// Move the next batch (at most [`MAX_IOV`] chunks) into `out` and mark it in flight.
    pub(crate) fn take_batch(&mut self, out: &mut Vec<Bytes>) {
        debug_assert!(self.ready());
        self.seal();
        let n = self.queue.len().min(MAX_IOV);
        out.extend(self.queue.drain(..n));
        self.in_flight = true;
        self.front_partial = false;
    }

    /// The send of `chunks` completed having written `written` bytes: what was not written
    /// goes back to the front of the queue, in order.
    pub(crate) fn complete(&mut self, chunks: &mut Vec<Bytes>, mut written: usize) {
        self.in_flight = false;
        let mut rest = Vec::new();
        for mut c in chunks.drain(..) {
            if written >= c.len() {
                written -= c.len();
                self.buffered -= c.len();
            } else {
                self.front_partial |= written > 0;
                c.advance(written);
                self.buffered -= written;
                written = 0;
                rest.push(c);
            }
        }
        for c in rest.into_iter().rev() {
            self.queue.push_front(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_all(tx: &mut Tx, write_limit: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut batch = Vec::new();
        while tx.ready() {
            tx.take_batch(&mut batch);
            let joined: Vec<u8> = batch.iter().flat_map(|c| c.iter().copied()).collect();
            let n = joined.len().min(write_limit);
            wire.extend_from_slice(&joined[..n]);
            tx.complete(&mut batch, n);
        }
        wire
    }

    /// Copied and shared frames go out in the order they were sent, across short writes of
    /// every size, and the buffered count returns to zero.
    #[test]
    fn order_and_accounting_survive_short_writes() {
        for limit in 1..40 {
            let mut tx = Tx::default();
            tx.push_copy(b"h1", b"aaaa");
            tx.push_shared(Bytes::from_static(b"SHARED"));
            tx.push_copy(b"h2", b"bb");
            tx.push_copy(b"h3", b"");
            assert_eq!(tx.buffered, 6 + 6 + 4 + 2);
            let wire = drain_all(&mut tx, limit);
            assert_eq!(wire, b"h1aaaaSHAREDh2bbh3", "limit {limit}");
            assert_eq!(tx.buffered, 0);
            assert!(tx.is_idle());
        }
    }

    /// Discarding keeps what is in flight (the kernel holds it) and drops the rest.
    #[test]
    fn discard_keeps_only_what_is_in_flight() {
        let mut tx = Tx::default();
        tx.push_copy(b"in", b"flight");
        let mut batch = Vec::new();
        tx.take_batch(&mut batch);
        tx.push_shared(Bytes::from_static(b"queued"));
        tx.push_copy(b"staged", b"");
        tx.discard_queued();
        assert_eq!(tx.buffered, 8, "only the in-flight bytes remain counted");
        tx.push_copy(b"close", b"");
        tx.complete(&mut batch, 8);
        let mut rest = Vec::new();
        tx.take_batch(&mut rest);
        assert_eq!(rest.concat(), b"close");
    }

    /// A slow consumer closed right after a short send: the peer has half a frame, so the
    /// other half goes out before the close frame, and only whole frames are dropped.
    #[test]
    fn discard_after_a_short_send_keeps_the_rest_of_the_half_written_frame() {
        let mut tx = Tx::default();
        tx.push_shared(Bytes::from_static(b"[frame-one]"));
        tx.push_shared(Bytes::from_static(b"[frame-two]"));
        let mut batch = Vec::new();
        tx.take_batch(&mut batch);
        tx.complete(&mut batch, 4);
        tx.push_shared(Bytes::from_static(b"[frame-three]"));
        tx.discard_queued();
        tx.push_copy(b"[close]", b"");
        let mut wire = b"[fra".to_vec();
        wire.extend(drain_all(&mut tx, usize::MAX));
        assert_eq!(wire, b"[frame-one][close]");
        assert_eq!(tx.buffered, 0);
    }

    /// One connection's turn: replies staged, sent whole, the idle queue given back.
    fn one_turn(pool: &mut TxPool, replies: usize, size: usize) -> (*const Tx, *const u8) {
        let mut tx = pool.take();
        for _ in 0..replies {
            tx.push_copy(&[0x81, size as u8], &vec![b'x'; size]);
        }
        let mut batch = Vec::new();
        tx.take_batch(&mut batch);
        let at = batch[0].as_ptr();
        let n = batch.iter().map(Bytes::len).sum();
        tx.complete(&mut batch, n);
        let addr: *const Tx = &*tx;
        pool.give(tx);
        (addr, at)
    }

    /// A connection that sends every turn reuses the same queue and the same staging
    /// buffer: no allocation per turn once the buffer has grown to the turn's size.
    #[test]
    fn a_pooled_queue_and_its_staging_buffer_are_reused() {
        let mut pool = TxPool::default();
        let (q0, _) = one_turn(&mut pool, 16, 20);
        let (q1, b1) = one_turn(&mut pool, 16, 20);
        let (q2, b2) = one_turn(&mut pool, 16, 20);
        assert_eq!(q0, q1);
        assert_eq!(q1, q2);
        assert_eq!(b1, b2, "the staging buffer is reclaimed, not reallocated");
        assert_eq!(pool.len(), 1);
        // Reused queues start empty.
        let tx = pool.take();
        assert_eq!(tx.buffered, 0);
        assert!(tx.is_idle() && !tx.wants_drain && !tx.front_partial);
    }

    /// A staging buffer larger than the bound, or still shared with a chunk someone holds,
    /// is not kept with the pooled queue.
    #[test]
    fn oversized_or_shared_staging_is_not_pooled() {
        let mut pool = TxPool::default();
        let mut tx = pool.take();
        tx.push_copy(&[], &vec![0; POOLED_STAGING * 2]);
        let mut batch = Vec::new();
        tx.take_batch(&mut batch);
        tx.complete(&mut batch, POOLED_STAGING * 2);
        pool.give(tx);
        let mut tx = pool.take();
        assert_eq!(tx.staging.capacity(), 0, "the large buffer was freed");

        tx.push_copy(b"ab", b"cd");
        tx.take_batch(&mut batch);
        let held = batch[0].clone();
        tx.complete(&mut batch, 4);
        pool.give(tx);
        let mut tx = pool.take();
        assert_eq!(
            tx.staging.capacity(),
            0,
            "a shared buffer is not written into again"
        );
        tx.push_copy(b"zz", b"zz");
        assert_eq!(&held[..], b"abcd");
    }

    /// A busy queue, or one that carried an HTTP response, is not pooled; the pool holds at most POOL_MAX, and a trim frees what
    /// the last period did not take.
    #[test]
    fn the_pool_is_bounded_and_trimmed_to_use() {
        let mut pool = TxPool::default();
        let mut busy = pool.take();
        busy.push_copy(b"h", b"");
        pool.give(busy);
        assert_eq!(
            pool.len(),
            0,
            "a queue with bytes in it is dropped, not pooled"
        );
        let mut http = pool.take();
        http.http = true;
        pool.give(http);
        assert_eq!(
            pool.len(),
            0,
            "a queue that carried an HTTP response is not pooled"
        );

        for _ in 0..POOL_MAX + 10 {
            pool.give(Box::default());
        }
        assert_eq!(pool.len(), POOL_MAX);
        pool.trim();
        assert_eq!(
            pool.len(),
            POOL_MAX,
            "given since the last trim: kept one period"
        );
        pool.trim();
        assert_eq!(pool.len(), 0, "none taken in a whole period: all freed");

        for _ in 0..100 {
            pool.give(Box::default());
        }
        pool.trim();
        assert_eq!(pool.len(), 100);
        // A busy period needs 30 at once.
        let taken: Vec<_> = (0..30).map(|_| pool.take()).collect();
        for t in taken {
            pool.give(t);
        }
        pool.trim();
        assert_eq!(
            pool.len(),
            30,
            "the 70 not needed in the last period are freed"
        );
    }

    #[test]
    fn a_batch_is_at_most_max_iov_chunks() {
        let mut tx = Tx::default();
        for _ in 0..(MAX_IOV * 2 + 3) {
            tx.push_shared(Bytes::from_static(b"x"));
        }
        let mut batch = Vec::new();
        tx.take_batch(&mut batch);
        assert_eq!(batch.len(), MAX_IOV);
        assert!(!tx.ready(), "one send in flight at a time");
        tx.complete(&mut batch, MAX_IOV);
        assert!(tx.ready());
    }
}
