//! A worker's connections and the [`Ctx`] that callbacks reach them through.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use uproar_pubsub::{Counters, OnFull, Outcome, Policy, Registry, Sink};
use uproar_wire::{CloseCode, DataKind};

use crate::compress::{self, WorkerZ, ZCounts};
use crate::config::{BackpressurePolicy, Config, Deflate};
use crate::conn::{Conn, Out, State, Ws};
use crate::id::ConnId;
use crate::mesh::{Remote, Shared};
use crate::message::{Frame, SendStatus};
use crate::slab::Slab;
use crate::stats::{Counts, WorkerStats};
use crate::timer::{self, Wheel};
use crate::tls::WorkerTls;
use crate::tx::{Tx, TxPool};

/// A worker's context, given to every callback: its connections, the time, its index.
pub struct Ctx<C> {
    pub(crate) conns: Slab<Conn<C>>,
    pub(crate) dirty: Vec<ConnId>,
    pub(crate) wheel: Wheel,
    pub(crate) now: Instant,
    pub(crate) worker: usize,
    pub(crate) cfg: Arc<Config>,
    pub(crate) wire: Arc<uproar_wire::Config>,
    pub(crate) shutting_down: bool,
    pub(crate) scratch: Vec<u8>,
    /// Topics and subscribers of this worker.
    pub(crate) registry: Registry<ConnId>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) counts: Counts,
    /// Open WebSockets on this worker.
    pub(crate) websockets: u64,
    /// Bytes queued on this worker, summed once a second (a gauge).
    pub(crate) buffered_gauge: u64,
    /// permessage-deflate: the worker's compressors and inflater, and counters.
    pub(crate) z: WorkerZ,
    pub(crate) zc: ZCounts,
    /// TLS: scratch buffers and counters.
    pub(crate) tls: WorkerTls,
    /// Idle send queues for reuse.
    pub(crate) tx_pool: TxPool,
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
            z: WorkerZ::default(),
            zc: ZCounts::default(),
            tls: WorkerTls::default(),
            tx_pool: TxPool::default(),
        }
    }

    /// This worker's counters, now.
    pub fn stats(&self) -> WorkerStats {
        let c = &self.counts;
        let p = self.registry.counters();
        let (refused_inbox_full, refused_stopping) = self.shared.refused(self.worker);
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
            slow_closes: p.slow_closes + c.slow_closes,
            refused_inbox_full,
            refused_stopping,
            deflate_compressed: self.zc.compressed,
            deflate_plain: self.zc.plain,
            deflate_bytes_before: self.zc.bytes_before,
            deflate_bytes_after: self.zc.bytes_after,
            inflate_corrupt: self.zc.inflate_corrupt,
            inflate_too_big: self.zc.inflate_too_big,
            tls_handshakes: self.tls.counts.handshakes,
            tls_handshake_failures: self.tls.counts.handshake_failures,
            tls_errors: self.tls.counts.errors,
            tls_plain_http: self.tls.counts.plain_http,
        }
    }

    /// Every worker's counters, by worker index: this one's now, the others' as of their
    /// last loop turn.
    pub fn all_stats(&self) -> Vec<WorkerStats> {
        let mut all = self.shared.stats();
        all[self.worker] = self.stats();
        all
    }

    /// The driver the server runs.
    pub fn driver(&self) -> crate::Driver {
        self.shared.driver
    }

    /// Subscribe the open WebSocket `id` to `topic`; false if it already was (or is not an open
    /// WebSocket).
    pub fn subscribe(&mut self, id: ConnId, topic: &str) -> bool {
        let open = self
            .conns
            .get(id)
            .is_some_and(|c| matches!(c.state, State::Ws(_)));
        let joined = open && self.registry.subscribe(id, topic);
        if joined {
            self.shared.topic_joined(topic);
        }
        joined
    }

    /// Unsubscribe `id` from `topic`; false if it was not subscribed.
    pub fn unsubscribe(&mut self, id: ConnId, topic: &str) -> bool {
        let left = self.registry.unsubscribe(id, topic);
        if left {
            self.shared.topics_left([topic]);
        }
        left
    }

    /// Take `id` off every topic (it is closing).
    pub(crate) fn leave_all(&mut self, id: ConnId) {
        self.shared.topics_left(self.registry.topics_of(id));
        self.registry.remove(id);
    }

    /// Subscribers of `topic` on every worker of this node (kept as subscribers come and go:
    /// reading it costs one lock, no round trip to the other workers).
    pub fn node_subscribers(&self, topic: &str) -> usize {
        self.shared.node_subscribers(topic)
    }

    /// Publish a message to `topic` on every worker: it is encoded once, queued by reference to
    /// this worker's subscribers now, and handed to the other workers' inboxes (the same
    /// buffer, no copy). Returns how many subscribers of this worker it was queued to. A worker
    /// whose inbox refuses it (full, or stopping) is counted in its
    /// [`WorkerStats::refused_inbox_full`] / [`WorkerStats::refused_stopping`].
    pub fn publish(&mut self, topic: &str, kind: DataKind, payload: &[u8]) -> usize {
        self.publish_frame(topic, &Frame::new(kind, payload))
    }

    /// [`publish`](Self::publish) a frame already encoded.
    pub fn publish_frame(&mut self, topic: &str, frame: &Frame) -> usize {
        if let Some(o) = &self.shared.observer {
            o.published(topic, frame);
        }
        // Whatever was published before this call and handed to this worker's inbox (by
        // another worker, e.g. a backend's previous `POST /publish`, or by a `Publisher`, even
        // with one worker) goes to this worker's subscribers first, whether or not this turn
        // has reached its wake-up yet.
        self.fan_out_inbox();
        let workers = self.shared.workers();
        if workers > 1 {
            let remote = Remote {
                topic: topic.into(),
                frame: frame.clone(),
            };
            for w in (0..workers).filter(|&w| w != self.worker) {
                if let Err(why) = self.shared.post(w, remote.clone()) {
                    // Counted by the mesh against worker `w`; say it in the log too.
                    tracing::debug!(
                        worker = w,
                        ?why,
                        topic,
                        "a worker's inbox refused a publish"
                    );
                }
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
            z: &mut self.z,
            zc: &mut self.zc,
            opts: ZOpts::of(&self.cfg),
            cache: Default::default(),
            pool: &mut self.tx_pool,
        };
        let out = self.registry.publish(topic, frame, &mut sink);
        self.counts.messages_out += out.delivered as u64;
        self.counts.bytes_out += (out.delivered * frame.bytes.len()) as u64;
        for id in out.to_close {
            self.leave_all(id);
            if let Some(conn) = self.conns.get_mut(id) {
                close_slow(conn);
                mark(&mut self.dirty, conn, id);
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
        match &self.conns.get(id)?.state {
            State::Ws(ws) => Some(&ws.user),
            _ => None,
        }
    }

    /// The state of an open WebSocket connection, mutably.
    pub fn conn_mut(&mut self, id: ConnId) -> Option<&mut C> {
        match &mut self.conns.get_mut(id)?.state {
            State::Ws(ws) => Some(&mut ws.user),
            _ => None,
        }
    }

    /// Bytes queued for `id` that its socket has not taken yet.
    pub fn buffered_amount(&self, id: ConnId) -> usize {
        self.conns.get(id).map_or(0, Conn::buffered)
    }

    /// Send a whole message to `id` (copied into its send buffer; compressed if the
    /// connection negotiated permessage-deflate and the message is not under
    /// `deflate_min_size`).
    pub fn send(&mut self, id: ConnId, kind: DataKind, payload: &[u8]) -> SendStatus {
        self.send_message(id, kind, payload, true)
    }

    /// [`send`](Self::send), never compressed: for payloads compressed already.
    pub fn send_uncompressed(&mut self, id: ConnId, kind: DataKind, payload: &[u8]) -> SendStatus {
        self.send_message(id, kind, payload, false)
    }

    fn send_message(
        &mut self,
        id: ConnId,
        kind: DataKind,
        payload: &[u8],
        compressible: bool,
    ) -> SendStatus {
        let opts = ZOpts::of(&self.cfg);
        self.send_with(id, |ws, tx, z, zc| {
            let mut out = std::mem::take(&mut z.scratch);
            let sent = if compressible && opts.compress(ws, z, payload, &mut out) {
                let head = ws
                    .proto
                    .compressed_data_head(kind.opcode(), true, out.len() as u64);
                head.map(|(h, _)| {
                    tx.push_copy(h.as_bytes(), &out);
                    zc.count(payload.len(), out.len());
                })
            } else {
                if ws.proto.deflate_window().is_some() {
                    zc.plain += 1;
                }
                let head = ws
                    .proto
                    .data_head(kind.opcode(), true, payload.len() as u64);
                head.map(|(h, _)| tx.push_copy(h.as_bytes(), payload))
            };
            z.scratch = out;
            sent.is_ok()
        })
    }

    /// Send a frame encoded once for many connections, by reference (or, to a connection that
    /// negotiated permessage-deflate, compressed for it).
    pub fn send_frame(&mut self, id: ConnId, frame: &Frame) -> SendStatus {
        let opts = ZOpts::of(&self.cfg);
        self.send_with(id, |ws, tx, z, zc| {
            if !ws.proto.can_send() {
                return false;
            }
            let payload = frame.payload();
            let mut out = std::mem::take(&mut z.scratch);
            if frame.compressible && opts.compress(ws, z, payload, &mut out) {
                let head = compress::compressed_frame(frame.kind, &out);
                tx.push_shared(head);
                zc.count(payload.len(), out.len());
            } else {
                if ws.proto.deflate_window().is_some() {
                    zc.plain += 1;
                }
                tx.push_shared(frame.bytes.clone());
            }
            z.scratch = out;
            true
        })
    }

    fn send_with(
        &mut self,
        id: ConnId,
        push: impl FnOnce(&mut Ws<C>, &mut Tx, &mut WorkerZ, &mut ZCounts) -> bool,
    ) -> SendStatus {
        let max = self.cfg.max_buffered_bytes;
        let policy = self.cfg.backpressure;
        let Some(conn) = self.conns.get_mut(id) else {
            return SendStatus::Dropped;
        };
        // The limit applies to the backlog already there, so one message larger than the
        // limit can still be sent to a connection that keeps up; the memory bound is the limit
        // plus one message.
        if conn.buffered() > max {
            if policy == BackpressurePolicy::Close && close_slow(conn) {
                self.counts.slow_closes += 1;
                self.leave_all(id);
            }
            if let Some(conn) = self.conns.get_mut(id) {
                mark(&mut self.dirty, conn, id);
            }
            return SendStatus::Dropped;
        }
        let State::Ws(ws) = &mut conn.state else {
            return SendStatus::Dropped;
        };
        // A backlog: bytes with the driver (io_uring) or refused by a full socket (epoll).
        let backlog = conn.out != Out::Idle;
        let pool = &mut self.tx_pool;
        let tx = conn.tx.get_or_insert_with(|| pool.take());
        let before = tx.buffered;
        if !push(ws, tx, &mut self.z, &mut self.zc) {
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
        mark(&mut self.dirty, conn, id);
        status
    }

    /// Start the close handshake with `id` (`reason` at most 123 bytes). Does nothing if it
    /// is already closing or gone.
    pub fn close(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if let State::Ws(ws) = &mut conn.state {
            let _ = ws.proto.queue_close(code, reason);
            mark(&mut self.dirty, conn, id);
        }
    }

    /// Queue raw bytes (an HTTP response) on connection `id`.
    pub(crate) fn queue_raw(&mut self, id: ConnId, bytes: &[u8]) {
        if let Some(conn) = self.conns.get_mut(id) {
            let tx = conn.tx(&mut self.tx_pool);
            tx.http = true;
            tx.push_copy(&[], bytes);
            mark(&mut self.dirty, conn, id);
        }
    }

    /// Put `id` on this turn's list of connections to flush.
    pub(crate) fn touch(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id) {
            mark(&mut self.dirty, conn, id);
        }
    }

    /// Arm the connection's timer for its next deadline, if earlier than the armed one.
    pub(crate) fn arm_timer(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let t = match &conn.state {
            State::Http { .. } | State::Linger { .. } => conn.state.deadline(),
            State::Ws(ws) => {
                let close_at = ws.extra.as_ref().and_then(|e| e.close_at).map(|c| c.0);
                [ws.proto.poll_timeout(), close_at]
                    .into_iter()
                    .flatten()
                    .min()
                    .map_or(timer::NONE, |d| self.wheel.tick_of(d))
            }
            State::Dead { .. } => timer::NONE,
        };
        if t != timer::NONE && (conn.timer == timer::NONE || t < conn.timer) {
            conn.timer = self.wheel.insert_at(id, t);
        }
    }

    /// See [`WebSocket::close_at`](crate::WebSocket::close_at).
    pub(crate) fn close_at(
        &mut self,
        id: ConnId,
        at: Instant,
        code: CloseCode,
        reason: &'static str,
    ) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let State::Ws(ws) = &mut conn.state else {
            return;
        };
        ws.extra().close_at = Some((at, code, reason));
        // Re-arm: the wheel keeps the earliest of the armed and the new deadline.
        self.arm_timer(id);
    }

    /// The wheel tick `timeout` from now.
    pub(crate) fn deadline_in(&self, timeout: std::time::Duration) -> u32 {
        self.wheel.tick_of(self.now + timeout)
    }
}

/// Close a slow consumer with 1008; false if it was already closing. Its unsent backlog is
/// dropped first (all but the rest of a frame the socket took part of), so the close frame
/// comes right after whole frames; if the peer never reads again, the close timeout ends it.
fn close_slow<C>(conn: &mut Conn<C>) -> bool {
    let State::Ws(ws) = &mut conn.state else {
        return false;
    };
    if !ws.proto.can_send() {
        return false;
    }
    if let Some(tx) = &mut conn.tx {
        tx.discard_queued();
    }
    let _ = ws
        .proto
        .queue_close(CloseCode::POLICY_VIOLATION, "slow consumer");
    true
}

/// What compressing needs to know of the configuration (copied: `Config` sits behind an
/// `Arc` the send path does not want to touch).
#[derive(Clone, Copy)]
struct ZOpts {
    mode: Deflate,
    min: usize,
    level: u8,
}

impl ZOpts {
    fn of(cfg: &Config) -> ZOpts {
        ZOpts {
            mode: cfg.deflate,
            min: cfg.deflate_min_size,
            level: cfg.deflate_level,
        }
    }

    /// Compress `payload` for `ws` into `out`, if it negotiated permessage-deflate and the
    /// message is not under the threshold; false: send it plain. A message is decided before
    /// it meets a compressor, so one fed to a compressor that keeps its window always goes
    /// out compressed. Inlined: the common answer (no deflate) is decided without a call.
    #[inline]
    fn compress<C>(
        &self,
        ws: &mut Ws<C>,
        z: &mut WorkerZ,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        let Some(bits) = ws.proto.deflate_window() else {
            return false;
        };
        if payload.len() < self.min {
            return false;
        }
        self.compress_into(ws, z, bits, payload, out)
    }

    #[inline(never)]
    fn compress_into<C>(
        &self,
        ws: &mut Ws<C>,
        z: &mut WorkerZ,
        bits: u8,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        out.clear();
        match self.mode {
            Deflate::Off => return false,
            Deflate::Shared => z.deflater(bits, self.level).compress(payload, out),
            Deflate::Dedicated => match ws.extra().z.as_mut() {
                Some(cz) => cz.deflater(self.level).compress(payload, out),
                None => return false,
            },
        }
        true
    }
}

/// The connections as pub/sub sees them.
struct ConnSink<'a, C> {
    conns: &'a mut Slab<Conn<C>>,
    dirty: &'a mut Vec<ConnId>,
    z: &'a mut WorkerZ,
    zc: &'a mut ZCounts,
    opts: ZOpts,
    /// This message compressed (shared mode), per window size, made on first need: each
    /// encoding at most once per message per worker; with its compressed payload's length.
    cache: [Option<(bytes::Bytes, usize)>; 7],
    pool: &'a mut TxPool,
}

impl<C> Sink<ConnId, Frame> for ConnSink<'_, C> {
    fn buffered(&self, id: ConnId) -> usize {
        self.conns.get(id).map_or(0, Conn::buffered)
    }

    fn deliver(&mut self, id: ConnId, frame: &Frame) -> Outcome {
        let Some(conn) = self.conns.get_mut(id) else {
            return Outcome::Gone;
        };
        let State::Ws(ws) = &mut conn.state else {
            return Outcome::Gone;
        };
        if !ws.proto.can_send() {
            return Outcome::Gone;
        }
        let payload = frame.payload();
        let negotiated = ws.proto.deflate_window();
        let chunk = match negotiated {
            Some(bits) if frame.compressible && payload.len() >= self.opts.min => {
                match self.opts.mode {
                    Deflate::Shared => {
                        let i = usize::from(uproar_wire::deflate::effective_window_bits(bits) - 9);
                        let (z, level) = (&mut *self.z, self.opts.level);
                        let (bytes, n) = self.cache[i].get_or_insert_with(|| {
                            let mut out = std::mem::take(&mut z.scratch);
                            out.clear();
                            z.deflater(bits, level).compress(payload, &mut out);
                            let f = compress::compressed_frame(frame.kind, &out);
                            let n = out.len();
                            z.scratch = out;
                            (f, n)
                        });
                        self.zc.count(payload.len(), *n);
                        bytes.clone()
                    }
                    _ => {
                        let mut out = std::mem::take(&mut self.z.scratch);
                        let f = if self.opts.compress(ws, self.z, payload, &mut out) {
                            self.zc.count(payload.len(), out.len());
                            compress::compressed_frame(frame.kind, &out)
                        } else {
                            frame.bytes.clone()
                        };
                        self.z.scratch = out;
                        f
                    }
                }
            }
            Some(_) => {
                self.zc.plain += 1;
                frame.bytes.clone()
            }
            None => frame.bytes.clone(),
        };
        conn.tx(self.pool).push_shared(chunk);
        mark(self.dirty, conn, id);
        Outcome::Delivered
    }
}

/// Put `conn` on the dirty list, once per turn.
pub(crate) fn mark<C>(dirty: &mut Vec<ConnId>, conn: &mut Conn<C>, id: ConnId) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(id);
    }
}
