//! The engine's test helpers: the shared testkit, and a builder for in-process servers.

#![allow(dead_code, unreachable_pub)]

pub use uproar_testkit::*;

use uproar::{Builder, Server};

/// A builder on 127.0.0.1:0 with one thread, not pinned (tests run in parallel).
pub fn builder() -> Builder {
    Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .threads(1)
        .pin_threads(false)
        .recv_buffers(64)
        .prefault_buffers(false)
}
