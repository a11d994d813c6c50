//! The application's side: the [`Handler`] callbacks and the [`WebSocket`] a callback acts
//! on. Callbacks run on the worker thread that owns the connection; nothing here is shared
//! between threads.

use std::fmt;

use uproar_wire::{CloseCode, DataKind};

use crate::ctx::Ctx;
use crate::http::{HttpRequest, Response, Upgrade, UpgradeRequest};
use crate::id::ConnId;
use crate::message::{CloseEvent, Frame, Message, SendStatus};

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

    /// Close with `code` and `reason` at `at` (within the timer's 100 ms resolution) unless it
    /// has closed by then: a connection whose credential expires, say. A later call replaces
    /// an earlier one.
    pub fn close_at(&mut self, at: std::time::Instant, code: CloseCode, reason: &'static str) {
        self.ctx.close_at(self.id, at, code, reason)
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
