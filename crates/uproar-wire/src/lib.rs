//! # uproar-wire: RFC 6455 without I/O
//!
//! The WebSocket wire format for both roles, over caller-owned bytes: no sockets, threads or
//! clock (time is passed in). The uproar engine, the `loadtest` client and the tests are all
//! thin adapters over this one codec.
//!
//! - [`decode::Decoder`]: frames split at any byte across any number of buffers; payload as
//!   ranges into the caller's buffer, unmasked in place; every header rule of §5.2 enforced.
//! - [`mask`]: SIMD unmasking (AVX-512, AVX2, SSE2, NEON, SWAR) behind one dispatch point,
//!   with a key phase so a payload split across buffers continues correctly.
//! - [`utf8::Utf8Validator`]: text validated incrementally, failing at the first bad byte.
//! - [`conn::Connection`]: message assembly, limits, auto-pong, the close handshake and
//!   timeouts, as `handle_*` / `queue_*` / `poll_*` calls.
//! - [`frame::FrameHead`]: headers encoded into a small array, so a shared payload is sent
//!   after it without a copy.
//! - [`handshake`]: the HTTP/1.1 upgrade, server and client side.
//! - [`close::CloseCode`], [`error::ProtocolError`]: every error names its close code.
//!
//! What it does not do: compression (permessage-deflate is left room for through the RSV
//! bits), TLS, or any I/O.
//!
//! ```
//! use uproar_wire::conn::{Config, Connection, Event, DataKind};
//!
//! let mut conn = Connection::server(Config::default());
//! // RFC 6455 §5.7: a masked "Hello" from a client.
//! let mut buf = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
//! let mut pos = 0;
//! let ev = conn.handle_read(&mut buf, &mut pos).unwrap();
//! assert_eq!(ev, Some(Event::Message { kind: DataKind::Text, data: b"Hello" }));
//! ```

#![deny(missing_docs)]
#![cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    forbid(unsafe_code)
)]

pub mod close;
pub mod conn;
pub mod decode;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;

pub use close::{CloseCode, Initiator};
pub use conn::{Config, Connection, DataKind, Delivery, Event, Payload, RawEvent, State};
pub use error::ProtocolError;
pub use frame::{FrameHead, FrameHeader, OpCode, Role};
