//! The application's side: the [`Handler`] callbacks and the values they get and return.
//! Callbacks run on the worker thread that owns the connection; nothing here is shared
//! between threads.

use std::borrow::Cow;
use std::fmt;

use bytes::{Bytes, BytesMut};
use uproar_wire::handshake::{self, Request};
use uproar_wire::{CloseCode, DataKind, FrameHead, Initiator};

use crate::ctx::Ctx;

/// A connection's id, valid on the worker that accepted it. Ids are never reused while a
/// connection could still be referred to: a closed connection's id matches nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// What happened to a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum SendStatus {
    /// Queued; it goes to the socket at the end of this loop turn.
    Sent,
    /// Queued behind data the socket has not taken yet: the peer is slower than the sender.
    /// [`Handler::on_drain`] is called when the backlog is gone.
    Queued,
    /// Not queued: the connection is closing or gone, or the message would have taken its
    /// backlog over `max_buffered_bytes` (then, under the default policy, it is being closed
    /// with 1008).
    Dropped,
}

/// A received message. Text has been validated as UTF-8.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    kind: DataKind,
    data: &'a [u8],
}

impl<'a> Message<'a> {
    pub(crate) fn new(kind: DataKind, data: &'a [u8]) -> Message<'a> {
        Message { kind, data }
    }

    /// Text or binary.
    pub fn kind(&self) -> DataKind {
        self.kind
    }

    /// The payload.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The payload as text, for a text message.
    pub fn as_text(&self) -> Option<&'a str> {
        if self.kind != DataKind::Text {
            return None;
        }
        // Already validated by the codec; this re-check is SIMD-fast and keeps `unsafe` out.
        simdutf8::basic::from_utf8(self.data).ok()
    }
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("kind", &self.kind)
            .field("len", &self.data.len())
            .finish()
    }
}

/// A frame encoded once (header and payload in one shared buffer), to be sent to many
/// connections without copying: [`Ctx::send_frame`].
#[derive(Debug, Clone)]
pub struct Frame {
    pub(crate) bytes: Bytes,
}

impl Frame {
    /// Encode an unfragmented server-to-client frame.
    pub fn new(kind: DataKind, payload: &[u8]) -> Frame {
        let head = FrameHead::new(true, kind.opcode(), payload.len() as u64, None);
        let mut b = BytesMut::with_capacity(head.as_bytes().len() + payload.len());
        b.extend_from_slice(head.as_bytes());
        b.extend_from_slice(payload);
        Frame { bytes: b.freeze() }
    }

    /// The encoded frame.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// How a connection ended, for [`Handler::on_close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseEvent<'a> {
    /// The code: the peer's, if it started the close; ours otherwise; 1006 if the connection
    /// ended without a close handshake.
    pub code: CloseCode,
    /// The peer's reason, if it sent a close frame.
    pub reason: &'a str,
    /// Who started the close.
    pub initiator: Initiator,
    /// Both close frames were exchanged.
    pub clean: bool,
}

/// A validated upgrade request, for [`Handler::on_upgrade`].
#[derive(Debug)]
pub struct UpgradeRequest<'r> {
    pub(crate) inner: &'r handshake::Upgrade<'r>,
}

impl<'r> UpgradeRequest<'r> {
    /// The path of the request target.
    pub fn path(&self) -> &'r str {
        self.inner.request().path()
    }

    /// The query of the request target, without `?`.
    pub fn query(&self) -> Option<&'r str> {
        self.inner.request().query()
    }

    /// The `Origin` header (browsers always send it).
    pub fn origin(&self) -> Option<&'r [u8]> {
        self.inner.origin()
    }

    /// Subprotocols offered, in the client's order of preference.
    pub fn protocols(&self) -> impl Iterator<Item = &'r str> + '_ {
        self.inner.protocols()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &'static str) -> Option<&'r [u8]> {
        self.inner.request().header(name)
    }
}

/// The answer to an upgrade request.
#[derive(Debug)]
pub enum Upgrade<'r, C> {
    /// Open the WebSocket with this per-connection state, and optionally a subprotocol (one of
    /// those offered).
    Accept {
        /// The connection's state, given to every callback.
        conn: C,
        /// The chosen subprotocol.
        protocol: Option<&'r str>,
    },
    /// Refuse with an HTTP status and a short reason (sent as the body).
    Reject {
        /// The status, e.g. 403 or 404.
        status: u16,
        /// Why.
        reason: Cow<'static, str>,
    },
}

impl<'r, C> Upgrade<'r, C> {
    /// Accept with `conn` as the connection's state.
    pub fn accept(conn: C) -> Upgrade<'r, C> {
        Upgrade::Accept {
            conn,
            protocol: None,
        }
    }

    /// Refuse with `status` and `reason`.
    pub fn reject(status: u16, reason: impl Into<Cow<'static, str>>) -> Upgrade<'r, C> {
        Upgrade::Reject {
            status,
            reason: reason.into(),
        }
    }
}

/// A plain HTTP request (not an upgrade), with its whole body.
#[derive(Debug)]
pub struct HttpRequest<'r> {
    pub(crate) head: &'r Request<'r>,
    pub(crate) body: &'r [u8],
}

impl<'r> HttpRequest<'r> {
    /// `GET`, `POST`, ...
    pub fn method(&self) -> &'r str {
        self.head.method()
    }

    /// The path of the request target.
    pub fn path(&self) -> &'r str {
        self.head.path()
    }

    /// The query of the request target, without `?`.
    pub fn query(&self) -> Option<&'r str> {
        self.head.query()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &'static str) -> Option<&'r [u8]> {
        self.head.header(name)
    }

    /// The body (`Content-Length` bytes).
    pub fn body(&self) -> &'r [u8] {
        self.body
    }
}

/// A plain HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    headers: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    body: Cow<'static, [u8]>,
}

impl Response {
    /// A response with `status` and an empty body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Cow::Borrowed(&[]),
        }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<Cow<'static, str>>) -> Response {
        let body = match body.into() {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        };
        Response::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body)
    }

    /// Add a header.
    pub fn header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Cow<'static, [u8]>>) -> Response {
        self.body = body.into();
        self
    }

    /// The status.
    pub fn status(&self) -> u16 {
        self.status
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>, close: bool) {
        let mut headers: Vec<(&str, &[u8])> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_ref(), v.as_bytes()))
            .collect();
        if close && self.status < 400 {
            headers.push(("Connection", b"close"));
        }
        handshake::write_response(out, self.status, &headers, &self.body);
    }
}

/// A WebSocket connection, inside a callback.
pub struct WebSocket<'a, C> {
    pub(crate) ctx: &'a mut Ctx<C>,
    pub(crate) id: ConnId,
}

impl<C> fmt::Debug for WebSocket<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket").field("id", &self.id).finish()
    }
}

impl<'a, C> WebSocket<'a, C> {
    /// This connection's id (to address it later through [`Ctx`]).
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// This connection's state.
    pub fn data(&self) -> &C {
        self.ctx
            .conn(self.id)
            .expect("a callback's connection is open")
    }

    /// This connection's state, mutably.
    pub fn data_mut(&mut self) -> &mut C {
        self.ctx
            .conn_mut(self.id)
            .expect("a callback's connection is open")
    }

    /// Send a whole message (copied into the connection's send buffer).
    pub fn send(&mut self, kind: DataKind, payload: &[u8]) -> SendStatus {
        self.ctx.send(self.id, kind, payload)
    }

    /// Send a text message.
    pub fn send_text(&mut self, text: &str) -> SendStatus {
        self.ctx.send(self.id, DataKind::Text, text.as_bytes())
    }

    /// Send a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> SendStatus {
        self.ctx.send(self.id, DataKind::Binary, data)
    }

    /// Send a frame encoded once for many connections, without copying it.
    pub fn send_frame(&mut self, frame: &Frame) -> SendStatus {
        self.ctx.send_frame(self.id, frame)
    }

    /// Start the close handshake with `code` and `reason` (at most 123 bytes).
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        self.ctx.close(self.id, code, reason)
    }

    /// Subscribe this connection to `topic`; false if it already was.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        self.ctx.subscribe(self.id, topic)
    }

    /// Unsubscribe this connection from `topic`; false if it was not subscribed.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        self.ctx.unsubscribe(self.id, topic)
    }

    /// Publish to `topic` on every worker (see [`Ctx::publish`]).
    pub fn publish(&mut self, topic: &str, kind: DataKind, payload: &[u8]) -> usize {
        self.ctx.publish(topic, kind, payload)
    }

    /// Bytes queued for this connection that its socket has not taken yet.
    pub fn buffered_amount(&self) -> usize {
        self.ctx.buffered_amount(self.id)
    }

    /// The worker's context: other connections, the time, the worker's index.
    pub fn ctx(&mut self) -> &mut Ctx<C> {
        self.ctx
    }
}

/// The application: one instance per worker thread, made by the factory given to
/// [`Builder::start`](crate::Builder::start). Every callback runs on that worker's thread.
pub trait Handler: 'static {
    /// Per-connection state, created by [`on_upgrade`](Self::on_upgrade).
    type Conn: 'static;

    /// A valid WebSocket upgrade request arrived: accept it (with the connection's state and
    /// optionally a subprotocol) or reject it with an HTTP status.
    fn on_upgrade<'r>(
        &mut self,
        ctx: &mut Ctx<Self::Conn>,
        req: &UpgradeRequest<'r>,
    ) -> Upgrade<'r, Self::Conn>;

    /// The connection is open (the 101 response is queued).
    fn on_open(&mut self, ws: &mut WebSocket<'_, Self::Conn>) {
        let _ = ws;
    }

    /// A whole message arrived.
    fn on_message(&mut self, ws: &mut WebSocket<'_, Self::Conn>, msg: Message<'_>);

    /// A backlog that made a send return [`SendStatus::Queued`] has been taken by the socket.
    fn on_drain(&mut self, ws: &mut WebSocket<'_, Self::Conn>) {
        let _ = ws;
    }

    /// The connection is gone; its state is handed back. Called once per opened connection.
    fn on_close(
        &mut self,
        ctx: &mut Ctx<Self::Conn>,
        id: ConnId,
        conn: Self::Conn,
        close: CloseEvent<'_>,
    ) {
        let _ = (ctx, id, conn, close);
    }

    /// A plain HTTP request (not an upgrade) on the same port. Default: 404.
    fn on_http(&mut self, ctx: &mut Ctx<Self::Conn>, req: &HttpRequest<'_>) -> Response {
        let _ = (ctx, req);
        Response::text(404, "not found\n")
    }
}
