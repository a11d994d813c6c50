//! A deterministic simulator of the connection lifecycle: a fake driver that feeds bytes at
//! chosen split points, completes sends partially, injects EOF and resets, advances a fake
//! clock and delivers publishes, then checks what a peer would have seen. Used by the
//! lifecycle's tests and by the `lifecycle` fuzz target (built with `--cfg fuzzing`).
//!
//! The fake driver behaves like the io_uring driver (a send is in flight until
//! [`Sim::complete`]; reads are multishot and end when the socket is shut down) or, with
//! `multishot_reads` false, like the epoll driver's bookkeeping.

#![allow(missing_docs, missing_debug_implementations)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use uproar_wire::{CloseCode, DataKind, FrameHeader, OpCode, Role};

use crate::config::{Config, Driver};
use crate::ctx::Ctx;
use crate::handler::{Handler, WebSocket};
use crate::http::{HttpRequest, Response, Upgrade, UpgradeRequest};
use crate::id::ConnId;
use crate::lifecycle::{Accepted, Command, Lifecycle};
use crate::mesh::{Remote, Shared, Waker};
use crate::message::{CloseEvent, Frame, Message};

/// The application under simulation. `/echo` echoes; `/ws/TOPIC` subscribes to TOPIC and
/// publishes what it receives; a text message `close` closes with 4000; `flood N SIZE`
/// sends N binary messages of SIZE bytes. `GET /x` answers 200 "x".
#[derive(Debug, Default)]
pub struct App {
    /// What happened, in order: `open ID`, `msg ID LEN`, `close ID CODE clean=B`.
    pub log: Vec<String>,
}

impl Handler for App {
    type Conn = Option<String>;

    fn on_upgrade<'r>(
        &mut self,
        _: &mut Ctx<Option<String>>,
        req: &UpgradeRequest<'r>,
    ) -> Upgrade<'r, Option<String>> {
        match req.path() {
            "/echo" => Upgrade::accept(None),
            p => match p.strip_prefix("/ws/") {
                Some(t) => Upgrade::accept(Some(t.to_owned())),
                None => Upgrade::reject(404, "no such route"),
            },
        }
    }

    fn on_open(&mut self, ws: &mut WebSocket<'_, Option<String>>) {
        self.log.push(format!("open {}", ws.id().index));
        if let Some(t) = ws.data().clone() {
            ws.subscribe(&t);
        }
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, Option<String>>, msg: Message<'_>) {
        self.log
            .push(format!("msg {} {}", ws.id().index, msg.data().len()));
        match (msg.as_text(), ws.data().clone()) {
            (Some("close"), _) => ws.close(CloseCode(4000), "asked"),
            (Some(t), _) if t.starts_with("flood ") => {
                let mut it = t[6..].split(' ').map(|v| v.parse::<usize>().unwrap_or(0));
                let (n, size) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
                let payload = vec![7u8; size.min(1 << 16)];
                for _ in 0..n.min(64) {
                    let _ = ws.send_binary(&payload);
                }
            }
            (_, Some(topic)) => {
                ws.publish(&topic, msg.kind(), msg.data());
            }
            (_, None) => {
                let _ = ws.send(msg.kind(), msg.data());
            }
        }
    }

    fn on_close(
        &mut self,
        _: &mut Ctx<Option<String>>,
        id: ConnId,
        _: Option<String>,
        c: CloseEvent<'_>,
    ) {
        self.log
            .push(format!("close {} {} clean={}", id.index, c.code.0, c.clean));
    }

    fn on_http(&mut self, _: &mut Ctx<Option<String>>, req: &HttpRequest<'_>) -> Response {
        Response::text(200, req.path().trim_start_matches('/').to_owned())
    }
}

/// What the simulated peer of one connection sees, and what the fake driver holds for it.
#[derive(Debug, Default)]
pub struct Peer {
    /// Every byte the server wrote to this socket.
    pub output: Vec<u8>,
    /// A send handed to the driver and not completed.
    pub in_flight: Option<Vec<Bytes>>,
    /// A multishot read is armed.
    pub reading: bool,
    /// The server shut down writing (FIN).
    pub fin: bool,
    /// The server aborted the socket.
    pub aborted: bool,
    /// The slot was freed and the socket closed.
    pub freed: bool,
}

pub struct Sim {
    pub(crate) lc: Lifecycle<App>,
    pub(crate) shared: Arc<Shared>,
    pub now: Instant,
    pub peers: BTreeMap<ConnId, Peer>,
    multishot: bool,
    next_sock: i32,
    cmds: Vec<Command>,
}

impl Sim {
    /// A simulated worker (one of one) with `config`.
    pub fn new(config: Config, multishot_reads: bool) -> Sim {
        let shared = Arc::new(Shared::new(
            Arc::new(config),
            Driver::Epoll,
            vec![Waker::Null],
        ));
        let now = Instant::now();
        Sim {
            lc: Lifecycle::new(0, App::default(), shared.clone(), now, multishot_reads),
            shared,
            now,
            peers: BTreeMap::new(),
            multishot: multishot_reads,
            next_sock: 100,
            cmds: Vec::new(),
        }
    }

    /// The defaults, with the limits small enough to reach in a test.
    pub fn small_config() -> Config {
        Config {
            threads: 1,
            max_frame_size: 1 << 16,
            max_message_size: 1 << 17,
            max_header_bytes: 1024,
            max_body_bytes: 4096,
            max_connections: 64,
            max_buffered_bytes: 1 << 16,
            handshake_timeout: Duration::from_secs(2),
            idle_timeout: Some(Duration::from_secs(10)),
            close_timeout: Duration::from_secs(1),
            ..Config::default()
        }
    }

    fn turn(&mut self) {
        self.lc.begin_turn(self.now);
    }

    /// A client connects. `None` if refused (over `max_connections`, or shutting down).
    pub fn connect(&mut self) -> Option<ConnId> {
        self.turn();
        self.next_sock += 1;
        let id = match self.lc.accept(self.next_sock) {
            Accepted::Open(id) => id,
            Accepted::Refuse(_) => return None,
        };
        self.peers.insert(id, Peer::default());
        self.step();
        Some(id)
    }

    /// The client sends `bytes` (one receive).
    pub fn feed(&mut self, id: ConnId, bytes: &[u8]) {
        self.turn();
        let mut buf = bytes.to_vec();
        self.lc.received(id, &mut buf);
        self.step();
    }

    /// The client's FIN.
    pub fn eof(&mut self, id: ConnId) {
        self.turn();
        self.lc.eof(id);
        self.end_read(id);
        self.step();
    }

    /// The connection is reset.
    pub fn reset(&mut self, id: ConnId) {
        self.turn();
        self.lc.reset(id);
        self.end_read(id);
        self.step();
    }

    fn end_read(&mut self, id: ConnId) {
        if let Some(p) = self.peers.get_mut(&id)
            && p.reading
        {
            p.reading = false;
            self.lc.read_ended(id);
        }
    }

    /// The send in flight on `id` completes having written `n` bytes (at most what it
    /// holds); with `n` None, all of it. False if none was in flight.
    pub fn complete(&mut self, id: ConnId, n: Option<usize>) -> bool {
        let done = self.complete_in_turn(id, n);
        self.step();
        done
    }

    /// [`complete`](Self::complete) without ending the turn: more inputs may follow before
    /// the flush (as when one `io_uring_enter` returns several completions).
    pub fn complete_in_turn(&mut self, id: ConnId, n: Option<usize>) -> bool {
        self.turn();
        let Some(peer) = self.peers.get_mut(&id) else {
            return false;
        };
        let Some(mut chunks) = peer.in_flight.take() else {
            return false;
        };
        let total: usize = chunks.iter().map(Bytes::len).sum();
        let n = n.unwrap_or(total).min(total);
        let mut left = n;
        for c in &chunks {
            let k = left.min(c.len());
            peer.output.extend_from_slice(&c[..k]);
            left -= k;
        }
        self.lc.sent(id, &mut chunks, n, false);
        true
    }

    /// The send in flight on `id` fails (a reset under it).
    pub fn fail_send(&mut self, id: ConnId) -> bool {
        self.turn();
        let Some(mut chunks) = self.peers.get_mut(&id).and_then(|p| p.in_flight.take()) else {
            return false;
        };
        self.lc.send_failed(id, &mut chunks);
        self.step();
        true
    }

    /// Complete every send in flight, whole, until none is left.
    pub fn drain(&mut self) {
        for _ in 0..1000 {
            let busy: Vec<ConnId> = self
                .peers
                .iter()
                .filter(|(_, p)| p.in_flight.is_some())
                .map(|(&id, _)| id)
                .collect();
            if busy.is_empty() {
                return;
            }
            for id in busy {
                self.complete(id, None);
            }
        }
    }

    /// Time passes.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.turn();
        self.lc.tick();
        self.step();
    }

    /// Another worker (or a `Publisher`) publishes to `topic`, and this worker takes it at
    /// once.
    pub fn publish(&mut self, topic: &str, kind: DataKind, payload: &[u8]) {
        self.post(topic, kind, payload);
        self.take_inbox();
    }

    /// Another worker publishes to `topic`: the message waits in this worker's inbox.
    pub fn post(&mut self, topic: &str, kind: DataKind, payload: &[u8]) -> bool {
        let r = Remote {
            topic: topic.into(),
            frame: Frame::new(kind, payload),
        };
        self.shared.post(0, r).is_ok()
    }

    /// This worker takes what its inbox holds, then ends the turn.
    pub fn take_inbox(&mut self) {
        self.turn();
        self.lc.inbox();
        self.step();
    }

    /// `Handle::shutdown(grace)`.
    pub fn shutdown(&mut self, grace: Duration) {
        self.shared.grace_nanos.store(
            grace.as_nanos() as u64,
            std::sync::atomic::Ordering::Release,
        );
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::Release);
        self.advance(Duration::ZERO);
    }

    /// Flush and carry out the commands, as a driver does at the end of a turn.
    pub fn step(&mut self) {
        loop {
            self.cmds.clear();
            self.lc.flush(&mut self.cmds);
            if self.cmds.is_empty() {
                return;
            }
            for i in 0..self.cmds.len() {
                let cmd = self.cmds[i];
                self.carry_out(cmd);
            }
        }
    }

    fn carry_out(&mut self, cmd: Command) {
        match cmd {
            Command::Read(id, _) => {
                assert!(self.multishot, "reads are armed only for multishot drivers");
                let p = self.peers.get_mut(&id).expect("a known connection");
                assert!(!p.reading && !p.freed, "one read armed at a time");
                p.reading = true;
            }
            Command::Transmit(id, _) => {
                let p = self.peers.get_mut(&id).expect("a known connection");
                assert!(p.in_flight.is_none(), "one send in flight at a time");
                assert!(!p.fin && !p.freed, "no send after FIN or free");
                let mut chunks = Vec::new();
                if self.lc.take_batch(id, &mut chunks) {
                    assert!(!chunks.is_empty());
                    p.in_flight = Some(chunks);
                }
            }
            Command::ShutdownWrite(id, _) => {
                let p = self.peers.get_mut(&id).expect("a known connection");
                assert!(
                    p.in_flight.is_none(),
                    "FIN only after every byte is written"
                );
                p.fin = true;
            }
            Command::Abort(id, _) => {
                self.peers.get_mut(&id).expect("a known connection").aborted = true;
                // Shutting a socket down ends the read armed on it.
                self.end_read(id);
            }
            Command::Free(id, _) => {
                let p = self.peers.get_mut(&id).expect("a known connection");
                assert!(!p.freed, "freed twice");
                assert!(
                    p.in_flight.is_none() && !p.reading,
                    "freed with an operation in flight"
                );
                p.freed = true;
            }
        }
    }

    /// Connections not yet freed.
    pub fn open(&self) -> usize {
        self.lc.ctx.conns.len()
    }

    /// What the application saw.
    pub fn log(&self) -> &[String] {
        &self.lc.handler.log
    }

    /// The worker's counters.
    pub fn stats(&self) -> crate::WorkerStats {
        self.lc.ctx.stats()
    }

    /// Bytes queued on `id`, not yet written.
    pub fn buffered(&self, id: ConnId) -> usize {
        self.lc.ctx.buffered_amount(id)
    }

    /// When the lifecycle next needs a tick.
    pub fn next_wake(&self) -> Option<Instant> {
        self.lc.next_wake()
    }

    /// Shut down and every connection released.
    pub fn finished(&self) -> bool {
        self.lc.finished()
    }

    /// Check what each peer saw: after a 101, a sequence of well-formed server frames, a close
    /// frame (if any) last and after whole frames only; a FIN only at a frame boundary.
    pub fn check_streams(&self) {
        for (id, p) in &self.peers {
            check_stream(*id, p);
        }
    }
}

/// One peer's stream; see [`Sim::check_streams`].
pub fn check_stream(id: ConnId, p: &Peer) {
    let out = &p.output;
    let Some(head_end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    if !out.starts_with(b"HTTP/1.1 101 ") {
        return;
    }
    let mut pos = head_end + 4;
    let mut closed = false;
    while pos < out.len() {
        assert!(!closed, "{id:?}: bytes after the close frame");
        let parsed = FrameHeader::parse(&out[pos..], Role::Client)
            .unwrap_or_else(|e| panic!("{id:?}: a malformed frame at {pos}: {e:?}"));
        let Some((h, n)) = parsed else {
            assert!(!p.fin, "{id:?}: FIN in the middle of a frame header");
            return;
        };
        assert!(h.fin && h.rsv == 0 && h.mask.is_none(), "{id:?}: {h:?}");
        let end = pos + n + h.payload_len as usize;
        if end > out.len() {
            assert!(!p.fin, "{id:?}: FIN in the middle of a frame");
            return;
        }
        if h.opcode == OpCode::Close {
            closed = true;
        }
        pos = end;
    }
}

/// The frames after the 101 in `output`: (opcode, payload), whole frames only.
pub fn frames(output: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
    let Some(head_end) = output.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Vec::new();
    };
    let mut pos = head_end + 4;
    let mut out = Vec::new();
    while let Ok(Some((h, n))) = FrameHeader::parse(&output[pos..], Role::Client) {
        let end = pos + n + h.payload_len as usize;
        if end > output.len() {
            break;
        }
        out.push((h.opcode, output[pos + n..end].to_vec()));
        pos = end;
    }
    out
}

/// A client's upgrade request for `path`.
pub fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: sim\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A masked client frame.
pub fn client_frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    uproar_wire::frame::encode_frame(&mut out, fin, op, payload, Some([0x12, 0x34, 0x56, 0x78]));
    out
}
