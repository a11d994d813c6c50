//! The engine's test helpers: the shared testkit, and a builder for in-process servers.

#![allow(dead_code, unreachable_pub)]

pub use uproar_testkit::*;

use uproar::{Builder, Driver, Server};

/// The driver the suites run against: `UPROAR_DRIVER` (auto, io-uring, epoll), default auto.
/// CI runs every suite once with io-uring and once with epoll.
pub fn driver() -> Driver {
    std::env::var("UPROAR_DRIVER").map_or(Driver::Auto, |d| d.parse().expect("UPROAR_DRIVER"))
}

/// A builder on 127.0.0.1:0 with one thread, not pinned (tests run in parallel), on the
/// driver of [`driver`].
pub fn builder() -> Builder {
    Server::builder()
        .driver(driver())
        .listen("127.0.0.1:0".parse().unwrap())
        .threads(1)
        .pin_threads(false)
        .recv_buffers(64)
        .prefault_buffers(false)
}
