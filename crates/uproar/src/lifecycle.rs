//! The connection lifecycle, without I/O: HTTP request heads, plain HTTP with keep-alive and
//! pipelining or the upgrade, the WebSocket, the close handshake, linger, and the slot's
//! release. It makes no system call and reads no clock: a driver feeds it typed inputs
//! (accepted, bytes received, bytes sent or a failed send, the peer's FIN, a reset, the time,
//! publishes from the mesh) and carries out the [`Command`]s it emits (arm a read, transmit
//! the send queue, shut down writing, abort, free the socket). The [`Handler`] callbacks and
//! pub/sub run from here, on the driver's thread.
//!
//! Contract with a driver, each turn: [`Lifecycle::begin_turn`] with the time; inputs as they
//! come; [`Lifecycle::tick`]; then [`Lifecycle::flush`] and the commands it returns, repeated
//! until it returns none. A buffer given to [`Lifecycle::received`] is not kept past the call.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use uproar_wire::handshake::{self, HandshakeError, Request};
use uproar_wire::{CloseCode, Connection, DataKind, Initiator, Payload, ProtocolError, RawEvent};

use crate::compress;
use crate::config::Deflate;
use crate::conn::{Conn, Out, Sock, State, Ws, WsExtra};
use crate::ctx::{Ctx, mark};
use crate::handler::{Handler, WebSocket};
use crate::http::{HttpRequest, Upgrade, UpgradeRequest};
use crate::id::ConnId;
use crate::mesh::Shared;
use crate::message::{CloseEvent, Message};
use crate::timer;
use crate::tls::Tls;
use crate::tx::{Tx, TxPool};

/// What the lifecycle asks of its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// Arm a read on the socket that completes as data arrives (io_uring's multishot recv);
    /// report its end with [`Lifecycle::read_ended`]. Only for drivers that said so.
    Read(ConnId, Sock),
    /// The send queue has bytes: take them with [`Lifecycle::take_batch`], send them, report
    /// with [`Lifecycle::sent`] or [`Lifecycle::send_failed`].
    Transmit(ConnId, Sock),
    /// Everything queued is written: send our FIN (shut down writing).
    ShutdownWrite(ConnId, Sock),
    /// Abort: shut the socket down both ways (waking whatever is in flight on it).
    Abort(ConnId, Sock),
    /// The slot is released and the id dead: close the socket.
    Free(ConnId, Sock),
}

/// The answer to an accepted socket.
#[derive(Debug)]
pub(crate) enum Accepted<'a> {
    /// A new connection.
    Open(ConnId),
    /// Not taken: write these bytes (maybe none) if the socket takes them at once, then close.
    Refuse(&'a [u8]),
}

/// How often the worker frees the pooled send queues the last period did not use; why 100 ms:
/// many turns under load (the pool keeps what a turn needs), and short enough that a burst's
/// queues are gone before anyone measures an idle server.
const TX_POOL_TRIM: Duration = Duration::from_millis(100);

/// One worker's connections and handler, and the rules they live by.
pub(crate) struct Lifecycle<H: Handler> {
    pub(crate) handler: H,
    pub(crate) ctx: Ctx<H::Conn>,
    /// The driver's reads stay armed across completions ([`Command::Read`]).
    multishot_reads: bool,
    expired: Vec<(ConnId, u32)>,
    next_trim: Instant,
    next_pool_trim: Instant,
    /// Set when shutting down: the time by which every connection is gone.
    stop_deadline: Option<Instant>,
    /// The 503 answer to connections over `max_connections`, built once.
    overloaded: Vec<u8>,
}

impl<H: Handler> std::fmt::Debug for Lifecycle<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle").field("ctx", &self.ctx).finish()
    }
}

impl<H: Handler> Lifecycle<H> {
    pub(crate) fn new(
        worker: usize,
        handler: H,
        shared: Arc<Shared>,
        now: Instant,
        multishot_reads: bool,
    ) -> Lifecycle<H> {
        let mut overloaded = Vec::new();
        handshake::write_response(&mut overloaded, 503, &[], b"too many connections, sorry\n");
        Lifecycle {
            handler,
            ctx: Ctx::new(worker, shared, now),
            multishot_reads,
            expired: Vec::new(),
            next_trim: now,
            next_pool_trim: now,
            stop_deadline: None,
            overloaded,
        }
    }

    /// A new turn starts at `now`.
    pub(crate) fn begin_turn(&mut self, now: Instant) {
        self.ctx.now = now;
    }

    /// The driver accepted a socket.
    pub(crate) fn accept(&mut self, sock: Sock) -> Accepted<'_> {
        let ctx = &mut self.ctx;
        if self.stop_deadline.is_some() {
            return Accepted::Refuse(&[]);
        }
        if !ctx.shared.acquire_conn() {
            // Over max_connections: a clear answer, then close; no slot is spent.
            ctx.counts.reject(503);
            tracing::debug!("connection refused: max_connections reached");
            return Accepted::Refuse(&self.overloaded);
        }
        let tls = match &ctx.shared.tls {
            None => None,
            Some(src) => match Tls::new(src.get()) {
                Ok(t) => Some(Box::new(t)),
                Err(e) => {
                    tracing::warn!(error = %e, "TLS connection state");
                    ctx.shared.release_conn();
                    return Accepted::Refuse(&[]);
                }
            },
        };
        ctx.counts.accepted += 1;
        let deadline = ctx.deadline_in(ctx.cfg.handshake_timeout);
        let mut conn = Conn::new(sock, deadline);
        conn.tls = tls;
        let id = ctx.conns.insert(conn);
        ctx.touch(id);
        Accepted::Open(id)
    }

    /// Bytes arrived on `id`.
    pub(crate) fn received(&mut self, id: ConnId, buf: &mut [u8]) {
        let Some(conn) = self.ctx.conns.get_mut(id) else {
            return;
        };
        if conn.tls.is_some() {
            self.tls_received(id, buf);
        } else {
            self.plain_received(id, buf);
        }
        self.ctx.touch(id);
    }

    /// Ciphertext arrived on a TLS connection: decrypt it (queueing the handshake's answers),
    /// then go on with the plaintext.
    fn tls_received(&mut self, id: ConnId, buf: &mut [u8]) {
        let ctx = &mut self.ctx;
        let Some(conn) = ctx.conns.get_mut(id) else {
            return;
        };
        let Some(tls) = conn.tls.as_mut() else {
            return;
        };
        if matches!(conn.state, State::Linger { .. } | State::Dead { .. }) {
            // Closing: what the peer still sends (its close_notify) is read and dropped.
            return;
        }
        if tls.fresh && Tls::looks_like_http(buf) {
            // Plain HTTP to the TLS port: a clear answer in plain text, then close.
            tls.fresh = false;
            tls.notify_sent = true;
            let mut out = Vec::new();
            handshake::write_response(
                &mut out,
                400,
                &[],
                b"this port speaks TLS: use https:// or wss://\n",
            );
            tls.push_raw(&out);
            ctx.tls.counts.plain_http += 1;
            ctx.counts.reject(400);
            return linger(ctx, id);
        }
        let mut plain = std::mem::take(&mut ctx.tls.plain);
        plain.clear();
        let was_established = tls.established;
        match tls.receive(buf, &mut plain) {
            Err(e) => {
                if was_established {
                    ctx.tls.counts.errors += 1;
                } else {
                    ctx.tls.counts.handshake_failures += 1;
                }
                tracing::debug!(error = %e, "TLS connection failed");
                ctx.tls.plain = plain;
                abort(&mut self.handler, ctx, id);
            }
            Ok(got) => {
                if got.established_now {
                    ctx.tls.counts.handshakes += 1;
                }
                if !plain.is_empty() {
                    self.plain_received(id, &mut plain);
                }
                if got.peer_closed {
                    self.eof(id);
                }
                self.ctx.tls.plain = plain;
            }
        }
    }

    /// Plaintext arrived on `id`.
    fn plain_received(&mut self, id: ConnId, buf: &mut [u8]) {
        let Some(conn) = self.ctx.conns.get_mut(id) else {
            return;
        };
        match &mut conn.state {
            State::Http { .. } => http_input(&mut self.handler, &mut self.ctx, id, buf),
            State::Ws(ws) => {
                ws.proto.note_activity(self.ctx.now);
                ws_input(&mut self.handler, &mut self.ctx, id, buf);
            }
            // Closing: what the peer still sends is read and dropped.
            State::Linger { .. } | State::Dead { .. } => {}
        }
    }

    /// The read armed by [`Command::Read`] has ended (it will complete no more); the next
    /// flush re-arms it if the connection still reads.
    pub(crate) fn read_ended(&mut self, id: ConnId) {
        if let Some(conn) = self.ctx.conns.get_mut(id) {
            conn.reading = false;
            mark(&mut self.ctx.dirty, conn, id);
        }
    }

    /// The peer's FIN arrived.
    pub(crate) fn eof(&mut self, id: ConnId) {
        let Some(conn) = self.ctx.conns.get_mut(id) else {
            return;
        };
        conn.eof = true;
        let pending = !conn.tx_idle();
        match &conn.state {
            // A half-closed peer may still read what we owe it (a response, our close frame).
            State::Http { .. } if pending => linger(&mut self.ctx, id),
            State::Ws(_) if pending => close_ws(&mut self.handler, &mut self.ctx, id, false),
            State::Http { .. } | State::Ws(_) => abort(&mut self.handler, &mut self.ctx, id),
            State::Linger { .. } | State::Dead { .. } => {}
        }
        self.ctx.touch(id);
    }

    /// The socket failed (reset, or any error reading): end the connection now.
    pub(crate) fn reset(&mut self, id: ConnId) {
        abort(&mut self.handler, &mut self.ctx, id);
    }

    /// The next batch of `id`'s send queue, for a [`Command::Transmit`]: false if there is
    /// none (the connection went away or has nothing queued).
    pub(crate) fn take_batch(&mut self, id: ConnId, out: &mut Vec<Bytes>) -> bool {
        let ctx = &mut self.ctx;
        let Some(conn) = ctx.conns.get_mut(id) else {
            return false;
        };
        if let Some(tls) = &mut conn.tls {
            // Encrypt only what goes out now: the rest stays plaintext, whole frames, which a
            // slow consumer's close may still drop.
            if tls.out_idle()
                && tls.established
                && let Some(tx) = &mut conn.tx
                && tx.ready()
            {
                let chunks = &mut ctx.tls.chunks;
                tx.take_batch(chunks);
                let n = chunks.iter().map(Bytes::len).sum();
                let r = tls.encrypt_chunks(chunks, &mut ctx.tls.joined);
                tx.complete(chunks, n);
                chunks.clear();
                if let Err(e) = r {
                    tracing::debug!(error = %e, "TLS encryption");
                    ctx.tls.counts.errors += 1;
                    conn.out = Out::Idle;
                    abort(&mut self.handler, &mut self.ctx, id);
                    return false;
                }
            }
            return match &mut tls.out {
                Some(c) if c.ready() => {
                    c.take_batch(out);
                    true
                }
                _ => {
                    conn.out = Out::Idle;
                    false
                }
            };
        }
        match &mut conn.tx {
            Some(tx) if tx.ready() => {
                tx.take_batch(out);
                true
            }
            _ => {
                conn.out = Out::Idle;
                false
            }
        }
    }

    /// A batch from [`take_batch`](Self::take_batch) was sent: `written` bytes of it were
    /// taken by the socket; `full` if the socket said it could take no more (the driver then
    /// reports [`writable`](Self::writable) when it can). The chunks come back (emptied).
    pub(crate) fn sent(&mut self, id: ConnId, chunks: &mut Vec<Bytes>, written: usize, full: bool) {
        let Some(conn) = self.ctx.conns.get_mut(id) else {
            chunks.clear();
            return;
        };
        conn.out = if full { Out::Blocked } else { Out::Idle };
        let mut drained = false;
        match conn.tls.as_mut().and_then(|t| t.out.as_mut()) {
            Some(cipher) => cipher.complete(chunks, written),
            None => {
                if let Some(tx) = &mut conn.tx {
                    tx.complete(chunks, written);
                }
            }
        }
        let idle = conn.tx_idle();
        if let Some(tx) = &mut conn.tx
            && idle
            && tx.wants_drain
        {
            tx.wants_drain = false;
            drained = matches!(conn.state, State::Ws(_));
        }
        chunks.clear();
        mark(&mut self.ctx.dirty, conn, id);
        if drained {
            self.handler.on_drain(&mut WebSocket {
                ctx: &mut self.ctx,
                id,
            });
        }
    }

    /// A send failed (EPIPE, ECONNRESET, a socket shut down under it): end the connection.
    pub(crate) fn send_failed(&mut self, id: ConnId, chunks: &mut Vec<Bytes>) {
        if let Some(conn) = self.ctx.conns.get_mut(id) {
            conn.out = Out::Idle;
            match conn.tls.as_mut().and_then(|t| t.out.as_mut()) {
                Some(cipher) => cipher.complete(chunks, 0),
                None => {
                    if let Some(tx) = &mut conn.tx {
                        tx.complete(chunks, 0);
                    }
                }
            }
        }
        chunks.clear();
        abort(&mut self.handler, &mut self.ctx, id);
        self.ctx.touch(id);
    }

    /// The socket can take bytes again after a send that filled it.
    pub(crate) fn writable(&mut self, id: ConnId) {
        if let Some(conn) = self.ctx.conns.get_mut(id)
            && conn.out == Out::Blocked
        {
            conn.out = Out::Idle;
            mark(&mut self.ctx.dirty, conn, id);
        }
    }

    /// Publishes from other workers and `Publisher`s are waiting in this worker's inbox.
    pub(crate) fn inbox(&mut self) {
        self.ctx.fan_out_inbox();
    }

    /// Whether the driver should still read from `id`.
    pub(crate) fn wants_read(&self, id: ConnId) -> bool {
        self.ctx.conns.get(id).is_some_and(Conn::wants_read)
    }

    /// Fire due timers, start or finish a shutdown, give back memory after a burst.
    pub(crate) fn tick(&mut self) {
        let ctx = &mut self.ctx;
        if ctx.now >= self.next_trim {
            // Give back slab memory after a burst of connections, at most once a second.
            ctx.conns.trim();
            ctx.buffered_gauge = ctx.conns.values().map(|c| c.buffered() as u64).sum();
            self.next_trim = ctx.now + Duration::from_secs(1);
        }
        if ctx.now >= self.next_pool_trim {
            // Send queues not needed in the last period go: a burst's queues (10,000 upgrade
            // responses) are freed within 0.2 s, while steady load keeps what it uses.
            ctx.tx_pool.trim();
            self.next_pool_trim = ctx.now + TX_POOL_TRIM;
        }
        self.expired.clear();
        ctx.wheel.expire(ctx.now, &mut self.expired);
        for i in 0..self.expired.len() {
            let (id, tick) = self.expired[i];
            let now = self.ctx.now;
            let Some(conn) = self.ctx.conns.get_mut(id) else {
                continue;
            };
            if conn.timer != tick {
                continue;
            }
            conn.timer = timer::NONE;
            let due = tick >= conn.state.deadline();
            match &mut conn.state {
                State::Http { .. } if due => {
                    self.ctx.counts.reject(408);
                    http_fail(&mut self.ctx, id, 408, "request timeout\n");
                }
                State::Ws(ws) => {
                    let due = ws
                        .extra
                        .as_ref()
                        .and_then(|e| e.close_at)
                        .filter(|c| now >= c.0);
                    if let Some((_, code, reason)) = due {
                        ws.extra().close_at = None;
                        let _ = ws.proto.queue_close(code, reason);
                    }
                    ws.proto.handle_timeout(now);
                }
                State::Linger { .. } if due => abort(&mut self.handler, &mut self.ctx, id),
                _ => {}
            }
            self.ctx.touch(id);
        }
        if self.stop_deadline.is_none() && self.ctx.shared.stop.load(Ordering::Acquire) {
            self.begin_shutdown();
        }
        if let Some(d) = self.stop_deadline
            && self.ctx.now >= d
        {
            for id in self.ctx.conns.keys().collect::<Vec<_>>() {
                abort(&mut self.handler, &mut self.ctx, id);
            }
        }
    }

    fn begin_shutdown(&mut self) {
        let grace = Duration::from_nanos(self.ctx.shared.grace_nanos.load(Ordering::Acquire));
        self.stop_deadline = Some(self.ctx.now + grace);
        self.ctx.shutting_down = true;
        for id in self.ctx.conns.keys().collect::<Vec<_>>() {
            let Some(conn) = self.ctx.conns.get_mut(id) else {
                continue;
            };
            let idle = conn.tx_idle();
            match &mut conn.state {
                State::Ws(ws) => {
                    let _ = ws
                        .proto
                        .queue_close(CloseCode::GOING_AWAY, "server shutting down");
                }
                State::Http { .. } if idle => abort(&mut self.handler, &mut self.ctx, id),
                _ => {}
            }
            self.ctx.touch(id);
        }
    }

    /// Shutting down: the driver stops accepting.
    pub(crate) fn stopping(&self) -> bool {
        self.stop_deadline.is_some()
    }

    /// Shut down and every connection released: the driver may exit (once its own operations
    /// have completed).
    pub(crate) fn finished(&self) -> bool {
        self.stop_deadline.is_some() && self.ctx.conns.len() == 0
    }

    /// The earliest time [`tick`](Self::tick) has something to do.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        [self.ctx.wheel.next_wake(), self.stop_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// Copy this worker's counters where other threads read them (once per turn).
    pub(crate) fn publish_stats(&self) {
        self.ctx.shared.published_stats[self.ctx.worker].store(&self.ctx.stats());
    }

    /// For every connection touched since the last flush: queue the codec's control frames,
    /// move closing connections along, emit what the driver must do, re-arm timers. Returns
    /// with `out` empty when there was nothing to do.
    pub(crate) fn flush(&mut self, out: &mut Vec<Command>) {
        let mut i = 0;
        // Callbacks run here (on_close) may touch more connections: loop until none are left.
        while i < self.ctx.dirty.len() {
            let id = self.ctx.dirty[i];
            i += 1;
            self.flush_one(id, out);
        }
        self.ctx.dirty.clear();
    }

    fn flush_one(&mut self, id: ConnId, out: &mut Vec<Command>) {
        let Some(conn) = self.ctx.conns.get_mut(id) else {
            return;
        };
        conn.dirty = false;
        if let State::Ws(ws) = &mut conn.state {
            queue_control(&mut ws.proto, &mut conn.tx, &mut self.ctx.tx_pool);
            if ws.proto.is_closed() {
                let timed_out = ws
                    .proto
                    .close_info()
                    .is_some_and(|c| c.code == CloseCode::ABNORMAL);
                if timed_out {
                    abort(&mut self.handler, &mut self.ctx, id);
                } else {
                    close_ws(&mut self.handler, &mut self.ctx, id, false);
                }
            }
        }
        let Some(conn) = self.ctx.conns.get_mut(id) else {
            return;
        };
        conn.dirty = false;
        let sock = conn.sock;
        if self.multishot_reads && !conn.reading && conn.wants_read() {
            conn.reading = true;
            out.push(Command::Read(id, sock));
        }
        if let Some(tls) = &mut conn.tls
            && let State::Linger {
                fin_sent: false, ..
            } = conn.state
        {
            if !tls.established {
                // Nothing can be encrypted: what was queued in plaintext is dropped.
                conn.tx = None;
            } else if !tls.notify_sent
                && conn.out != Out::Sending
                && conn.tx.as_ref().is_none_or(|t| t.is_idle())
                && tls.out_idle()
            {
                // Our TLS close, after everything else and before our FIN.
                tls.close_notify();
            }
        }
        if conn.out == Out::Idle && conn.send_ready() {
            conn.out = Out::Sending;
            out.push(Command::Transmit(id, sock));
        }
        let sending = conn.out == Out::Sending;
        let tx_idle = conn.tx_idle() && !sending;
        if tx_idle && let Some(tx) = conn.tx.take() {
            self.ctx.tx_pool.give(tx);
        }
        if let Some(tls) = &mut conn.tls
            && !sending
            && tls.out_idle()
        {
            // An idle TLS connection holds no ciphertext buffer.
            tls.out = None;
        }
        let release = match &mut conn.state {
            State::Linger { fin_sent, .. } => {
                if tx_idle && !*fin_sent {
                    out.push(Command::ShutdownWrite(id, sock));
                    *fin_sent = true;
                }
                *fin_sent && conn.eof && !sending && !conn.reading
            }
            State::Dead { shut } => {
                if !*shut {
                    out.push(Command::Abort(id, sock));
                    *shut = true;
                }
                !conn.reading && !sending
            }
            _ => false,
        };
        if release {
            self.ctx.conns.remove(id);
            self.ctx.shared.release_conn();
            out.push(Command::Free(id, sock));
        } else {
            self.ctx.arm_timer(id);
        }
    }
}

fn ws_input<H: Handler>(handler: &mut H, ctx: &mut Ctx<H::Conn>, id: ConnId, buf: &mut [u8]) {
    let mut pos = 0;
    loop {
        let Some(conn) = ctx.conns.get_mut(id) else {
            return;
        };
        let State::Ws(ws) = &mut conn.state else {
            return;
        };
        let ev = ws.proto.read_event(buf, &mut pos);
        // Control frames the codec queued (a pong, a close reply or error close) go out in
        // the order their cause arrived: before anything the application sends next.
        queue_control(&mut ws.proto, &mut conn.tx, &mut ctx.tx_pool);
        let ev = match ev {
            Ok(Some(ev)) => ev,
            Ok(None) => return,
            // The close with the error's code is queued; flush sends it.
            Err(_) => return,
        };
        match ev {
            RawEvent::Message(kind, Payload::Buf(r)) => {
                ctx.counts.messages_in += 1;
                ctx.counts.bytes_in += r.len() as u64;
                let msg = Message::new(kind, &buf[r]);
                handler.on_message(&mut WebSocket { ctx, id }, msg);
            }
            RawEvent::Message(kind, Payload::Assembly) => {
                let whole = ws.proto.take_assembly();
                ctx.counts.messages_in += 1;
                ctx.counts.bytes_in += whole.len() as u64;
                handler.on_message(&mut WebSocket { ctx, id }, Message::new(kind, &whole));
                if let Some(conn) = ctx.conns.get_mut(id)
                    && let State::Ws(ws) = &mut conn.state
                {
                    ws.proto.restore_assembly(whole);
                }
            }
            RawEvent::Compressed(kind, p) => {
                let assembly = matches!(p, Payload::Assembly).then(|| ws.proto.take_assembly());
                let data = match (&p, &assembly) {
                    (Payload::Buf(r), _) => &buf[r.clone()],
                    (_, Some(a)) => &a[..],
                    _ => &[][..],
                };
                let inflated = inflate_message(ctx, id, kind, data);
                if let Some(conn) = ctx.conns.get_mut(id)
                    && let State::Ws(ws) = &mut conn.state
                {
                    queue_control(&mut ws.proto, &mut conn.tx, &mut ctx.tx_pool);
                    if let Some(a) = assembly {
                        ws.proto.restore_assembly(a);
                    }
                }
                let Some(out) = inflated else {
                    // Failed (1007 or 1009 queued); flush sends the close.
                    return;
                };
                ctx.counts.messages_in += 1;
                ctx.counts.bytes_in += out.len() as u64;
                handler.on_message(&mut WebSocket { ctx, id }, Message::new(kind, &out));
                ctx.z.restore_inflated(out);
            }
            RawEvent::Close(_, p) => {
                let reason = ws.proto.payload(&p, buf).get(2..).unwrap_or_default();
                if !reason.is_empty() {
                    ws.extra().peer_reason = Some(String::from_utf8_lossy(reason).into());
                }
            }
            // Pings are answered by the codec; pongs need nothing; whole-message delivery
            // yields no fragments and no message in the control buffer.
            _ => {}
        }
    }
}

/// Inflate a compressed message of `id` with the worker's inflater (shared mode) or the
/// connection's own (dedicated), capped at the message limit, and check it; `None` if it
/// failed (the connection is then failed with 1007 or 1009, and the failure counted).
fn inflate_message<C>(
    ctx: &mut Ctx<C>,
    id: ConnId,
    kind: DataKind,
    data: &[u8],
) -> Option<Vec<u8>> {
    let limit = usize::try_from(ctx.cfg.max_message_size).unwrap_or(usize::MAX);
    let mut out = std::mem::take(&mut ctx.z.inflated);
    out.clear();
    let conn = ctx.conns.get_mut(id)?;
    let State::Ws(ws) = &mut conn.state else {
        return None;
    };
    let r = match ctx.cfg.deflate {
        Deflate::Dedicated => match ws.extra().z.as_mut() {
            Some(cz) => compress::inflate(cz.inflater(), data, &mut out, limit),
            None => Err(ProtocolError::BadCompressedData),
        },
        _ => compress::inflate(ctx.z.inflater(), data, &mut out, limit),
    };
    match r {
        Err(ProtocolError::MessageTooLarge) => ctx.zc.inflate_too_big += 1,
        Err(_) => ctx.zc.inflate_corrupt += 1,
        Ok(()) => {}
    }
    match ws.proto.check_inflated(kind, r.map(|()| &out[..])) {
        Ok(()) => Some(out),
        Err(_) => {
            ctx.z.restore_inflated(out);
            None
        }
    }
}

/// Move the control frames the codec has ready into the send queue. Inlined (it runs once
/// per message read, and almost always finds nothing): the check is one load and a branch.
#[inline(always)]
fn queue_control(proto: &mut Connection, tx: &mut Option<Box<Tx>>, pool: &mut TxPool) {
    while let Some(f) = proto.poll_transmit() {
        push_control(tx, pool, &f);
    }
}

#[inline(never)]
fn push_control(tx: &mut Option<Box<Tx>>, pool: &mut TxPool, f: &uproar_wire::conn::ControlFrame) {
    tx.get_or_insert_with(|| pool.take())
        .push_copy(f.as_bytes(), &[]);
}

/// Parse HTTP requests from `data` (after anything held from earlier pieces): upgrades become
/// WebSockets, other requests go to `on_http` (with keep-alive and pipelining).
fn http_input<H: Handler>(handler: &mut H, ctx: &mut Ctx<H::Conn>, id: ConnId, data: &mut [u8]) {
    let cfg = ctx.cfg.clone();
    let Some(conn) = ctx.conns.get_mut(id) else {
        return;
    };
    let State::Http { held, .. } = &mut conn.state else {
        return;
    };
    let mut held = std::mem::take(held);
    let input: &[u8] = if held.is_empty() {
        data
    } else {
        held.extend_from_slice(data);
        &held
    };
    let mut used = 0;
    while used < input.len() {
        let rest = &input[used..];
        let req = match Request::parse(rest, cfg.max_header_bytes) {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => return handshake_fail(ctx, id, e),
        };
        if req.wants_websocket() {
            let up = match handshake::validate_upgrade(&req) {
                Ok(u) => u,
                Err(e) => return handshake_fail(ctx, id, e),
            };
            let leftover = rest[req.head_len()..].to_vec();
            return upgrade(handler, ctx, id, &up, leftover);
        }
        if req.header("transfer-encoding").is_some() {
            return http_fail(ctx, id, 501, "chunked request bodies are not supported\n");
        }
        let len = match req.header("content-length").map(parse_len) {
            None => 0,
            Some(Some(n)) if n <= cfg.max_body_bytes => n,
            Some(Some(_)) => return http_fail(ctx, id, 413, "request body too large\n"),
            Some(None) => return http_fail(ctx, id, 400, "bad Content-Length\n"),
        };
        let end = req.head_len() + len;
        if rest.len() < end {
            break;
        }
        let close = req.minor_version() == 0
            || req
                .header_all("connection")
                .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"close"))
            || ctx.shutting_down;
        let resp = handler.on_http(
            ctx,
            &HttpRequest {
                head: &req,
                body: &rest[req.head_len()..end],
            },
        );
        let mut out = std::mem::take(&mut ctx.scratch);
        out.clear();
        resp.write(&mut out, close);
        ctx.queue_raw(id, &out);
        ctx.scratch = out;
        used += end;
        if close || resp.status() >= 400 {
            return linger(ctx, id);
        }
        let deadline = ctx.deadline_in(cfg.handshake_timeout);
        if let Some(conn) = ctx.conns.get_mut(id)
            && let State::Http { deadline: d, .. } = &mut conn.state
        {
            *d = deadline;
        }
    }
    // Keep what is not a whole request yet, bounded by the header and body limits.
    let rest = &input[used..];
    if rest.len() > cfg.max_header_bytes + cfg.max_body_bytes {
        return http_fail(ctx, id, 413, "request too large\n");
    }
    let keep = if used == 0 && !held.is_empty() {
        held
    } else {
        rest.to_vec()
    };
    if let Some(conn) = ctx.conns.get_mut(id)
        && let State::Http { held, .. } = &mut conn.state
    {
        *held = keep;
    }
}

fn parse_len(v: &[u8]) -> Option<usize> {
    let s = std::str::from_utf8(v.trim_ascii()).ok()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn upgrade<H: Handler>(
    handler: &mut H,
    ctx: &mut Ctx<H::Conn>,
    id: ConnId,
    up: &handshake::Upgrade<'_>,
    mut leftover: Vec<u8>,
) {
    let decision = handler.on_upgrade(ctx, &UpgradeRequest { inner: up });
    let (user, protocol) = match decision {
        Upgrade::Accept { conn, protocol } => (conn, protocol),
        Upgrade::Reject { status, reason } => {
            ctx.counts.reject(status);
            return http_fail(ctx, id, status, &format!("{reason}\n"));
        }
    };
    // permessage-deflate: the first acceptable offer under the mode's policy, if any.
    let agreed = compress::policy(&ctx.cfg).and_then(|p| p.negotiate(up.extension_headers()));
    let mut out = std::mem::take(&mut ctx.scratch);
    out.clear();
    let response = agreed.map(|a| a.response_value());
    up.write_accept_with_extensions(&mut out, protocol, response.as_deref());
    ctx.queue_raw(id, &out);
    ctx.scratch = out;
    let mut proto = Connection::server_shared(ctx.wire.clone());
    let mut extra = None;
    if let Some(a) = agreed {
        proto.enable_deflate(a.server_max_window_bits);
        if ctx.cfg.deflate == Deflate::Dedicated {
            extra = Some(Box::new(WsExtra {
                peer_reason: None,
                close_at: None,
                z: Some(compress::ConnZ::new(a)),
            }));
        }
    }
    let Some(conn) = ctx.conns.get_mut(id) else {
        return;
    };
    conn.state = State::Ws(Ws { proto, user, extra });
    ctx.counts.upgrades += 1;
    ctx.websockets += 1;
    handler.on_open(&mut WebSocket { ctx, id });
    if let Some(conn) = ctx.conns.get_mut(id)
        && let State::Ws(ws) = &mut conn.state
    {
        ws.proto.note_activity(ctx.now);
        if !leftover.is_empty() {
            ws_input(handler, ctx, id, &mut leftover);
        }
    }
}

/// A bad handshake: its status and reason, then close.
fn handshake_fail<C>(ctx: &mut Ctx<C>, id: ConnId, e: HandshakeError) {
    ctx.counts.reject(e.status());
    let mut out = Vec::new();
    e.write_response(&mut out);
    ctx.queue_raw(id, &out);
    linger(ctx, id);
}

/// An HTTP error with `status` and `reason`, then close.
fn http_fail<C>(ctx: &mut Ctx<C>, id: ConnId, status: u16, reason: &str) {
    let mut out = Vec::new();
    handshake::write_response(&mut out, status, &[], reason.as_bytes());
    ctx.queue_raw(id, &out);
    linger(ctx, id);
}

/// Close politely once the send queue is empty.
fn linger<C>(ctx: &mut Ctx<C>, id: ConnId) {
    let deadline = ctx.deadline_in(ctx.cfg.close_timeout);
    if let Some(conn) = ctx.conns.get_mut(id) {
        conn.state = State::Linger {
            fin_sent: false,
            deadline,
        };
        mark(&mut ctx.dirty, conn, id);
    }
}

/// Leave the WebSocket state: hand the state back through `on_close`, then either close
/// politely (`abort_now` false) or at once.
fn close_ws<H: Handler>(handler: &mut H, ctx: &mut Ctx<H::Conn>, id: ConnId, abort_now: bool) {
    let deadline = ctx.deadline_in(ctx.cfg.close_timeout);
    let Some(conn) = ctx.conns.get_mut(id) else {
        return;
    };
    let next = if abort_now {
        dead(conn)
    } else {
        State::Linger {
            fin_sent: false,
            deadline,
        }
    };
    let State::Ws(ws) = std::mem::replace(&mut conn.state, next) else {
        return;
    };
    mark(&mut ctx.dirty, conn, id);
    ctx.leave_all(id);
    ctx.websockets -= 1;
    let Ws { proto, user, extra } = ws;
    let info = proto.close_info();
    let reason = extra.as_ref().and_then(|e| e.peer_reason.as_deref());
    let ev = CloseEvent {
        code: info.map_or(CloseCode::ABNORMAL, |c| c.code),
        reason: reason.unwrap_or(""),
        initiator: info.map_or(Initiator::Remote, |c| c.initiator),
        clean: info.is_some_and(|c| c.sent && c.received),
    };
    handler.on_close(ctx, id, user, ev);
}

/// The aborted state: nothing more is sent (what is queued is dropped); the driver is told to
/// shut the socket down by the flush that follows.
fn dead<C>(conn: &mut Conn<C>) -> State<C> {
    conn.tx = None;
    if let Some(tls) = &mut conn.tls {
        tls.out = None;
    }
    State::Dead { shut: false }
}

/// End a connection now: shut the socket down (waking anything in flight on it) and free the
/// slot once nothing is in flight.
fn abort<H: Handler>(handler: &mut H, ctx: &mut Ctx<H::Conn>, id: ConnId) {
    let Some(conn) = ctx.conns.get_mut(id) else {
        return;
    };
    match conn.state {
        State::Ws(_) => close_ws(handler, ctx, id, true),
        State::Dead { .. } => {}
        _ => {
            conn.state = dead(conn);
            mark(&mut ctx.dirty, conn, id);
        }
    }
}
