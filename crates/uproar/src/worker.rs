//! One worker: a thread pinned to a core, its io_uring, its listener, its connections. The
//! loop: submit everything queued and wait for completions (one `io_uring_enter`), dispatch
//! each completion, fire due timers, then flush: every connection touched this turn gets its
//! control frames queued, its backlog handed to the kernel as one send, its timer re-armed.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use uproar_wire::handshake::{self, HandshakeError, Request};
use uproar_wire::{CloseCode, Connection, Initiator, Payload, RawEvent};

use crate::app::{CloseEvent, Handler, HttpRequest, Message, Upgrade, UpgradeRequest, WebSocket};
use crate::ctx::{Conn, Ctx, State, Ws, id_of, mark};
use crate::error::Error;
use crate::ring::{Cqe, Op, Ring, RingConfig, UserData};
use crate::server::Shared;
use crate::sys;
use crate::timer::{self, Key};

pub(crate) struct Worker<H: Handler> {
    ring: Ring,
    handler: H,
    ctx: Ctx<H::Conn>,
    listener: Option<TcpListener>,
    shared: Arc<Shared>,
    wake_fd: RawFd,
    accept_armed: bool,
    accept_retry: Option<Instant>,
    /// Set when shutting down: the time by which every connection is gone.
    stop_deadline: Option<Instant>,
    cqes: Vec<Cqe>,
    expired: Vec<(Key, u32)>,
    rearm: Vec<Key>,
    next_trim: Instant,
    /// The 503 answer to connections over `max_connections`, built once.
    overloaded: Vec<u8>,
}

/// How long to pause accepting after running out of descriptors or memory; why 100 ms: long
/// enough for connections to close, short enough that a burst is not refused for long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl<H: Handler> Worker<H> {
    pub(crate) fn new(
        index: usize,
        handler: H,
        listener: TcpListener,
        shared: Arc<Shared>,
    ) -> Result<Worker<H>, Error> {
        let cfg = shared.config.clone();
        let ring = Ring::new(RingConfig {
            entries: cfg.ring_entries,
            recv_buffers: cfg.recv_buffers,
            recv_buffer_size: cfg.recv_buffer_size,
            prefault: cfg.prefault_buffers,
        })?;
        tracing::debug!(worker = index, mode = ring.mode, "io_uring ready");
        let wake_fd = shared.wakers[index].as_raw_fd();
        Ok(Worker {
            ring,
            handler,
            ctx: Ctx::new(index, shared.clone(), Instant::now()),
            listener: Some(listener),
            shared,
            wake_fd,
            accept_armed: false,
            accept_retry: None,
            stop_deadline: None,
            cqes: Vec::with_capacity(1024),
            expired: Vec::new(),
            rearm: Vec::new(),
            next_trim: Instant::now(),
            overloaded: overloaded_response(),
        })
    }

    pub(crate) fn run(mut self) -> Result<(), Error> {
        self.arm_accept();
        self.ring.read_wake(self.wake_fd);
        loop {
            let timeout = [
                self.ctx.wheel.next_wake(),
                self.accept_retry,
                self.stop_deadline,
            ]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()));
            self.ring
                .submit_and_wait(timeout)
                .map_err(|e| Error::Io("io_uring_enter", e))?;
            self.ctx.now = Instant::now();
            self.cqes.clear();
            self.ring.reap(&mut self.cqes);
            for i in 0..self.cqes.len() {
                let c = self.cqes[i];
                self.dispatch(c);
            }
            self.fire_timers();
            if self.stop_deadline.is_none() && self.shared.stop.load(Ordering::Acquire) {
                self.begin_shutdown();
            }
            if let Some(d) = self.stop_deadline
                && self.ctx.now >= d
            {
                for key in self.ctx.conns.keys().collect::<Vec<_>>() {
                    abort(&mut self.handler, &mut self.ctx, key);
                }
            }
            if self.accept_retry.is_some_and(|t| self.ctx.now >= t) {
                self.accept_retry = None;
                self.arm_accept();
            }
            self.rearm_recvs();
            self.flush();
            self.shared.published_stats[self.ctx.worker].store(&self.ctx.stats());
            // The ownership rule of design/0004: no receive buffer outlives its turn.
            debug_assert_eq!(
                self.ring.buffers_held(),
                0,
                "a receive buffer was not recycled"
            );
            if self.stop_deadline.is_some()
                && self.ctx.conns.len() == 0
                && self.ring.sends_in_flight() == 0
            {
                self.ring.submit();
                return Ok(());
            }
        }
    }

    fn arm_accept(&mut self) {
        if self.accept_armed || self.stop_deadline.is_some() {
            return;
        }
        if let Some(l) = &self.listener {
            self.ring
                .accept_multi(l.as_raw_fd(), UserData::new(Op::Accept, 0, 0));
            self.accept_armed = true;
        }
    }

    fn dispatch(&mut self, cqe: Cqe) {
        let Some(ud) = UserData::decode(cqe.user_data) else {
            return;
        };
        match ud.op {
            Op::Accept => self.on_accept(cqe),
            Op::Recv => self.on_recv((ud.index, ud.generation), cqe),
            Op::Send => self.on_send(ud.index, cqe),
            Op::Wake => {
                // Publishes from other workers and from `Publisher`s.
                self.ctx.fan_out_inbox();
                if self.stop_deadline.is_none() {
                    self.ring.read_wake(self.wake_fd);
                }
            }
            Op::Cancel => {}
        }
    }

    fn on_accept(&mut self, cqe: Cqe) {
        if !cqe.more() {
            self.accept_armed = false;
        }
        if cqe.result >= 0 {
            let fd = cqe.result;
            if self.stop_deadline.is_some() {
                sys::close(fd);
            } else if !self.shared.acquire_conn() {
                // Over max_connections: a clear answer, then close; no slot is spent.
                let _ = sys::send_now(fd, &self.overloaded);
                self.ctx.counts.reject(503);
                sys::close(fd);
                tracing::debug!("connection refused: max_connections reached");
            } else {
                self.ctx.counts.accepted += 1;
                let deadline = self.ctx.deadline_in(self.ctx.cfg.handshake_timeout);
                let key = self.ctx.conns.insert(Conn {
                    fd,
                    recv_armed: true,
                    eof: false,
                    sending: false,
                    dirty: false,
                    timer: timer::NONE,
                    deadline,
                    tx: None,
                    state: State::Http(Vec::new()),
                });
                self.ring
                    .recv_multi(fd, UserData::new(Op::Recv, key.1, key.0));
                self.ctx.arm_timer(key);
            }
        } else {
            match -cqe.result {
                libc::ECANCELED => {}
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                    tracing::warn!(
                        error = %std::io::Error::from_raw_os_error(-cqe.result),
                        "accept failed; pausing accepts for {ACCEPT_BACKOFF:?} (raise ulimit -n?)"
                    );
                    self.accept_retry = Some(self.ctx.now + ACCEPT_BACKOFF);
                    return;
                }
                e => tracing::debug!(error = %std::io::Error::from_raw_os_error(e), "accept"),
            }
        }
        if !self.accept_armed && self.accept_retry.is_none() {
            self.arm_accept();
        }
    }

    fn on_recv(&mut self, key: Key, cqe: Cqe) {
        let Some(conn) = self.ctx.conns.get_mut(key.0, key.1) else {
            if let Some(bid) = cqe.buffer() {
                self.ring.recycle_buf(bid);
            }
            return;
        };
        if !cqe.more() {
            conn.recv_armed = false;
        }
        match cqe.result {
            n if n > 0 => {
                if let Some(bid) = cqe.buffer() {
                    if let Some(buf) = self.ring.take_buf(bid, n as usize) {
                        on_data(&mut self.handler, &mut self.ctx, key, buf);
                    }
                    self.ring.recycle_buf(bid);
                }
                self.rearm.push(key);
            }
            0 => {
                conn.eof = true;
                on_eof(&mut self.handler, &mut self.ctx, key);
            }
            e if -e == libc::ENOBUFS => {
                // The pool ran dry this turn; buffers are all back by the end of it.
                self.rearm.push(key);
            }
            _ => abort(&mut self.handler, &mut self.ctx, key),
        }
        self.ctx.touch(key);
    }

    fn on_send(&mut self, slot: u32, cqe: Cqe) {
        let Some(mut sb) = self.ring.complete_send(slot) else {
            return;
        };
        let Some(ud) = UserData::decode(sb.key) else {
            self.ring.recycle_send_buf(sb);
            return;
        };
        let key = (ud.index, ud.generation);
        let Some(conn) = self.ctx.conns.get_mut(key.0, key.1) else {
            self.ring.recycle_send_buf(sb);
            return;
        };
        conn.sending = false;
        if cqe.result <= 0 {
            // EPIPE, ECONNRESET, or a socket shut down under the send.
            if let Some(tx) = &mut conn.tx {
                tx.complete(&mut sb.chunks, 0);
            }
            self.ring.recycle_send_buf(sb);
            abort(&mut self.handler, &mut self.ctx, key);
            self.ctx.touch(key);
            return;
        }
        let mut drained = false;
        if let Some(tx) = &mut conn.tx {
            tx.complete(&mut sb.chunks, cqe.result as usize);
            if tx.is_idle() && tx.wants_drain {
                tx.wants_drain = false;
                drained = matches!(conn.state, State::Ws(_));
            }
        }
        self.ring.recycle_send_buf(sb);
        if drained {
            let mut ws = WebSocket {
                ctx: &mut self.ctx,
                id: id_of(key),
            };
            self.handler.on_drain(&mut ws);
        }
        self.ctx.touch(key);
    }

    fn fire_timers(&mut self) {
        if self.ctx.now >= self.next_trim {
            // Give back slab memory after a burst of connections, at most once a second.
            self.ctx.conns.trim();
            self.ctx.buffered_gauge = self
                .ctx
                .conns
                .values()
                .filter_map(|c| c.tx.as_ref())
                .map(|t| t.buffered as u64)
                .sum();
            self.next_trim = self.ctx.now + Duration::from_secs(1);
        }
        self.expired.clear();
        self.ctx.wheel.expire(self.ctx.now, &mut self.expired);
        for i in 0..self.expired.len() {
            let (key, tick) = self.expired[i];
            let now = self.ctx.now;
            let Some(conn) = self.ctx.conns.get_mut(key.0, key.1) else {
                continue;
            };
            if conn.timer != tick {
                continue;
            }
            conn.timer = timer::NONE;
            let due = tick >= conn.deadline;
            match &mut conn.state {
                State::Http(_) if due => {
                    self.ctx.counts.reject(408);
                    http_fail(&mut self.ctx, key, 408, "request timeout\n");
                }
                State::Ws(ws) => ws.proto.handle_timeout(now),
                State::Linger { .. } if due => {
                    abort(&mut self.handler, &mut self.ctx, key);
                }
                _ => {}
            }
            self.ctx.touch(key);
        }
    }

    fn begin_shutdown(&mut self) {
        let grace = Duration::from_nanos(self.shared.grace_nanos.load(Ordering::Acquire));
        self.stop_deadline = Some(self.ctx.now + grace);
        self.ctx.shutting_down = true;
        if self.accept_armed {
            self.ring.cancel(UserData::new(Op::Accept, 0, 0));
        }
        // Stop listening at once, so new connections go to another process (or are refused).
        self.listener = None;
        for key in self.ctx.conns.keys().collect::<Vec<_>>() {
            let Some(conn) = self.ctx.conns.get_mut(key.0, key.1) else {
                continue;
            };
            match &mut conn.state {
                State::Ws(ws) => {
                    let _ = ws
                        .proto
                        .queue_close(CloseCode::GOING_AWAY, "server shutting down");
                }
                State::Http(_) if conn.tx.as_ref().is_none_or(|t| t.is_idle()) => {
                    abort(&mut self.handler, &mut self.ctx, key);
                }
                _ => {}
            }
            self.ctx.touch(key);
        }
    }

    fn rearm_recvs(&mut self) {
        for key in std::mem::take(&mut self.rearm) {
            let Some(conn) = self.ctx.conns.get_mut(key.0, key.1) else {
                continue;
            };
            let reading = !matches!(conn.state, State::Dead);
            if !conn.recv_armed && !conn.eof && reading {
                conn.recv_armed = true;
                self.ring
                    .recv_multi(conn.fd, UserData::new(Op::Recv, key.1, key.0));
            }
        }
    }

    /// Queue control frames, hand backlogs to the kernel, move closing connections along,
    /// re-arm timers: for every connection touched this turn.
    fn flush(&mut self) {
        let mut i = 0;
        // Callbacks run here (on_close) may touch more connections: loop until none are left.
        while i < self.ctx.dirty.len() {
            let key = self.ctx.dirty[i];
            i += 1;
            self.flush_one(key);
        }
        self.ctx.dirty.clear();
    }

    fn flush_one(&mut self, key: Key) {
        let Some(conn) = self.ctx.conns.get_mut(key.0, key.1) else {
            return;
        };
        conn.dirty = false;
        if let State::Ws(ws) = &mut conn.state {
            queue_control(&mut ws.proto, &mut conn.tx);
            if ws.proto.is_closed() {
                let timed_out = ws
                    .proto
                    .close_info()
                    .is_some_and(|c| c.code == CloseCode::ABNORMAL);
                if timed_out {
                    abort(&mut self.handler, &mut self.ctx, key);
                } else {
                    close_ws(&mut self.handler, &mut self.ctx, key, false);
                }
            }
        }
        let Some(conn) = self.ctx.conns.get_mut(key.0, key.1) else {
            return;
        };
        if let Some(tx) = &mut conn.tx
            && tx.ready()
        {
            let mut sb = self.ring.send_buf();
            sb.key = UserData::new(Op::Send, key.1, key.0).encode();
            tx.take_batch(&mut sb.chunks);
            conn.sending = true;
            self.ring.send(conn.fd, sb);
        }
        let tx_idle = conn.tx.as_ref().is_none_or(|t| t.is_idle());
        if tx_idle && conn.tx.is_some() {
            conn.tx = None;
        }
        let release = match &mut conn.state {
            State::Linger { fin_sent, .. } => {
                if tx_idle && !*fin_sent {
                    sys::shutdown(conn.fd, libc::SHUT_WR);
                    *fin_sent = true;
                }
                *fin_sent && conn.eof && !conn.sending
            }
            State::Dead => !conn.recv_armed && !conn.sending,
            _ => false,
        };
        if release {
            let conn = self
                .ctx
                .conns
                .remove(key.0, key.1)
                .expect("the slot was just read");
            sys::close(conn.fd);
            self.shared.release_conn();
        } else {
            self.ctx.arm_timer(key);
        }
    }
}

/// The 503 sent to connections over `max_connections`.
fn overloaded_response() -> Vec<u8> {
    let mut out = Vec::new();
    handshake::write_response(&mut out, 503, &[], b"too many connections, sorry\n");
    out
}

fn on_data<H: Handler>(handler: &mut H, ctx: &mut Ctx<H::Conn>, key: Key, buf: &mut [u8]) {
    let Some(conn) = ctx.conns.get_mut(key.0, key.1) else {
        return;
    };
    match &mut conn.state {
        State::Http(_) => http_input(handler, ctx, key, buf),
        State::Ws(ws) => {
            ws.proto.note_activity(ctx.now);
            ws_input(handler, ctx, key, buf);
        }
        // Closing: what the peer still sends is read and dropped.
        State::Linger { .. } | State::Dead => {}
    }
}

fn ws_input<H: Handler>(handler: &mut H, ctx: &mut Ctx<H::Conn>, key: Key, buf: &mut [u8]) {
    let id = id_of(key);
    let mut pos = 0;
    loop {
        let Some(conn) = ctx.conns.get_mut(key.0, key.1) else {
            return;
        };
        let State::Ws(ws) = &mut conn.state else {
            return;
        };
        let ev = ws.proto.read_event(buf, &mut pos);
        // Control frames the codec queued (a pong, a close reply or error close) go out in
        // the order their cause arrived: before anything the application sends next.
        queue_control(&mut ws.proto, &mut conn.tx);
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
                if let Some(conn) = ctx.conns.get_mut(key.0, key.1)
                    && let State::Ws(ws) = &mut conn.state
                {
                    ws.proto.restore_assembly(whole);
                }
            }
            RawEvent::Close(_, p) => {
                let reason = ws.proto.payload(&p, buf).get(2..).unwrap_or_default();
                if !reason.is_empty() {
                    ws.peer_reason = Some(Box::new(String::from_utf8_lossy(reason).into()));
                }
            }
            // Pings are answered by the codec; pongs need nothing; whole-message delivery
            // yields no fragments and no message in the control buffer.
            _ => {}
        }
    }
}

/// Move the control frames the codec has ready into the send queue.
fn queue_control(proto: &mut Connection, tx: &mut Option<Box<crate::tx::Tx>>) {
    while let Some(f) = proto.poll_transmit() {
        tx.get_or_insert_with(Box::default)
            .push_copy(f.as_bytes(), &[]);
    }
}

/// Parse HTTP requests from `data` (after anything held from earlier pieces): upgrades become
/// WebSockets, other requests go to `on_http` (with keep-alive and pipelining).
fn http_input<H: Handler>(handler: &mut H, ctx: &mut Ctx<H::Conn>, key: Key, data: &mut [u8]) {
    let cfg = ctx.cfg.clone();
    let Some(conn) = ctx.conns.get_mut(key.0, key.1) else {
        return;
    };
    let State::Http(held) = &mut conn.state else {
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
            Err(e) => return handshake_fail(ctx, key, e),
        };
        if req.wants_websocket() {
            let up = match handshake::validate_upgrade(&req) {
                Ok(u) => u,
                Err(e) => return handshake_fail(ctx, key, e),
            };
            let leftover = rest[req.head_len()..].to_vec();
            return upgrade(handler, ctx, key, &up, leftover);
        }
        if req.header("transfer-encoding").is_some() {
            return http_fail(ctx, key, 501, "chunked request bodies are not supported\n");
        }
        let len = match req.header("content-length").map(parse_len) {
            None => 0,
            Some(Some(n)) if n <= cfg.max_body_bytes => n,
            Some(Some(_)) => return http_fail(ctx, key, 413, "request body too large\n"),
            Some(None) => return http_fail(ctx, key, 400, "bad Content-Length\n"),
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
        ctx.queue_raw(key, &out);
        ctx.scratch = out;
        used += end;
        if close || resp.status() >= 400 {
            return linger(ctx, key);
        }
        let deadline = ctx.deadline_in(cfg.handshake_timeout);
        if let Some(conn) = ctx.conns.get_mut(key.0, key.1) {
            conn.deadline = deadline;
        }
    }
    // Keep what is not a whole request yet, bounded by the header and body limits.
    let rest = &input[used..];
    if rest.len() > cfg.max_header_bytes + cfg.max_body_bytes {
        return http_fail(ctx, key, 413, "request too large\n");
    }
    let keep = if used == 0 && !held.is_empty() {
        held
    } else {
        rest.to_vec()
    };
    if let Some(conn) = ctx.conns.get_mut(key.0, key.1)
        && let State::Http(held) = &mut conn.state
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
    key: Key,
    up: &handshake::Upgrade<'_>,
    mut leftover: Vec<u8>,
) {
    let decision = handler.on_upgrade(ctx, &UpgradeRequest { inner: up });
    let (user, protocol) = match decision {
        Upgrade::Accept { conn, protocol } => (conn, protocol),
        Upgrade::Reject { status, reason } => {
            ctx.counts.reject(status);
            return http_fail(ctx, key, status, &format!("{reason}\n"));
        }
    };
    let mut out = std::mem::take(&mut ctx.scratch);
    out.clear();
    up.write_accept(&mut out, protocol);
    // Nothing else is queued on this fresh socket, so its send buffer takes the whole 101 at
    // once: written directly, it costs no send queue and no ring operation per handshake.
    // Whatever is not written (never, in practice) is queued as usual.
    if let Some(conn) = ctx.conns.get(key.0, key.1) {
        let written = if conn.tx.is_none() {
            sys::send_now(conn.fd, &out)
        } else {
            0
        };
        if written < out.len() {
            ctx.queue_raw(key, &out[written..]);
        }
    }
    ctx.scratch = out;
    let proto = Connection::server_shared(ctx.wire.clone());
    let Some(conn) = ctx.conns.get_mut(key.0, key.1) else {
        return;
    };
    conn.state = State::Ws(Ws {
        proto,
        user,
        peer_reason: None,
    });
    ctx.counts.upgrades += 1;
    ctx.websockets += 1;
    let id = id_of(key);
    handler.on_open(&mut WebSocket { ctx, id });
    if let Some(conn) = ctx.conns.get_mut(key.0, key.1)
        && let State::Ws(ws) = &mut conn.state
    {
        ws.proto.note_activity(ctx.now);
        if !leftover.is_empty() {
            ws_input(handler, ctx, key, &mut leftover);
        }
    }
}

/// A bad handshake: its status and reason, then close.
fn handshake_fail<C>(ctx: &mut Ctx<C>, key: Key, e: HandshakeError) {
    ctx.counts.reject(e.status());
    let mut out = Vec::new();
    e.write_response(&mut out);
    ctx.queue_raw(key, &out);
    linger(ctx, key);
}

/// An HTTP error with `status` and `reason`, then close.
fn http_fail<C>(ctx: &mut Ctx<C>, key: Key, status: u16, reason: &str) {
    let mut out = Vec::new();
    handshake::write_response(&mut out, status, &[], reason.as_bytes());
    ctx.queue_raw(key, &out);
    linger(ctx, key);
}

/// Close politely once the send queue is empty.
fn linger<C>(ctx: &mut Ctx<C>, key: Key) {
    let deadline = ctx.deadline_in(ctx.cfg.close_timeout);
    if let Some(conn) = ctx.conns.get_mut(key.0, key.1) {
        conn.deadline = deadline;
        conn.state = State::Linger { fin_sent: false };
        mark(&mut ctx.dirty, conn, key.0, key.1);
    }
}

/// The peer's FIN arrived.
fn on_eof<H: Handler>(handler: &mut H, ctx: &mut Ctx<H::Conn>, key: Key) {
    let Some(conn) = ctx.conns.get_mut(key.0, key.1) else {
        return;
    };
    let pending = conn.tx.as_ref().is_some_and(|t| !t.is_idle());
    match &conn.state {
        // A half-closed peer may still read what we owe it (a response, our close frame).
        State::Http(_) if pending => linger(ctx, key),
        State::Ws(_) if pending => close_ws(handler, ctx, key, false),
        State::Http(_) | State::Ws(_) => abort(handler, ctx, key),
        State::Linger { .. } | State::Dead => {}
    }
}

/// Leave the WebSocket state: hand the state back through `on_close`, then either close
/// politely (`abort` false) or at once.
fn close_ws<H: Handler>(handler: &mut H, ctx: &mut Ctx<H::Conn>, key: Key, abort_now: bool) {
    let deadline = ctx.deadline_in(ctx.cfg.close_timeout);
    let Some(conn) = ctx.conns.get_mut(key.0, key.1) else {
        return;
    };
    conn.deadline = deadline;
    let next = if abort_now {
        sys::shutdown(conn.fd, libc::SHUT_RDWR);
        conn.tx = None;
        State::Dead
    } else {
        State::Linger { fin_sent: false }
    };
    let State::Ws(ws) = std::mem::replace(&mut conn.state, next) else {
        return;
    };
    mark(&mut ctx.dirty, conn, key.0, key.1);
    ctx.registry.remove(key);
    ctx.websockets -= 1;
    let Ws {
        proto,
        user,
        peer_reason,
    } = ws;
    let info = proto.close_info();
    let ev = CloseEvent {
        code: info.map_or(CloseCode::ABNORMAL, |c| c.code),
        reason: peer_reason.as_deref().map_or("", |s| s.as_str()),
        initiator: info.map_or(Initiator::Remote, |c| c.initiator),
        clean: info.is_some_and(|c| c.sent && c.received),
    };
    handler.on_close(ctx, id_of(key), user, ev);
}

/// End a connection now: shut the socket down (waking anything in flight on it) and free the
/// slot once nothing is in flight.
fn abort<H: Handler>(handler: &mut H, ctx: &mut Ctx<H::Conn>, key: Key) {
    let Some(conn) = ctx.conns.get_mut(key.0, key.1) else {
        return;
    };
    match conn.state {
        State::Ws(_) => close_ws(handler, ctx, key, true),
        State::Dead => {}
        _ => {
            sys::shutdown(conn.fd, libc::SHUT_RDWR);
            conn.tx = None;
            conn.state = State::Dead;
            mark(&mut ctx.dirty, conn, key.0, key.1);
        }
    }
}
