//! One load thread: a mio (epoll) loop over its share of the connections. Nothing is shared
//! with other threads on the hot path but a few relaxed counters for progress.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use uproar_wire::conn::{Config, Connection, Event};
use uproar_wire::deflate::{Agreed, ClientBits, Deflater, Inflater, Offer, client_accepts};
use uproar_wire::handshake::{ClientHandshake, random_bytes};
use uproar_wire::{CloseCode, OpCode, mask};

use crate::payload::{self, Corrupt, Stamp};
use crate::run::{Phase, Shared};
use crate::stats::{Arrival, SeqTracker, ThreadStats};
use crate::target::Target;

/// Most bytes one connection may have written but not yet taken by its socket (open loop
/// against a server that stops reading); past it the connection fails with a clear error. Why
/// 64 MiB: far above any healthy backlog, low enough that a run cannot eat the machine.
const MAX_UNSENT: usize = 64 << 20;

/// What a connection does in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Sends messages and checks that each comes back.
    Echo,
    /// Sends messages to a topic (and ignores what it receives).
    Publisher(u16),
    /// Receives a topic's messages and checks them; a slow one stops reading.
    Subscriber { slow: bool },
    /// Only holds the connection open.
    Holder,
}

/// Parameters every worker shares.
impl Params {
    /// Client `id`'s target: with several URLs, subscribers (and echo clients) are spread over
    /// them by id and publishers by publisher index, round-robin.
    pub(crate) fn target_for(&self, id: usize, role: &Role) -> &Target {
        let (first, more, i) = match role {
            Role::Publisher(p) => (&self.pub_target, &self.more_pub_targets, usize::from(*p)),
            _ => (&self.target, &self.more_targets, id),
        };
        match i % (1 + more.len()) {
            0 => first,
            k => &more[k - 1],
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub target: Target,
    pub pub_target: Target,
    /// More URLs (`--url A,B,C`): clients are spread over `target` and these, round-robin.
    pub more_targets: Vec<Target>,
    /// More publish URLs, the same way.
    pub more_pub_targets: Vec<Target>,
    pub size: usize,
    pub opcode: OpCode,
    /// Closed loop: messages in flight per echo connection.
    pub depth: Option<u32>,
    /// Open loop: messages per second this worker sends (echo with a rate, or publishers).
    pub rate: f64,
    /// Connections this worker opens per second (`None`: as fast as possible).
    pub connect_rate: Option<f64>,
    /// Publishers in the whole run (subscribers track each).
    pub publishers: usize,
    /// Raw TCP echo (the kernel's ceiling): no handshake, and what comes back are our own
    /// masked frames, decoded in the server role.
    pub raw_tcp: bool,
    /// Closed loop: poll at most once per this window, so replies are read in batches.
    pub batch_window: Duration,
    /// Offer permessage-deflate (as Chromium does); compress what is sent once negotiated.
    pub deflate: bool,
    /// `wss://`: the TLS client configuration.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Payload filler: JSON-like text instead of a repeated 8-byte pattern.
    pub json: bool,
}

/// What Chromium offers.
pub(crate) const DEFLATE_OFFER: Offer = Offer {
    server_no_context_takeover: false,
    client_no_context_takeover: false,
    server_max_window_bits: None,
    client_max_window_bits: ClientBits::Any,
};

/// A connection's permessage-deflate state once negotiated.
struct ClientZ {
    agreed: Agreed,
    deflater: Option<Deflater>,
    inflater: Inflater,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CPhase {
    Pending,
    Connecting,
    Handshaking,
    Open,
    Done,
}

struct Client {
    id: usize,
    role: Role,
    stream: Option<TcpStream>,
    /// `wss://`: the TLS state over `stream`.
    tls: Option<Box<rustls::ClientConnection>>,
    phase: CPhase,
    hs: ClientHandshake,
    hs_buf: Vec<u8>,
    ws: Connection,
    /// Raw TCP echo only: decodes the reflected (masked) frames.
    rx: Option<Connection>,
    out: Vec<u8>,
    out_pos: usize,
    dirty: bool,
    started: Instant,
    seq: u64,
    outstanding: u64,
    trackers: Vec<SeqTracker>,
    slow_outcome: Option<String>,
    z: Option<Box<ClientZ>>,
}

/// What one received event amounted to, with the borrow of the frame's bytes already ended.
enum Got {
    /// The stamp (if readable) and whether the whole payload verified.
    Msg(Result<Stamp, Corrupt>, bool),
    Close(u16, String),
    Other,
    End,
    Failed(String),
}

/// Most connection attempts in flight per worker when no connect rate is set: keeps the
/// server's accept backlog from overflowing into SYN retries.
const MAX_CONNECTING: usize = 256;
/// A connection that has not finished its handshake by then has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-worker read buffer: one for all connections, so idle ones hold none.
const READ_BUF: usize = 256 << 10;

pub(crate) struct Worker {
    shared: Arc<Shared>,
    params: Params,
    clients: Vec<Client>,
    poll: Poll,
    rbuf: Vec<u8>,
    stats: ThreadStats,
    next_pending: usize,
    connecting: usize,
    next_connect: Instant,
    senders: Vec<usize>,
    /// Connections with queued output, flushed once per loop turn.
    dirty: Vec<usize>,
    rr: usize,
    next_send: Option<Instant>,
    started: bool,
    ns_warm: u64,
    ns_end: u64,
}

impl Worker {
    pub(crate) fn new(
        shared: Arc<Shared>,
        params: Params,
        roles: Vec<(usize, Role)>,
    ) -> io::Result<Worker> {
        let now = Instant::now();
        let clients = roles
            .into_iter()
            .map(|(id, role)| Client {
                id,
                role,
                stream: None,
                tls: None,
                phase: CPhase::Pending,
                hs: ClientHandshake::new(random_bytes()),
                hs_buf: Vec::new(),
                ws: Connection::client(
                    Config {
                        max_message_size: 1 << 30,
                        max_frame_size: 1 << 30,
                        ..Config::default()
                    },
                    {
                        let r = random_bytes();
                        u64::from_le_bytes(r[..8].try_into().expect("8 bytes"))
                    },
                ),
                rx: params.raw_tcp.then(|| {
                    Connection::server(Config {
                        max_message_size: 1 << 30,
                        max_frame_size: 1 << 30,
                        ..Config::default()
                    })
                }),
                out: Vec::new(),
                out_pos: 0,
                dirty: false,
                started: now,
                seq: 0,
                outstanding: 0,
                trackers: vec![
                    SeqTracker::default();
                    if matches!(role, Role::Subscriber { .. }) {
                        params.publishers
                    } else {
                        1
                    }
                ],
                slow_outcome: None,
                z: None,
            })
            .collect();
        Ok(Worker {
            shared,
            params,
            clients,
            poll: Poll::new()?,
            rbuf: vec![0; READ_BUF],
            stats: ThreadStats::new(),
            next_pending: 0,
            connecting: 0,
            next_connect: now,
            senders: Vec::new(),
            dirty: Vec::new(),
            rr: 0,
            next_send: None,
            started: false,
            ns_warm: 0,
            ns_end: 0,
        })
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.shared.base).as_nanos() as u64
    }

    /// Run until the coordinator says the run is done; returns what was measured.
    pub(crate) fn run(mut self) -> ThreadStats {
        let mut events = Events::with_capacity(1024);
        let tid = crate::sys::gettid();
        let mut last_poll = Instant::now();
        self.shared.tids.lock().expect("tids").push(tid);
        loop {
            let now = Instant::now();
            let phase = self.shared.phase();
            if phase == Phase::Done {
                break;
            }
            self.start_connects(now);
            if phase == Phase::Running {
                if !self.started {
                    self.on_start(now);
                }
                if self.ns(now) < self.ns_end {
                    self.send_due(now);
                }
            }
            self.flush_all();
            if !self.params.batch_window.is_zero() {
                // Replies pile up in the sockets meanwhile; what is queued above is already out.
                let left = self.params.batch_window.saturating_sub(last_poll.elapsed());
                if !left.is_zero() {
                    std::thread::sleep(left);
                }
            }
            let timeout = self.timeout(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                self.stats.error(format!("poll: {e}"));
                break;
            }
            let now = Instant::now();
            last_poll = now;
            for ev in events.iter() {
                self.on_event(ev.token().0, now);
            }
            self.check_timeouts(now);
        }
        self.finish();
        self.stats
    }

    fn timeout(&self, now: Instant) -> Duration {
        let mut t = Duration::from_millis(5);
        if let Some(n) = self.next_send {
            t = t.min(n.saturating_duration_since(now));
        }
        if self.next_pending < self.clients.len() && self.params.connect_rate.is_some() {
            t = t.min(self.next_connect.saturating_duration_since(now));
        }
        t
    }

    fn start_connects(&mut self, now: Instant) {
        while self.next_pending < self.clients.len() {
            match self.params.connect_rate {
                Some(rate) => {
                    if now < self.next_connect {
                        return;
                    }
                    self.next_connect += Duration::from_secs_f64(1.0 / rate);
                }
                None if self.connecting >= MAX_CONNECTING => return,
                None => {}
            }
            let i = self.next_pending;
            self.next_pending += 1;
            let target = self.params.target_for(i, &self.clients[i].role).clone();
            let addr = target.addr;
            let c = &mut self.clients[i];
            c.started = Instant::now();
            match TcpStream::connect(addr) {
                Ok(mut s) => {
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) = self.poll.registry().register(&mut s, Token(i), interest) {
                        self.fail(i, format!("register: {e}"));
                        continue;
                    }
                    if let Some(cfg) = &self.params.tls {
                        match crate::tls::connect(cfg, target.server_name()) {
                            Ok(t) => c.tls = Some(Box::new(t)),
                            Err(e) => {
                                self.fail(i, format!("TLS: {e}"));
                                continue;
                            }
                        }
                    }
                    c.stream = Some(s);
                    c.phase = CPhase::Connecting;
                    self.connecting += 1;
                }
                Err(e) => self.fail(i, format!("connect to {addr}: {e}")),
            }
        }
    }

    fn fail(&mut self, i: usize, msg: String) {
        let c = &mut self.clients[i];
        let was = c.phase;
        if was == CPhase::Done {
            return;
        }
        if matches!(was, CPhase::Connecting | CPhase::Handshaking) {
            self.connecting -= 1;
            self.shared.failed.fetch_add(1, Relaxed);
        }
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.phase = CPhase::Done;
        c.out = Vec::new();
        c.out_pos = 0;
        self.shared.first_error(&msg);
        self.stats.error(msg);
    }

    fn check_timeouts(&mut self, now: Instant) {
        if self.connecting == 0 {
            return;
        }
        for i in 0..self.clients.len() {
            let c = &self.clients[i];
            if matches!(c.phase, CPhase::Connecting | CPhase::Handshaking)
                && now - c.started > CONNECT_TIMEOUT
            {
                self.fail(i, format!("no handshake within {CONNECT_TIMEOUT:?}"));
            }
        }
    }

    fn on_start(&mut self, now: Instant) {
        self.started = true;
        self.ns_warm = self.shared.warm_ns.load(Relaxed);
        self.ns_end = self.shared.end_ns.load(Relaxed);
        self.senders = (0..self.clients.len())
            .filter(|&i| {
                let c = &self.clients[i];
                c.phase == CPhase::Open && matches!(c.role, Role::Publisher(_) | Role::Echo)
            })
            .collect();
        match self.params.depth {
            Some(depth) => {
                for i in self.senders.clone() {
                    for _ in 0..depth {
                        self.send(i, now);
                    }
                }
            }
            None if self.params.rate > 0.0 && !self.senders.is_empty() => {
                self.next_send = Some(now)
            }
            None => {}
        }
    }

    /// Open loop: send every message whose scheduled time has come, each stamped with that
    /// time, so latency includes any wait the server caused (no coordinated omission).
    fn send_due(&mut self, now: Instant) {
        let Some(mut next) = self.next_send else {
            return;
        };
        let interval = Duration::from_secs_f64(1.0 / self.params.rate);
        let mut budget = 10_000;
        while next <= now && budget > 0 && !self.senders.is_empty() {
            let i = self.senders[self.rr % self.senders.len()];
            self.rr += 1;
            if self.clients[i].phase == CPhase::Open {
                self.send(i, next);
            }
            next += interval;
            budget -= 1;
        }
        self.next_send = Some(next);
    }

    fn send(&mut self, i: usize, scheduled: Instant) {
        let sent_ns = self.ns(scheduled);
        let size = self.params.size;
        let opcode = self.params.opcode;
        let c = &mut self.clients[i];
        let source = match c.role {
            Role::Publisher(p) => p,
            _ => (c.id & 0x3FFF) as u16,
        };
        let stamp = Stamp {
            source,
            seq: c.seq,
            sent_ns,
        };
        let json = self.params.json;
        let write = |out: &mut Vec<u8>| {
            if json {
                payload::write_json(out, size, stamp)
            } else {
                payload::write(out, size, stamp)
            }
        };
        if let Some(z) = c.z.as_mut() {
            // Compressed: the payload, deflated, behind an RSV1 header.
            let mut plain = Vec::with_capacity(size);
            write(&mut plain);
            let a = z.agreed;
            let d = z.deflater.get_or_insert_with(|| {
                Deflater::new(a.client_max_window_bits, 8, 6, a.client_no_context_takeover)
            });
            let mut packed = Vec::with_capacity(size / 2 + 64);
            d.compress(&plain, &mut packed);
            let Ok((head, key)) = c.ws.compressed_data_head(opcode, true, packed.len() as u64)
            else {
                return;
            };
            c.out.extend_from_slice(head.as_bytes());
            let start = c.out.len();
            c.out.extend_from_slice(&packed);
            if let Some(k) = key {
                mask::unmask(&mut c.out[start..], k, 0);
            }
        } else {
            let Ok((head, key)) = c.ws.data_head(opcode, true, size as u64) else {
                return;
            };
            c.out.extend_from_slice(head.as_bytes());
            let start = c.out.len();
            write(&mut c.out);
            if let Some(k) = key {
                mask::unmask(&mut c.out[start..], k, 0);
            }
        }
        c.seq += 1;
        c.outstanding += 1;
        let echo = c.role == Role::Echo;
        self.mark_dirty(i);
        self.stats.counters.sent += 1;
        if echo {
            self.shared.in_flight.fetch_add(1, Relaxed);
        }
    }

    fn flush_all(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            if self.clients[i].dirty {
                self.flush(i);
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn mark_dirty(&mut self, i: usize) {
        if !self.clients[i].dirty {
            self.clients[i].dirty = true;
            self.dirty.push(i);
        }
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.clients[i];
        c.dirty = false;
        let Some(s) = c.stream.as_mut() else { return };
        if let Some(t) = &mut c.tls
            && let Err(e) = crate::tls::flush(s, t)
        {
            self.fail(i, format!("write: {e}"));
            return;
        }
        while c.out_pos < c.out.len() {
            let r = match &mut c.tls {
                Some(t) => crate::tls::write(s, t, &c.out[c.out_pos..]),
                None => s.write(&c.out[c.out_pos..]),
            };
            match r {
                Ok(0) => break,
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let msg = format!("write: {e}");
                    self.fail(i, msg);
                    return;
                }
            }
        }
        if c.out_pos == c.out.len() {
            c.out.clear();
            c.out_pos = 0;
        } else if c.out_pos > (1 << 20) {
            c.out.drain(..c.out_pos);
            c.out_pos = 0;
        }
        let unsent = c.out.len() - c.out_pos;
        if unsent > MAX_UNSENT {
            let msg = format!(
                "the server stopped reading: {} MiB unsent on one connection",
                unsent >> 20
            );
            self.fail(i, msg);
        }
    }

    fn on_event(&mut self, i: usize, now: Instant) {
        match self.clients[i].phase {
            CPhase::Connecting => self.on_connected(i, now),
            CPhase::Handshaking | CPhase::Open => {}
            _ => return,
        }
        if self.clients[i].phase == CPhase::Open
            && matches!(self.clients[i].role, Role::Subscriber { slow: true })
        {
            return;
        }
        // Output queued while reading, or left over from a short write, goes out once per
        // loop turn (`flush_all`), so several replies to one connection share a write.
        self.read_all(i, now);
        let c = &self.clients[i];
        if c.out_pos < c.out.len() || c.tls.as_ref().is_some_and(|t| t.wants_write()) {
            self.mark_dirty(i);
        }
    }

    fn on_connected(&mut self, i: usize, _now: Instant) {
        let c = &mut self.clients[i];
        let Some(s) = c.stream.as_mut() else { return };
        match s.take_error() {
            Ok(Some(e)) | Err(e) => {
                let msg = format!(
                    "connect to {}: {e}",
                    self.params.target_for(i, &c.role).addr
                );
                self.fail(i, msg);
                return;
            }
            Ok(None) => {}
        }
        match s.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => {
                let msg = format!(
                    "connect to {}: {e}",
                    self.params.target_for(i, &c.role).addr
                );
                self.fail(i, msg);
                return;
            }
        }
        let _ = s.set_nodelay(true);
        if self.params.raw_tcp {
            c.phase = CPhase::Open;
            self.connecting -= 1;
            self.stats.counters.opened += 1;
            self.shared.opened.fetch_add(1, Relaxed);
            let _ = self
                .stats
                .connect
                .record((c.started.elapsed().as_micros() as u64).max(1));
            return;
        }
        let t = self.params.target_for(i, &c.role);
        let offer = uproar_wire::deflate::client_offer(&DEFLATE_OFFER);
        let extra: &[(&str, &str)] = if self.params.deflate {
            &[("Sec-WebSocket-Extensions", offer.as_str())]
        } else {
            &[]
        };
        c.hs.write_request(&mut c.out, &t.host, &t.path, &[], extra);
        c.phase = CPhase::Handshaking;
        self.flush(i);
    }

    fn read_all(&mut self, i: usize, now: Instant) {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        loop {
            let c = &mut self.clients[i];
            let Some(s) = c.stream.as_mut() else { break };
            let r = match &mut c.tls {
                Some(t) => crate::tls::read(s, t, &mut rbuf),
                None => s.read(&mut rbuf),
            };
            match r {
                Ok(0) => {
                    let msg = match c.ws.close_info() {
                        Some(info) if info.received => None,
                        _ => Some("server closed the connection without a close frame".to_owned()),
                    };
                    match msg {
                        Some(m) if self.ns(now) < self.ns_end || !self.started => self.fail(i, m),
                        _ => self.close_quietly(i),
                    }
                    break;
                }
                Ok(n) => {
                    if c.phase == CPhase::Open {
                        self.stats.counters.wire_in += n as u64;
                    }
                    if !self.on_bytes(i, &mut rbuf[..n], now) || n < rbuf.len() {
                        // A short read drained the socket; data arriving later is a new
                        // edge-triggered event, so no read is spent just to see EAGAIN.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(i, format!("read: {e}"));
                    break;
                }
            }
        }
        self.rbuf = rbuf;
    }

    fn close_quietly(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.phase = CPhase::Done;
    }

    /// Returns false once the connection is gone.
    fn on_bytes(&mut self, i: usize, data: &mut [u8], now: Instant) -> bool {
        if self.clients[i].phase == CPhase::Handshaking {
            let c = &mut self.clients[i];
            c.hs_buf.extend_from_slice(data);
            match c.hs.parse_response(&c.hs_buf, &[]) {
                Ok(None) if c.hs_buf.len() < 64 << 10 => return true,
                Ok(None) => {
                    self.fail(i, "handshake response over 64 KiB".into());
                    return false;
                }
                Ok(Some(resp)) => {
                    let head_len = resp.head_len;
                    let agreed = if self.params.deflate {
                        client_accepts(&DEFLATE_OFFER, resp.extensions)
                    } else if resp.extensions.is_some() {
                        Err(uproar_wire::deflate::ResponseError::NotOffered)
                    } else {
                        Ok(None)
                    };
                    let agreed = match agreed {
                        Ok(a) => a,
                        Err(e) => {
                            self.fail(i, format!("bad Sec-WebSocket-Extensions response: {e:?}"));
                            return false;
                        }
                    };
                    let c = &mut self.clients[i];
                    if let Some(a) = agreed {
                        c.ws.enable_deflate(a.client_max_window_bits);
                        c.z = Some(Box::new(ClientZ {
                            agreed: a,
                            deflater: None,
                            inflater: Inflater::new(a.server_no_context_takeover),
                        }));
                        self.stats.counters.deflate += 1;
                    }
                    let mut rest = c.hs_buf.split_off(head_len);
                    c.hs_buf = Vec::new();
                    c.phase = CPhase::Open;
                    self.connecting -= 1;
                    self.stats.counters.opened += 1;
                    self.shared.opened.fetch_add(1, Relaxed);
                    let us = (now - c.started).as_micros().max(1) as u64;
                    let _ = self.stats.connect.record(us);
                    if let Role::Subscriber { slow: true } = c.role {
                        // A slow consumer reads nothing more until the run ends.
                        if let Some(s) = c.stream.as_mut() {
                            let _ =
                                self.poll
                                    .registry()
                                    .reregister(s, Token(i), Interest::WRITABLE);
                        }
                        return false;
                    }
                    return rest.is_empty() || self.on_frames(i, &mut rest, now);
                }
                Err(e) => {
                    let line = c.hs_buf.split(|b| *b == b'\r').next().unwrap_or_default();
                    let line = String::from_utf8_lossy(line).into_owned();
                    self.fail(i, format!("upgrade refused ({e}): {line}"));
                    return false;
                }
            }
        }
        self.on_frames(i, data, now)
    }

    fn on_frames(&mut self, i: usize, data: &mut [u8], now: Instant) -> bool {
        let now_ns = self.ns(now);
        let size = self.params.size;
        let json = self.params.json;
        let check = |m: &[u8]| {
            if json {
                payload::verify_json(m, size).is_ok()
            } else {
                payload::verify(m, size).is_ok()
            }
        };
        let mut pos = 0;
        let mut inflated = Vec::new();
        loop {
            let c = &mut self.clients[i];
            let reader = match c.rx.as_mut() {
                Some(rx) => rx,
                None => &mut c.ws,
            };
            let got = match reader.handle_read(data, &mut pos) {
                Ok(Some(Event::Message { data: m, .. })) => {
                    self.stats.counters.payload_in += m.len() as u64;
                    match c.role {
                        Role::Echo | Role::Subscriber { .. } => {
                            Got::Msg(payload::stamp(m), check(m))
                        }
                        _ => Got::Other,
                    }
                }
                Ok(Some(Event::Compressed { data: m, .. })) => {
                    inflated.clear();
                    let inf = c.z.as_mut().map(|z| &mut z.inflater);
                    match inf.map(|inf| {
                        inf.inflate(m, &mut inflated, 64 << 20)
                            .and_then(|()| inf.finish(&mut inflated, 64 << 20))
                    }) {
                        Some(Ok(())) => {
                            self.stats.counters.payload_in += inflated.len() as u64;
                            match c.role {
                                Role::Echo | Role::Subscriber { .. } => {
                                    Got::Msg(payload::stamp(&inflated), check(&inflated))
                                }
                                _ => Got::Other,
                            }
                        }
                        _ => Got::Failed("the server sent data that does not inflate".into()),
                    }
                }
                Ok(Some(Event::Close { code, reason })) => Got::Close(code.0, reason.to_owned()),
                Ok(Some(_)) => Got::Other,
                Ok(None) => Got::End,
                Err(e) => Got::Failed(format!("protocol error from the server: {e}")),
            };
            match got {
                Got::End => break,
                Got::Other => {}
                Got::Failed(m) => {
                    self.queue_control(i);
                    self.flush(i);
                    self.fail(i, m);
                    return false;
                }
                Got::Close(code, reason) => {
                    *self.stats.close_codes.entry(code).or_default() += 1;
                    if !self.started || now_ns < self.ns_end {
                        let msg = format!("server closed the connection: {code} {reason}");
                        self.queue_control(i);
                        self.flush(i);
                        self.fail(i, msg);
                        return false;
                    }
                }
                Got::Msg(Err(_), _) => {
                    self.stats.counters.corrupt += 1;
                    self.acked(i);
                }
                Got::Msg(Ok(st), ok) => self.on_message(i, st, ok, now, now_ns),
            }
        }
        self.queue_control(i);
        true
    }

    fn queue_control(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let mut queued = false;
        while let Some(f) = c.ws.poll_transmit() {
            c.out.extend_from_slice(f.as_bytes());
            queued = true;
        }
        if queued {
            self.mark_dirty(i);
        }
    }

    fn acked(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if c.role == Role::Echo && c.outstanding > 0 {
            c.outstanding -= 1;
            self.shared.in_flight.fetch_sub(1, Relaxed);
        }
    }

    /// A message with a readable stamp; `ok` is false when its other bytes were wrong (it
    /// counts as corrupt, not lost, and its latency is not recorded).
    fn on_message(&mut self, i: usize, st: Stamp, ok: bool, now: Instant, now_ns: u64) {
        let in_window = st.sent_ns >= self.ns_warm && now_ns <= self.ns_end && self.started;
        let latency_ns = now_ns.saturating_sub(st.sent_ns);
        let c = &mut self.clients[i];
        let tracker = match c.role {
            Role::Echo => {
                if usize::from(st.source) != (c.id & 0x3FFF) {
                    self.stats.counters.corrupt += 1;
                    self.acked(i);
                    return;
                }
                &mut c.trackers[0]
            }
            _ => match c.trackers.get_mut(usize::from(st.source)) {
                Some(t) => t,
                None => {
                    self.stats.counters.corrupt += 1;
                    return;
                }
            },
        };
        match tracker.on(st.seq) {
            Arrival::Duplicate => self.stats.counters.duplicated += 1,
            Arrival::Late => self.stats.counters.reordered += 1,
            Arrival::Bogus => self.stats.counters.corrupt += 1,
            Arrival::InOrder | Arrival::Ahead => {}
        }
        self.stats.counters.received += 1;
        self.shared.received.fetch_add(1, Relaxed);
        if !ok {
            self.stats.counters.corrupt += 1;
        } else if in_window {
            self.stats.counters.measured += 1;
            let _ = self.stats.latency.record((latency_ns / 1000).max(1));
        }
        if ok && matches!(c.role, Role::Subscriber { .. }) && st.sent_ns >= self.ns_warm {
            let e = self
                .stats
                .fanout
                .entry((st.source, st.seq))
                .or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(latency_ns);
        }
        if c.role == Role::Echo {
            self.acked(i);
            if self.params.depth.is_some()
                && now_ns < self.ns_end
                && self.shared.phase() == Phase::Running
            {
                self.send(i, now);
            }
        }
    }

    /// End of run: trackers and slow-consumer outcomes into the stats, close every connection.
    fn finish(&mut self) {
        for i in 0..self.clients.len() {
            if matches!(self.clients[i].role, Role::Subscriber { slow: true })
                && self.clients[i].phase == CPhase::Open
            {
                self.drain_slow(i);
            }
            let c = &mut self.clients[i];
            match c.role {
                Role::Echo => {
                    let t = &c.trackers[0];
                    self.stats.counters.lost += t.lost(c.seq);
                }
                Role::Subscriber { slow: false } => {
                    self.stats
                        .sub_trackers
                        .push(std::mem::take(&mut c.trackers));
                }
                Role::Subscriber { slow: true } => {
                    let o = c
                        .slow_outcome
                        .take()
                        .unwrap_or_else(|| "not connected".into());
                    *self.stats.slow_outcomes.entry(o).or_default() += 1;
                }
                Role::Publisher(p) => *self.stats.published.entry(p).or_default() += c.seq,
                Role::Holder => {}
            }
            if c.phase == CPhase::Open && c.ws.queue_close(CloseCode::NORMAL, "").is_ok() {
                self.queue_control(i);
                self.flush(i);
            }
        }
    }

    /// Read a slow subscriber's backlog (bounded) to learn whether the server closed it.
    fn drain_slow(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut budget: usize = 512 << 20;
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let outcome = loop {
            let c = &mut self.clients[i];
            let Some(s) = c.stream.as_mut() else {
                break "gone".to_owned();
            };
            let r = match &mut c.tls {
                Some(t) => crate::tls::read(s, t, &mut rbuf),
                None => s.read(&mut rbuf),
            };
            match r {
                Ok(0) => {
                    break match c.ws.close_info() {
                        Some(info) if info.received => format!("closed {}", info.code.0),
                        _ => "closed without close frame".to_owned(),
                    };
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    let mut pos = 0;
                    let mut code = None;
                    let data = &mut rbuf[..n];
                    while let Ok(Some(ev)) = c.ws.handle_read(data, &mut pos) {
                        if let Event::Close { code: cc, .. } = ev {
                            code = Some(cc.0);
                        }
                    }
                    if let Some(code) = code {
                        break format!("closed {code}");
                    }
                    if budget == 0 || Instant::now() > deadline {
                        break "open (still sending)".to_owned();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        break "open".to_owned();
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break "reset".to_owned(),
                Err(e) => break format!("read error: {e}"),
            }
        };
        self.rbuf = rbuf;
        self.clients[i].slow_outcome = Some(outcome);
    }
}
