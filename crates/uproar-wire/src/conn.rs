//! The connection state machine: message assembly, auto-pong, the close handshake and
//! timeouts, over the frame [`Decoder`]. No I/O and no clock: time is passed in.
//!
//! # Calling it
//!
//! Methods come in four kinds (after quinn-proto's `Connection`):
//! - `handle_*` take input: [`handle_read`](Connection::handle_read) for received bytes,
//!   [`handle_timeout`](Connection::handle_timeout) when the deadline from `poll_timeout`
//!   passes. Call [`note_activity`](Connection::note_activity) with the current time once per
//!   batch of received bytes so the idle timer knows the peer is alive.
//! - `queue_*` are the application's commands: [`queue_close`](Connection::queue_close),
//!   [`queue_ping`](Connection::queue_ping); data frames are framed by the adapter with
//!   [`data_head`](Connection::data_head) so the payload can be shared and sent without a copy.
//! - `poll_*` give output. After any `handle_*` or `queue_*` call, drain
//!   [`poll_transmit`](Connection::poll_transmit) (control frames to send, in order), then
//!   re-arm the timer from [`poll_timeout`](Connection::poll_timeout), then check
//!   [`is_closed`](Connection::is_closed): when true, close the transport.
//! - getters: [`state`](Connection::state), [`close_info`](Connection::close_info), ...

use std::sync::Arc;
use std::time::{Duration, Instant};

use core::ops::Range;

use crate::close::{CloseCode, Initiator, parse_close_payload};
use crate::decode::Decoder;
use crate::error::ProtocolError;
use crate::frame::{FrameHead, MAX_CONTROL_PAYLOAD, OpCode, Role};
use crate::mask;
use crate::utf8::Utf8Validator;

/// How data messages are handed to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// One [`Event::Message`] per message, assembled across frames and buffers.
    Whole,
    /// Every piece of payload as it arrives, as [`Event::Fragment`]: for large messages that
    /// should stream through without being held whole.
    Fragments,
}

/// Limits and behaviour of one connection. Every default says why.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest frame payload accepted, else close 1009. Default 16 MiB: the largest frame in
    /// the Autobahn suite (9.x), a bound on what one frame header can announce.
    pub max_frame_size: u64,
    /// Largest message accepted (sum of its frames), else close 1009. Default 16 MiB: the
    /// largest message in the Autobahn suite; an assembled message is held in memory whole.
    pub max_message_size: u64,
    /// Whole messages or streamed fragments. Default [`Delivery::Whole`]: what most
    /// applications want, and small messages are zero-copy anyway.
    pub delivery: Delivery,
    /// Answer pings with pongs automatically. Default true: RFC 6455 §5.5.2 requires a pong.
    pub auto_pong: bool,
    /// After this long without input, send a ping; after as long again, give up. Default
    /// `None` (off): the adapter decides; servers usually set it (tens of seconds).
    pub idle_timeout: Option<Duration>,
    /// How long to wait for the peer's close frame after sending ours. Default 5 s: long
    /// enough for a loaded peer, short enough that dead peers do not pile up.
    pub close_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            delivery: Delivery::Whole,
            auto_pong: true,
            idle_timeout: None,
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Kind of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// UTF-8 text; the payload has been validated.
    Text,
    /// Binary data.
    Binary,
}

impl DataKind {
    /// The opcode of the first frame of such a message.
    pub const fn opcode(self) -> OpCode {
        match self {
            DataKind::Text => OpCode::Text,
            DataKind::Binary => OpCode::Binary,
        }
    }
}

/// What [`Connection::handle_read`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole message ([`Delivery::Whole`]). Text is valid UTF-8.
    Message {
        /// Text or binary.
        kind: DataKind,
        /// The payload, in the caller's buffer or the connection's assembly buffer.
        data: &'a [u8],
    },
    /// A piece of a message ([`Delivery::Fragments`]). Text is valid UTF-8 over the whole
    /// message; a piece may end inside a code point.
    Fragment {
        /// Text or binary (the kind of the whole message).
        kind: DataKind,
        /// This piece of payload, in the caller's buffer.
        data: &'a [u8],
        /// The message's first piece.
        first: bool,
        /// The message's last piece.
        last: bool,
    },
    /// A ping; a pong has been queued if `auto_pong` is on.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// A whole permessage-deflate compressed message (only after
    /// [`Connection::enable_deflate`]), as it arrived: inflate it (appending the 4-byte tail),
    /// then check it with [`Connection::check_inflated`].
    Compressed {
        /// Text or binary.
        kind: DataKind,
        /// The compressed payload.
        data: &'a [u8],
    },
    /// The peer's close frame; the reply has been queued. `code` is 1005 if it had none.
    Close {
        /// The peer's code, 1005 if the frame had none.
        code: CloseCode,
        /// The peer's reason (valid UTF-8).
        reason: &'a str,
    },
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Data flows both ways.
    Open,
    /// A close frame was sent or received; waiting for the other one (or for ours to be sent).
    Closing,
    /// Done: close the transport.
    Closed,
}

/// Why and how a connection closed (or is closing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseInfo {
    /// The code that ends the connection: the peer's (if it started), ours otherwise. 1006 if
    /// the connection ended without a close frame (timeout).
    pub code: CloseCode,
    /// Who started it.
    pub initiator: Initiator,
    /// The peer's close frame arrived.
    pub received: bool,
    /// Our close frame was handed out by `poll_transmit`.
    pub sent: bool,
}

/// Why a `queue_*` or [`Connection::data_head`] call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// A close frame has already been queued or sent: nothing may follow it.
    Closing,
    /// A control payload over 125 bytes.
    ControlTooLong,
    /// A close code that must not be sent (1005, 1006, 1015, reserved), or a reason over 123
    /// bytes.
    InvalidClose,
}

/// A control frame ready to send, held inline (at most 2 + 4 + 125 bytes).
#[derive(Clone, Copy)]
pub struct ControlFrame {
    buf: [u8; 2 + 4 + MAX_CONTROL_PAYLOAD],
    len: u8,
    opcode: OpCode,
}

impl ControlFrame {
    fn new(opcode: OpCode, parts: [&[u8]; 2], mask: Option<[u8; 4]>) -> ControlFrame {
        let payload_len = parts[0].len() + parts[1].len();
        debug_assert!(payload_len <= MAX_CONTROL_PAYLOAD);
        let head = FrameHead::new(true, opcode, payload_len as u64, mask);
        let mut buf = [0u8; 2 + 4 + MAX_CONTROL_PAYLOAD];
        let h = head.as_bytes().len();
        buf[..h].copy_from_slice(head.as_bytes());
        buf[h..h + parts[0].len()].copy_from_slice(parts[0]);
        buf[h + parts[0].len()..h + payload_len].copy_from_slice(parts[1]);
        if let Some(k) = mask {
            mask::unmask(&mut buf[h..h + payload_len], k, 0);
        }
        ControlFrame {
            buf,
            len: (h + payload_len) as u8,
            opcode,
        }
    }

    /// The encoded frame.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// Close, ping or pong.
    pub fn opcode(&self) -> OpCode {
        self.opcode
    }
}

impl core::fmt::Debug for ControlFrame {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ControlFrame")
            .field("opcode", &self.opcode)
            .field("len", &self.len)
            .finish()
    }
}

#[derive(Debug, Clone)]
struct Msg {
    kind: DataKind,
    len: u64,
    delivered: bool,
    /// RSV1 was set on its first frame (permessage-deflate).
    compressed: bool,
}

/// Where an event's payload lives, decided before the borrow of the caller's buffer is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// In the buffer passed to [`Connection::read_event`].
    Buf(Range<usize>),
    /// In the connection's assembly buffer (a message that spanned frames or buffers); see
    /// [`Connection::take_assembly`].
    Assembly,
    /// In the connection's control-frame buffer (a control frame split across buffers).
    Control,
}

/// An [`Event`] whose payload is named by location instead of borrowed, from
/// [`Connection::read_event`]. For adapters that must let go of the connection before they
/// use the payload (to run an application callback that may touch other connections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    /// See [`Event::Message`].
    Message(DataKind, Payload),
    /// See [`Event::Fragment`]: kind, piece, first, last.
    Fragment(DataKind, Payload, bool, bool),
    /// See [`Event::Ping`].
    Ping(Payload),
    /// See [`Event::Pong`].
    Pong(Payload),
    /// See [`Event::Close`]: the payload is the whole close payload (code, then reason).
    Close(CloseCode, Payload),
    /// See [`Event::Compressed`].
    Compressed(DataKind, Payload),
}

/// One WebSocket connection's protocol state, for either role.
#[derive(Debug)]
pub struct Connection {
    role: Role,
    config: Arc<Config>,
    decoder: Decoder,
    msg: Option<Msg>,
    utf8: Utf8Validator,
    /// Assembly of a message that spans frames or buffers; none until first needed. Behind a
    /// pointer (a `Vec` is three words): most connections never assemble, and every idle
    /// connection's slot holds this field.
    #[allow(clippy::box_collection)]
    assembly: Option<Box<Vec<u8>>>,
    assembly_delivered: bool,
    /// What most connections never need, allocated while needed (see [`Rare`]).
    rare: Option<Box<Rare>>,
    close: Option<CloseInfo>,
    timed_out: bool,
    /// The latest time the caller gave ([`note_activity`](Self::note_activity) or
    /// [`handle_timeout`](Self::handle_timeout)).
    now: Option<Instant>,
    /// How long before `now` input last arrived, in nanoseconds (saturating at 584 years).
    /// With `now` it is the time of the last input, in 8 bytes where a second
    /// `Option<Instant>` takes 16: a server holds one of these per connection.
    input_age_ns: u64,
    ping_outstanding: bool,
    /// permessage-deflate: 0 off, else the window bits this side compresses with.
    deflate_bits: u8,
    rng: u64,
}

/// Connection state that is only needed around control frames: a control frame split across
/// buffers, control frames waiting to be sent, the close handshake's deadline. Boxed and freed
/// when empty, so an idle connection stays small (a server holds tens of thousands).
#[derive(Debug)]
struct Rare {
    control: [u8; MAX_CONTROL_PAYLOAD],
    control_len: u8,
    /// The control payload was handed out; it is dropped at the next read.
    control_delivered: bool,
    ping_out: Option<ControlFrame>,
    pong_out: Option<ControlFrame>,
    close_out: Option<ControlFrame>,
    close_deadline: Option<Instant>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.control_len == 0
            && self.ping_out.is_none()
            && self.pong_out.is_none()
            && self.close_out.is_none()
            && self.close_deadline.is_none()
    }
}

impl Default for Rare {
    fn default() -> Self {
        Rare {
            control: [0; MAX_CONTROL_PAYLOAD],
            control_len: 0,
            control_delivered: false,
            ping_out: None,
            pong_out: None,
            close_out: None,
            close_deadline: None,
        }
    }
}

/// RSV1 in the frame header's `rsv` bits: permessage-deflate's "compressed" flag.
const RSV1: u8 = 0b100;

/// Assembly buffers that grew past this are freed after their message, not kept: an idle
/// connection should not pin a large allocation. Why 64 KiB: covers typical messages with no
/// reallocation churn.
const ASSEMBLY_KEEP: usize = 64 << 10;

impl Connection {
    /// A server-side connection (receives masked frames).
    pub fn server(config: Config) -> Connection {
        Self::new(Role::Server, Arc::new(config), 0)
    }

    /// A server-side connection sharing `config` with others (a server's connections all use
    /// one configuration; sharing keeps each connection small).
    pub fn server_shared(config: Arc<Config>) -> Connection {
        Self::new(Role::Server, config, 0)
    }

    /// A client-side connection. `mask_seed` seeds the generator of masking keys; pass
    /// something unpredictable (RFC 6455 §5.3), e.g. from the OS's random source.
    pub fn client(config: Config, mask_seed: u64) -> Connection {
        Self::new(Role::Client, Arc::new(config), mask_seed)
    }

    fn new(role: Role, config: Arc<Config>, seed: u64) -> Connection {
        Connection {
            role,
            decoder: Decoder::new(role, config.max_frame_size),
            config,
            msg: None,
            utf8: Utf8Validator::new(),
            assembly: None,
            assembly_delivered: false,
            rare: None,
            close: None,
            timed_out: false,
            now: None,
            input_age_ns: 0,
            ping_outstanding: false,
            deflate_bits: 0,
            // xorshift needs a non-zero state.
            rng: seed | 1,
        }
    }

    /// This endpoint's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the connection is in its life.
    pub fn state(&self) -> State {
        if self.is_closed() {
            State::Closed
        } else if self.close.is_some() {
            State::Closing
        } else {
            State::Open
        }
    }

    /// Close the transport now: the close handshake is complete (or failed, or timed out) and
    /// nothing is left to send.
    pub fn is_closed(&self) -> bool {
        if self.timed_out {
            return true;
        }
        match self.close {
            Some(c) => c.sent && (c.received || c.initiator == Initiator::Library),
            None => false,
        }
    }

    /// How the connection closed or is closing, once a close has started.
    pub fn close_info(&self) -> Option<CloseInfo> {
        self.close
    }

    /// Whether data frames may still be sent.
    pub fn can_send(&self) -> bool {
        self.close.is_none()
    }

    /// Record that input arrived at `now` (once per batch of received bytes).
    pub fn note_activity(&mut self, now: Instant) {
        self.now = Some(now);
        self.input_age_ns = 0;
        self.ping_outstanding = false;
    }

    /// Process received bytes `buf[*pos..]` (masked payload is unmasked in place) and return
    /// the next event, advancing `*pos`. `Ok(None)`: all of `buf` was taken in; read more.
    /// Call again until `Ok(None)`: one buffer can hold many events.
    ///
    /// On a protocol error the close frame with the error's code is queued and the error is
    /// returned; input after that, or after the peer's close, is discarded.
    pub fn handle_read<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        pos: &mut usize,
    ) -> Result<Option<Event<'a>>, ProtocolError> {
        match self.read_event(buf, pos)? {
            Some(out) => Ok(Some(self.event(out, buf))),
            None => Ok(None),
        }
    }

    /// Like [`handle_read`](Self::handle_read), but the event names where its payload is
    /// instead of borrowing it; get the bytes with [`payload`](Self::payload) or, for
    /// [`Payload::Assembly`], [`take_assembly`](Self::take_assembly).
    pub fn read_event(
        &mut self,
        buf: &mut [u8],
        pos: &mut usize,
    ) -> Result<Option<RawEvent>, ProtocolError> {
        self.read_inner(buf, pos).inspect_err(|&e| {
            *pos = buf.len();
            self.fail(e);
        })
    }

    /// The bytes of a payload from [`read_event`](Self::read_event); `buf` is the buffer that
    /// was passed to it.
    pub fn payload<'a>(&'a self, payload: &Payload, buf: &'a [u8]) -> &'a [u8] {
        match payload {
            Payload::Buf(r) => &buf[r.clone()],
            Payload::Assembly => self.assembly.as_deref().map_or(&[][..], |a| &a[..]),
            Payload::Control => self
                .rare
                .as_ref()
                .map_or(&[][..], |r| &r.control[..usize::from(r.control_len)]),
        }
    }

    /// Move the assembled message out (after a [`Payload::Assembly`] event), so it can be used
    /// while the connection is borrowed elsewhere. Give it back with
    /// [`restore_assembly`](Self::restore_assembly) to keep its allocation for the next one.
    pub fn take_assembly(&mut self) -> Vec<u8> {
        self.assembly
            .as_deref_mut()
            .map(core::mem::take)
            .unwrap_or_default()
    }

    /// Return the buffer from [`take_assembly`](Self::take_assembly); it is cleared (or freed,
    /// if large) before the next message is assembled into it.
    pub fn restore_assembly(&mut self, assembly: Vec<u8>) {
        match &mut self.assembly {
            Some(a) if a.capacity() == 0 => **a = assembly,
            Some(_) => {}
            None => self.assembly = Some(Box::new(assembly)),
        }
    }

    fn event<'a>(&'a self, out: RawEvent, buf: &'a [u8]) -> Event<'a> {
        let bytes = |src: Payload| -> &'a [u8] { self.payload(&src, buf) };
        match out {
            RawEvent::Message(kind, s) => Event::Message {
                kind,
                data: bytes(s),
            },
            RawEvent::Fragment(kind, s, first, last) => Event::Fragment {
                kind,
                data: bytes(s),
                first,
                last,
            },
            RawEvent::Compressed(kind, s) => Event::Compressed {
                kind,
                data: bytes(s),
            },
            RawEvent::Ping(s) => Event::Ping(bytes(s)),
            RawEvent::Pong(s) => Event::Pong(bytes(s)),
            // The reason was validated as UTF-8 when the frame was parsed.
            RawEvent::Close(code, s) => {
                let reason = bytes(s).get(2..).unwrap_or_default();
                Event::Close {
                    code,
                    reason: core::str::from_utf8(reason).unwrap_or_default(),
                }
            }
        }
    }

    fn input_done(&self) -> bool {
        self.timed_out
            || self
                .close
                .is_some_and(|c| c.received || c.initiator == Initiator::Library)
    }

    fn read_inner(
        &mut self,
        buf: &mut [u8],
        pos: &mut usize,
    ) -> Result<Option<RawEvent>, ProtocolError> {
        if let Some(r) = &mut self.rare
            && r.control_delivered
        {
            r.control_delivered = false;
            r.control_len = 0;
        }
        self.trim_rare();
        if self.assembly_delivered {
            self.assembly_delivered = false;
            match &mut self.assembly {
                Some(a) if a.capacity() <= ASSEMBLY_KEEP => a.clear(),
                _ => self.assembly = None,
            }
        }
        loop {
            if self.input_done() {
                *pos = buf.len();
                return Ok(None);
            }
            let Some(chunk) = self.decoder.decode(buf, pos)? else {
                return Ok(None);
            };
            let h = chunk.header;
            let range = chunk.payload;
            // RSV1 passes the decoder only once permessage-deflate is on, and then only on the
            // first frame of a data message (RFC 7692 section 6).
            if chunk.first
                && h.rsv & RSV1 != 0
                && (h.opcode.is_control() || h.opcode == OpCode::Continuation)
            {
                return Err(ProtocolError::CompressedBitMisplaced);
            }
            if h.opcode.is_control() {
                let src = if chunk.first && chunk.last {
                    Payload::Buf(range)
                } else {
                    let r = self.rare();
                    if chunk.first {
                        r.control_len = 0;
                    }
                    let n = usize::from(r.control_len);
                    r.control[n..n + range.len()].copy_from_slice(&buf[range.clone()]);
                    r.control_len += range.len() as u8;
                    if !chunk.last {
                        continue;
                    }
                    r.control_delivered = true;
                    Payload::Control
                };
                return self.control_frame(h.opcode, src, buf).map(Some);
            }

            // Data frame.
            if chunk.first {
                let msg = match (h.opcode, &mut self.msg) {
                    (OpCode::Continuation, None) => {
                        return Err(ProtocolError::UnexpectedContinuation);
                    }
                    (OpCode::Continuation, Some(m)) => m,
                    (_, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
                    (op, m @ None) => {
                        let kind = if op == OpCode::Text {
                            DataKind::Text
                        } else {
                            DataKind::Binary
                        };
                        self.utf8.reset();
                        m.insert(Msg {
                            kind,
                            len: 0,
                            delivered: false,
                            compressed: h.rsv & RSV1 != 0,
                        })
                    }
                };
                msg.len += h.payload_len;
                if msg.len > self.config.max_message_size {
                    return Err(ProtocolError::MessageTooLarge);
                }
            }
            let msg = self.msg.as_mut().expect("data chunk inside a message");
            let kind = msg.kind;
            let done = chunk.last && h.fin;
            if msg.compressed {
                // Held whole (its compressed size bounded by the message limit), inflated by
                // the caller, whose inflater may serve many connections one message at a time.
                let single = done && chunk.first && h.opcode != OpCode::Continuation;
                if single {
                    self.msg = None;
                    return Ok(Some(RawEvent::Compressed(kind, Payload::Buf(range))));
                }
                self.assembly
                    .get_or_insert_default()
                    .extend_from_slice(&buf[range]);
                if done {
                    self.msg = None;
                    self.assembly_delivered = true;
                    return Ok(Some(RawEvent::Compressed(kind, Payload::Assembly)));
                }
                continue;
            }
            if kind == DataKind::Text {
                self.utf8.feed(&buf[range.clone()])?;
                if done {
                    self.utf8.finish()?;
                }
            }
            match self.config.delivery {
                Delivery::Fragments => {
                    let first = !msg.delivered;
                    msg.delivered = true;
                    if done {
                        self.msg = None;
                    }
                    return Ok(Some(RawEvent::Fragment(
                        kind,
                        Payload::Buf(range),
                        first,
                        done,
                    )));
                }
                Delivery::Whole => {
                    // Zero-copy when the whole message is one frame in one buffer.
                    if done && chunk.first && h.opcode != OpCode::Continuation {
                        self.msg = None;
                        return Ok(Some(RawEvent::Message(kind, Payload::Buf(range))));
                    }
                    self.assembly
                        .get_or_insert_default()
                        .extend_from_slice(&buf[range]);
                    if done {
                        self.msg = None;
                        self.assembly_delivered = true;
                        return Ok(Some(RawEvent::Message(kind, Payload::Assembly)));
                    }
                }
            }
        }
    }

    fn control_frame(
        &mut self,
        opcode: OpCode,
        src: Payload,
        buf: &[u8],
    ) -> Result<RawEvent, ProtocolError> {
        let key = self.mask_key();
        let payload = self.payload(&src, buf);
        match opcode {
            OpCode::Ping => {
                if self.config.auto_pong && self.can_send() {
                    // Only the latest ping needs an answer (RFC 6455 §5.5.3).
                    let pong = ControlFrame::new(OpCode::Pong, [payload, &[]], key);
                    self.rare().pong_out = Some(pong);
                }
                Ok(RawEvent::Ping(src))
            }
            OpCode::Pong => Ok(RawEvent::Pong(src)),
            _ => {
                let (code, _) = parse_close_payload(payload)?;
                match &mut self.close {
                    Some(c) => c.received = true,
                    None => {
                        // Echo the peer's code (none for 1005), as the RFC suggests.
                        let code_bytes = code.0.to_be_bytes();
                        let reply: &[u8] = if code == CloseCode::NO_STATUS {
                            &[]
                        } else {
                            &code_bytes
                        };
                        // A pong queued before stays: `poll_transmit` sends it before the close.
                        let close = ControlFrame::new(OpCode::Close, [reply, &[]], key);
                        self.rare().close_out = Some(close);
                        self.close = Some(CloseInfo {
                            code,
                            initiator: Initiator::Remote,
                            received: true,
                            sent: false,
                        });
                    }
                }
                Ok(RawEvent::Close(code, src))
            }
        }
    }

    /// Accept RSV1 on the first frame of data messages: permessage-deflate was negotiated,
    /// and this side compresses with a window of at most `window_bits` (8-15). Compressed
    /// messages then come whole as [`RawEvent::Compressed`], whatever the [`Delivery`].
    pub fn enable_deflate(&mut self, window_bits: u8) {
        self.decoder.set_allowed_rsv(RSV1);
        self.deflate_bits = window_bits.clamp(8, 15);
    }

    /// The window this side may compress with, if permessage-deflate was negotiated.
    pub fn deflate_window(&self) -> Option<u8> {
        (self.deflate_bits != 0).then_some(self.deflate_bits)
    }

    /// Check an inflated message: text must be UTF-8. On failure (or with `Err` from
    /// inflating, passed in as `inflated`), the connection is failed as
    /// [`read_event`](Self::read_event) fails it: the close with the error's code is queued
    /// and further input is discarded.
    pub fn check_inflated(
        &mut self,
        kind: DataKind,
        inflated: Result<&[u8], ProtocolError>,
    ) -> Result<(), ProtocolError> {
        let r = inflated.and_then(|data| match kind {
            DataKind::Text if simdutf8::basic::from_utf8(data).is_err() => {
                Err(ProtocolError::InvalidUtf8)
            }
            _ => Ok(()),
        });
        if let Err(e) = r {
            self.fail(e);
        }
        r
    }

    /// The header of a compressed data frame (RSV1 set on the first frame of a message) of
    /// `len` bytes, masked for a client.
    pub fn compressed_data_head(
        &mut self,
        opcode: OpCode,
        fin: bool,
        len: u64,
    ) -> Result<(FrameHead, Option<[u8; 4]>), SendError> {
        let rsv = if opcode == OpCode::Continuation {
            0
        } else {
            RSV1
        };
        self.head_with_rsv(opcode, fin, len, rsv)
    }

    /// A data frame's header with `rsv`, and the client's masking key; refused once closing.
    fn head_with_rsv(
        &mut self,
        opcode: OpCode,
        fin: bool,
        len: u64,
        rsv: u8,
    ) -> Result<(FrameHead, Option<[u8; 4]>), SendError> {
        if !self.can_send() {
            return Err(SendError::Closing);
        }
        let key = self.mask_key();
        Ok((FrameHead::with_rsv(fin, rsv, opcode, len, key), key))
    }

    /// Fail the connection: queue a close with the error's code, unless a close was already
    /// sent or queued, and stop reading.
    fn fail(&mut self, e: ProtocolError) {
        let code = e.close_code();
        match &mut self.close {
            Some(c) => {
                // The close handshake was under way; there is nothing more to read.
                c.initiator = Initiator::Library;
                let queued = self.rare.as_ref().is_some_and(|r| r.close_out.is_some());
                if !c.sent && !queued {
                    let f = self.close_frame(code, e.reason());
                    self.rare().close_out = Some(f);
                }
            }
            None => {
                let f = self.close_frame(code, e.reason());
                self.rare().close_out = Some(f);
                self.close = Some(CloseInfo {
                    code,
                    initiator: Initiator::Library,
                    received: false,
                    sent: false,
                });
            }
        }
        let r = self.rare();
        r.ping_out = None;
        r.pong_out = None;
    }

    /// The rare state, allocated on first use.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Free the rare state once nothing in it is needed.
    fn trim_rare(&mut self) {
        if self.rare.as_ref().is_some_and(|r| r.is_empty()) {
            self.rare = None;
        }
    }

    fn close_frame(&mut self, code: CloseCode, reason: &str) -> ControlFrame {
        let key = self.mask_key();
        ControlFrame::new(
            OpCode::Close,
            [&code.0.to_be_bytes(), reason.as_bytes()],
            key,
        )
    }

    /// Start the close handshake with `code` and `reason` (at most 123 bytes of UTF-8).
    pub fn queue_close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        if self.close.is_some() {
            return Err(SendError::Closing);
        }
        if !code.is_sendable() || reason.len() > MAX_CONTROL_PAYLOAD - 2 {
            return Err(SendError::InvalidClose);
        }
        let f = self.close_frame(code, reason);
        self.rare().close_out = Some(f);
        self.close = Some(CloseInfo {
            code,
            initiator: Initiator::Local,
            received: false,
            sent: false,
        });
        Ok(())
    }

    /// Queue a ping with `payload` (at most 125 bytes).
    pub fn queue_ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        if !self.can_send() {
            return Err(SendError::Closing);
        }
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(SendError::ControlTooLong);
        }
        let ping = ControlFrame::new(OpCode::Ping, [payload, &[]], self.mask_key());
        self.rare().ping_out = Some(ping);
        Ok(())
    }

    /// The header of a data frame the adapter is about to send, and for a client the masking
    /// key the payload must be masked with. Refused once a close was queued or received.
    pub fn data_head(
        &mut self,
        opcode: OpCode,
        fin: bool,
        len: u64,
    ) -> Result<(FrameHead, Option<[u8; 4]>), SendError> {
        self.head_with_rsv(opcode, fin, len, 0)
    }

    /// The next control frame to send: pings and pongs first, the close frame last (nothing
    /// may follow it).
    #[inline]
    pub fn poll_transmit(&mut self) -> Option<ControlFrame> {
        // Checked inline: almost every call (one per message read) finds nothing.
        self.rare.as_ref()?;
        self.poll_transmit_rare()
    }

    #[inline(never)]
    fn poll_transmit_rare(&mut self) -> Option<ControlFrame> {
        let r = self.rare.as_mut()?;
        if let Some(f) = r.ping_out.take().or_else(|| r.pong_out.take()) {
            return Some(f);
        }
        let Some(f) = r.close_out.take() else {
            self.trim_rare();
            return None;
        };
        if let Some(c) = &mut self.close {
            c.sent = true;
            if !c.received {
                r.close_deadline = self.now.map(|n| n + self.config.close_timeout);
            }
        }
        Some(f)
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called, if ever. Needs the
    /// time from `note_activity` or `handle_timeout`; without it there are no timeouts.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        if let Some(d) = self.rare.as_ref().and_then(|r| r.close_deadline) {
            return Some(d);
        }
        if self.close.is_some() {
            return None;
        }
        let idle = self.config.idle_timeout?;
        let now = self.now?;
        let wait = if self.ping_outstanding {
            idle * 2
        } else {
            idle
        };
        // The last input plus `wait`; already due (as of `now`) if that has passed.
        Some(
            match wait.checked_sub(Duration::from_nanos(self.input_age_ns)) {
                Some(left) => now + left,
                None => now,
            },
        )
    }

    /// Time has passed: send the idle ping, or give up on a silent peer or a close handshake
    /// that did not finish in time (the transport should then be closed, code 1006).
    pub fn handle_timeout(&mut self, now: Instant) {
        // The last input stays where it was (the first time given counts as one); time given
        // out of order moves it no later than `now`.
        if let Some(prev) = self.now {
            let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            self.input_age_ns = if now >= prev {
                self.input_age_ns.saturating_add(ns(now - prev))
            } else {
                self.input_age_ns.saturating_sub(ns(prev - now))
            };
        }
        self.now = Some(now);
        let Some(deadline) = self.poll_timeout() else {
            return;
        };
        if now < deadline {
            return;
        }
        if self
            .rare
            .as_ref()
            .is_some_and(|r| r.close_deadline.is_some())
            || self.ping_outstanding
        {
            self.give_up();
        } else if self.can_send() {
            self.ping_outstanding = true;
            let ping = ControlFrame::new(OpCode::Ping, [&[], &[]], self.mask_key());
            self.rare().ping_out = Some(ping);
        }
    }

    fn give_up(&mut self) {
        self.timed_out = true;
        self.rare = None;
        match &mut self.close {
            Some(c) => c.code = CloseCode::ABNORMAL,
            None => {
                self.close = Some(CloseInfo {
                    code: CloseCode::ABNORMAL,
                    initiator: Initiator::Library,
                    received: false,
                    sent: false,
                })
            }
        }
    }

    fn mask_key(&mut self) -> Option<[u8; 4]> {
        if self.role == Role::Server {
            return None;
        }
        // xorshift64*: cheap, and enough for masking, whose purpose is to keep payload bytes
        // from being chosen by the sender's script (not secrecy).
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        Some(((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32).to_le_bytes())
    }
}
