//! # uproar: a thread-per-core io_uring WebSocket server engine
//!
//! One worker thread per core, each pinned, each with its own io_uring, `SO_REUSEPORT`
//! listener, connections and timers; nothing is shared on the hot path. Receives use multishot
//! recv over a pool of provided buffers, so an idle connection holds no read buffer; frames are
//! parsed and unmasked in place by [`uproar_wire`]; replies are coalesced per connection and a
//! loop turn's sends go to the kernel with one `io_uring_enter`.
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
//! Needs Linux 6.0 or later (multishot recv), 6.1 for the cheapest task-running mode; see
//! `docs/operations.md` for limits and sysctls. Not here yet: TLS, permessage-deflate, an
//! epoll fallback for sandboxes without io_uring.

#![deny(missing_docs)]
#![deny(unsafe_code)]

mod app;
mod config;
mod ctx;
mod error;
#[allow(unsafe_code)]
mod ring;
mod server;
mod slab;
mod stats;
#[allow(unsafe_code)]
mod sys;
mod timer;
mod tx;
mod worker;

pub use app::{
    CloseEvent, ConnId, Frame, Handler, HttpRequest, Message, Response, SendStatus, Upgrade,
    UpgradeRequest, WebSocket,
};
pub use config::{BackpressurePolicy, Config};
pub use ctx::Ctx;
pub use error::Error;
pub use server::{Builder, Handle, Publisher, Server};
pub use stats::{Rejection, WorkerStats};
pub use uproar_pubsub::Counters as PubSubCounters;
pub use uproar_wire::{CloseCode, DataKind, Initiator};
