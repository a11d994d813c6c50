//! A worker's connections and the [`Ctx`] that callbacks reach them through.

use std::fmt;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use uproar_pubsub::{Counters, OnFull, Outcome, Policy, Registry, Sink};
use uproar_wire::{CloseCode, Connection, DataKind};

use crate::app::{ConnId, Frame, SendStatus};
use crate::config::{BackpressurePolicy, Config};
use crate::server::{Remote, Shared};
use crate::slab::Slab;
use crate::stats::{Counts, WorkerStats};
use crate::timer::{self, Key, Wheel};
use crate::tx::Tx;

/// One connection's slot.
pub(crate) struct Conn<C> {
    pub(crate) fd: RawFd,
    /// A multishot recv is armed.
    pub(crate) recv_armed: bool,
    /// The peer's FIN arrived: nothing more will be read.
    pub(crate) eof: bool,
    /// A send is in flight (its frames are owned by the ring).
    pub(crate) sending: bool,
    /// In the worker's dirty list for this turn.
    pub(crate) dirty: bool,
    /// The wheel tick this connection is armed for, or [`timer::NONE`].
    pub(crate) timer: u32,
    /// The wheel tick by which an HTTP request must be complete, or a lingering close done.
    pub(crate) deadline: u32,
    /// Outgoing bytes; allocated only while there are some.
    pub(crate) tx: Option<Box<Tx>>,
    pub(crate) state: State<C>,
}

/// Held inline (not boxed): the slot is as large as its largest state anyway, and an idle
/// WebSocket then costs one slot and no allocation.
pub(crate) enum State<C> {
    /// Reading an HTTP request (an upgrade, or plain HTTP with keep-alive). The bytes of a
    /// request that arrived in pieces are held here; empty (unallocated) otherwise.
    Http(Vec<u8>),
    /// An open WebSocket.
    Ws(Ws<C>),
    /// Finishing politely: once the send queue is empty our FIN goes out; then we read (and
    /// discard) until the peer's FIN or the deadline, so the peer sees our last bytes rather
    /// than a reset.
    Linger { fin_sent: bool },
    /// Aborted: the socket is shut down; the slot is freed when no operation is in flight.
    Dead,
}

pub(crate) struct Ws<C> {
    pub(crate) proto: Connection,
    pub(crate) user: C,
    /// The reason in the peer's close frame, if it had one. A thin pointer (not `Box<str>`):
    /// every slot is 8 bytes smaller, and a close reason is rare.
    #[allow(clippy::box_collection)]
    pub(crate) peer_reason: Option<Box<String>>,
}

/// A worker's context, given to every callback: its connections, the time, its index.
pub struct Ctx<C> {
    pub(crate) conns: Slab<Conn<C>>,
    pub(crate) dirty: Vec<Key>,
    pub(crate) wheel: Wheel,
    pub(crate) now: Instant,
    pub(crate) worker: usize,
    pub(crate) cfg: Arc<Config>,
    pub(crate) wire: Arc<uproar_wire::Config>,
    pub(crate) shutting_down: bool,
    pub(crate) scratch: Vec<u8>,
    /// Topics and subscribers of this worker.
    pub(crate) registry: Registry<Key>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) counts: Counts,
    /// Open WebSockets on this worker.
    pub(crate) websockets: u64,
    /// Bytes queued on this worker, summed once a second (a gauge).
    pub(crate) buffered_gauge: u64,
}

impl<C> fmt::Debug for Ctx<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("worker", &self.worker)
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl<C> Ctx<C> {
    pub(crate) fn new(worker: usize, shared: Arc<Shared>, now: Instant) -> Ctx<C> {
        let cfg = shared.config.clone();
        let policy = Policy {
            max_buffered: cfg.max_buffered_bytes,
            on_full: match cfg.backpressure {
                BackpressurePolicy::Close => OnFull::Close,
                BackpressurePolicy::Drop => OnFull::Drop,
            },
        };
        // 100 ms ticks over 1024 slots: timeouts are seconds long, and the wheel spans 102 s
        // before an entry is parked and re-armed.
        let wheel = Wheel::new(now, std::time::Duration::from_millis(100), 1024);
        Ctx {
            conns: Slab::with_capacity(cfg.max_connections.div_ceil(cfg.threads)),
            dirty: Vec::new(),
            wheel,
            now,
            worker,
            wire: Arc::new(cfg.wire()),
            cfg,
            shutting_down: false,
            scratch: Vec::new(),
            registry: Registry::new(policy),
            shared,
            counts: Counts::default(),
            websockets: 0,
            buffered_gauge: 0,
        }
    }

    /// This worker's counters, now.
    pub fn stats(&self) -> WorkerStats {
        let c = &self.counts;
        let p = self.registry.counters();
        WorkerStats {
            connections: self.conns.len() as u64,
            websockets: self.websockets,
            buffered_bytes: self.buffered_gauge,
            accepted: c.accepted,
            upgrades: c.upgrades,
            rejections: c.rejections,
            messages_in: c.messages_in,
            bytes_in: c.bytes_in,
            messages_out: c.messages_out,
            bytes_out: c.bytes_out,
            published: p.published,
            deliveries: p.deliveries,
            drops: p.drops,
            slow_closes: p.slow_closes,
        }
    }

    /// Every worker's counters, by worker index: this one's now, the others' as of their
    /// last loop turn.
    pub fn all_stats(&self) -> Vec<WorkerStats> {
        let mut all = self.shared.stats();
        all[self.worker] = self.stats();
        all
    }

    /// Subscribe the open WebSocket `id` to `topic`; false if it already was (or is not an open
    /// WebSocket).
    pub fn subscribe(&mut self, id: ConnId, topic: &str) -> bool {
        let open = self
            .conns
            .get(id.index, id.generation)
            .is_some_and(|c| matches!(c.state, State::Ws(_)));
        open && self.registry.subscribe((id.index, id.generation), topic)
    }

    /// Unsubscribe `id` from `topic`; false if it was not subscribed.
    pub fn unsubscribe(&mut self, id: ConnId, topic: &str) -> bool {
        self.registry.unsubscribe((id.index, id.generation), topic)
    }

    /// Publish a message to `topic` on every worker: it is encoded once, queued by reference to
    /// this worker's subscribers now, and handed to the other workers' inboxes (the same
    /// buffer, no copy). Returns how many subscribers of this worker it was queued to.
    pub fn publish(&mut self, topic: &str, kind: DataKind, payload: &[u8]) -> usize {
        self.publish_frame(topic, &Frame::new(kind, payload))
    }

    /// [`publish`](Self::publish) a frame already encoded.
    pub fn publish_frame(&mut self, topic: &str, frame: &Frame) -> usize {
        // Whatever was published before this call and handed to this worker's inbox (by
        // another worker, e.g. a backend's previous `POST /publish`, or by a `Publisher`, even
        // with one worker) goes to this worker's subscribers first, whether or not this turn
        // has reached its wake-up yet.
        self.fan_out_inbox();
        if self.shared.inboxes.len() > 1 {
            let remote = Remote {
                topic: topic.into(),
                frame: frame.clone(),
            };
            for w in (0..self.shared.inboxes.len()).filter(|&w| w != self.worker) {
                self.shared.post(w, remote.clone());
            }
        }
        self.fan_out(topic, frame)
    }

    /// Fan out what other workers and `Publisher`s handed to this worker's inbox.
    pub(crate) fn fan_out_inbox(&mut self) {
        for r in self.shared.drain(self.worker) {
            self.fan_out(&r.topic, &r.frame);
        }
    }

    /// Queue `frame` to this worker's subscribers of `topic`, under the backpressure policy.
    pub(crate) fn fan_out(&mut self, topic: &str, frame: &Frame) -> usize {
        let mut sink = ConnSink {
            conns: &mut self.conns,
            dirty: &mut self.dirty,
        };
        let out = self.registry.publish(topic, frame, &mut sink);
        self.counts.messages_out += out.delivered as u64;
        self.counts.bytes_out += (out.delivered * frame.bytes.len()) as u64;
        for key in out.to_close {
            self.registry.remove(key);
            if let Some(conn) = self.conns.get_mut(key.0, key.1) {
                close_slow(conn);
                mark(&mut self.dirty, conn, key.0, key.1);
            }
        }
        out.delivered
    }

    /// This worker's pub/sub counters: messages published here or received from other workers,
    /// deliveries, drops and slow-consumer closes.
    pub fn pubsub_counters(&self) -> Counters {
        self.registry.counters()
    }

    /// Topics with subscribers on this worker.
    pub fn topics(&self) -> usize {
        self.registry.topic_count()
    }

    /// The time at the start of this loop turn (one clock read per turn).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// This worker's index, from 0.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Connections (HTTP and WebSocket) open on this worker.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The server is shutting down: connections are being closed with 1001.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The state of an open WebSocket connection.
    pub fn conn(&self, id: ConnId) -> Option<&C> {
        match &self.conns.get(id.index, id.generation)?.state {
            State::Ws(ws) => Some(&ws.user),
            _ => None,
        }
    }

    /// The state of an open WebSocket connection, mutably.
    pub fn conn_mut(&mut self, id: ConnId) -> Option<&mut C> {
        match &mut self.conns.get_mut(id.index, id.generation)?.state {
            State::Ws(ws) => Some(&mut ws.user),
            _ => None,
        }
    }

    /// Bytes queued for `id` that its socket has not taken yet.
    pub fn buffered_amount(&self, id: ConnId) -> usize {
        self.conns
            .get(id.index, id.generation)
            .and_then(|c| c.tx.as_ref())
            .map_or(0, |t| t.buffered)
    }

    /// Send a whole message to `id` (copied into its send buffer).
    pub fn send(&mut self, id: ConnId, kind: DataKind, payload: &[u8]) -> SendStatus {
        self.send_with(id, |ws, tx| {
            let Ok((head, _)) = ws
                .proto
                .data_head(kind.opcode(), true, payload.len() as u64)
            else {
                return false;
            };
            tx.push_copy(head.as_bytes(), payload);
            true
        })
    }

    /// Send a frame encoded once for many connections, by reference.
    pub fn send_frame(&mut self, id: ConnId, frame: &Frame) -> SendStatus {
        self.send_with(id, |ws, tx| {
            if !ws.proto.can_send() {
                return false;
            }
            tx.push_shared(frame.bytes.clone());
            true
        })
    }

    fn send_with(
        &mut self,
        id: ConnId,
        push: impl FnOnce(&mut Ws<C>, &mut Tx) -> bool,
    ) -> SendStatus {
        let max = self.cfg.max_buffered_bytes;
        let policy = self.cfg.backpressure;
        let Some(conn) = self.conns.get_mut(id.index, id.generation) else {
            return SendStatus::Dropped;
        };
        let State::Ws(ws) = &mut conn.state else {
            return SendStatus::Dropped;
        };
        let tx = conn.tx.get_or_insert_with(Box::default);
        // The limit applies to the backlog already there, so one message larger than the
        // limit can still be sent to a connection that keeps up; the memory bound is the limit
        // plus one message.
        if tx.buffered > max {
            if policy == BackpressurePolicy::Close {
                close_slow(conn);
            }
            mark(&mut self.dirty, conn, id.index, id.generation);
            return SendStatus::Dropped;
        }
        let backlog = tx.in_flight;
        let before = tx.buffered;
        if !push(ws, tx) {
            return SendStatus::Dropped;
        }
        self.counts.messages_out += 1;
        self.counts.bytes_out += (tx.buffered - before) as u64;
        let status = if backlog {
            tx.wants_drain = true;
            SendStatus::Queued
        } else {
            SendStatus::Sent
        };
        mark(&mut self.dirty, conn, id.index, id.generation);
        status
    }

    /// Start the close handshake with `id` (`reason` at most 123 bytes). Does nothing if it
    /// is already closing or gone.
    pub fn close(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        let Some(conn) = self.conns.get_mut(id.index, id.generation) else {
            return;
        };
        if let State::Ws(ws) = &mut conn.state {
            let _ = ws.proto.queue_close(code, reason);
            mark(&mut self.dirty, conn, id.index, id.generation);
        }
    }

    /// Queue raw bytes (an HTTP response) on connection `key`.
    pub(crate) fn queue_raw(&mut self, key: Key, bytes: &[u8]) {
        if let Some(conn) = self.conns.get_mut(key.0, key.1) {
            conn.tx
                .get_or_insert_with(Box::default)
                .push_copy(&[], bytes);
            mark(&mut self.dirty, conn, key.0, key.1);
        }
    }

    /// Put `key` on this turn's list of connections to flush and re-arm.
    pub(crate) fn touch(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(key.0, key.1) {
            mark(&mut self.dirty, conn, key.0, key.1);
        }
    }

    /// Arm the connection's timer for its next deadline, if earlier than the armed one.
    pub(crate) fn arm_timer(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key.0, key.1) else {
            return;
        };
        let t = match &conn.state {
            State::Http(_) | State::Linger { .. } => conn.deadline,
            State::Ws(ws) => ws
                .proto
                .poll_timeout()
                .map_or(timer::NONE, |d| self.wheel.tick_of(d)),
            State::Dead => timer::NONE,
        };
        if t != timer::NONE && (conn.timer == timer::NONE || t < conn.timer) {
            conn.timer = self.wheel.insert_at(key, t);
        }
    }

    /// The wheel tick `timeout` from now.
    pub(crate) fn deadline_in(&self, timeout: std::time::Duration) -> u32 {
        self.wheel.tick_of(self.now + timeout)
    }
}

/// Close a slow consumer with 1008. Its unsent backlog is dropped first, so the close frame is
/// next after what the kernel already holds (a client that reads again learns why); if it never
/// reads again, the close timeout drops the connection.
fn close_slow<C>(conn: &mut Conn<C>) {
    if let State::Ws(ws) = &mut conn.state
        && ws.proto.can_send()
    {
        if let Some(tx) = &mut conn.tx {
            tx.discard_queued();
        }
        let _ = ws
            .proto
            .queue_close(CloseCode::POLICY_VIOLATION, "slow consumer");
    }
}

/// The connections as pub/sub sees them.
struct ConnSink<'a, C> {
    conns: &'a mut Slab<Conn<C>>,
    dirty: &'a mut Vec<Key>,
}

impl<C> Sink<Key, Frame> for ConnSink<'_, C> {
    fn buffered(&self, key: Key) -> usize {
        self.conns
            .get(key.0, key.1)
            .and_then(|c| c.tx.as_ref())
            .map_or(0, |t| t.buffered)
    }

    fn deliver(&mut self, key: Key, frame: &Frame) -> Outcome {
        let Some(conn) = self.conns.get_mut(key.0, key.1) else {
            return Outcome::Gone;
        };
        let State::Ws(ws) = &conn.state else {
            return Outcome::Gone;
        };
        if !ws.proto.can_send() {
            return Outcome::Gone;
        }
        conn.tx
            .get_or_insert_with(Box::default)
            .push_shared(frame.bytes.clone());
        mark(self.dirty, conn, key.0, key.1);
        Outcome::Delivered
    }
}

pub(crate) fn mark<C>(dirty: &mut Vec<Key>, conn: &mut Conn<C>, index: u32, generation: u32) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push((index, generation));
    }
}

pub(crate) fn id_of(key: Key) -> ConnId {
    ConnId {
        index: key.0,
        generation: key.1,
    }
}
#[cfg(test)]
mod tests {
    /// An idle WebSocket costs one slot and no allocation: keep the slot small (the target is
    /// 0.25 KiB of RSS per idle connection, slab slot included).
    #[test]
    fn an_idle_connection_fits_in_a_small_slot() {
        let slot = size_of::<super::Conn<()>>();
        assert!(slot <= 208, "Conn<()> grew to {slot} bytes");
        assert!(size_of::<uproar_wire::Connection>() <= 176);
    }
}
