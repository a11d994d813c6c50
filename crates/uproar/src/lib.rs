//! # uproar: a thread-per-core WebSocket server engine
//!
//! One worker thread per core, each pinned, each with its own listener, connections and
//! timers; nothing is shared on the hot path. Each worker runs the same sans-I/O connection
//! lifecycle over one of two drivers: io_uring (multishot recv over a pool of provided
//! buffers, so an idle connection holds no read buffer; a loop turn's sends go to the kernel
//! with one `io_uring_enter`) or, where io_uring is blocked (default Docker and Kubernetes
//! seccomp profiles, Podman, gVisor, RHEL 9), epoll through mio. Frames are parsed and
//! unmasked in place by [`uproar_wire`]; replies are coalesced per connection.
//!
//! ```no_run
//! use uproar::{Ctx, Handler, Message, Server, Upgrade, UpgradeRequest, WebSocket};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     type Conn = ();
//!     fn on_upgrade<'r>(&mut self, _: &mut Ctx<()>, _: &UpgradeRequest<'r>) -> Upgrade<'r, ()> {
//!         Upgrade::accept(())
//!     }
//!     fn on_message(&mut self, ws: &mut WebSocket<'_, ()>, msg: Message<'_>) {
//!         let _ = ws.send(msg.kind(), msg.data());
//!     }
//! }
//!
//! let server = Server::builder().start(|_worker| Echo).unwrap();
//! server.join().unwrap();
//! ```
//!
//! The io_uring driver needs Linux 6.0 or later, 6.1 for the cheapest task-running mode; the
//! default [`Driver::Auto`] falls back to epoll where it cannot run. See
//! `docs/operations.md`. TLS ([`Builder::tls`]) and permessage-deflate ([`Builder::deflate`])
//! work on both drivers.

#![deny(missing_docs)]
#![deny(unsafe_code)]

// Layers, each using only those above it: ids and buffers; messages and HTTP values; the
// mesh; a connection's slot; the callbacks' context; the handler; the lifecycle; the
// drivers; the server.
mod compress;
mod config;
mod error;
mod id;
mod slab;
mod stats;
#[allow(unsafe_code)]
mod sys;
mod timer;
mod tls;
mod tx;

mod http;
mod message;

mod mesh;

mod conn;
mod ctx;
mod handler;
mod lifecycle;

mod epoll;
#[allow(unsafe_code)]
mod ring;
mod uring;

mod server;

#[cfg(any(test, fuzzing))]
pub mod sim;
#[cfg(test)]
mod sim_tests;

pub use config::{BackpressurePolicy, Config, Deflate, Driver};
pub use ctx::Ctx;
pub use error::Error;
pub use handler::{Handler, WebSocket};
pub use http::{HttpRequest, Response, Upgrade, UpgradeRequest};
pub use id::ConnId;
pub use mesh::NodeObserver;
pub use message::{CloseEvent, Frame, Message, SendStatus};
pub use server::{Builder, Handle, Publisher, Server};
pub use stats::{Rejection, WorkerStats};
pub use tls::{TlsConfig, TlsError};
pub use uproar_pubsub::Counters as PubSubCounters;
pub use uproar_wire::{CloseCode, DataKind, Initiator};
