//! Messages in and out: what a callback receives, what a send returns, frames encoded once
//! for many connections, and how a connection ended.

use std::fmt;

use bytes::{Bytes, BytesMut};
use uproar_wire::{CloseCode, DataKind, FrameHead, Initiator};

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
    pub(crate) kind: DataKind,
    /// Where the payload starts in `bytes`.
    head_len: u8,
    /// May be sent compressed to connections that negotiated permessage-deflate.
    pub(crate) compressible: bool,
}

impl Frame {
    /// Encode an unfragmented server-to-client frame.
    pub fn new(kind: DataKind, payload: &[u8]) -> Frame {
        let head = FrameHead::new(true, kind.opcode(), payload.len() as u64, None);
        let mut b = BytesMut::with_capacity(head.as_bytes().len() + payload.len());
        b.extend_from_slice(head.as_bytes());
        b.extend_from_slice(payload);
        Frame {
            bytes: b.freeze(),
            kind,
            head_len: head.as_bytes().len() as u8,
            compressible: true,
        }
    }

    /// Never send this frame compressed, even to connections that negotiated
    /// permessage-deflate: for payloads that are compressed already (images, protobuf of
    /// random-looking bytes), where deflate would cost CPU and save nothing.
    pub fn no_compression(mut self) -> Frame {
        self.compressible = false;
        self
    }

    /// The encoded frame (uncompressed).
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[usize::from(self.head_len)..]
    }

    /// Text or binary.
    pub fn kind(&self) -> DataKind {
        self.kind
    }

    /// The payload as its own buffer, sharing the frame's (no copy).
    pub fn payload_bytes(&self) -> Bytes {
        self.bytes.slice(usize::from(self.head_len)..)
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
