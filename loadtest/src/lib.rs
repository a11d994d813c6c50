//! # loadtest: a load generator for any RFC 6455 server
//!
//! Scenarios: `echo` (closed loop at a depth, or open loop at a rate), `broadcast` (publishers
//! and subscribers on a topic URL, every delivery checked for loss, duplication and order,
//! slow consumers on request) and `connect` (open and hold connections, server memory per
//! connection). Every payload carries a sequence number and its scheduled send time
//! ([`payload`]), so every message is verified and its latency measured from when it was
//! due, not when it went out (no coordinated omission).
//!
//! One epoll loop per thread (mio), one shared read buffer per thread, frames through
//! `uproar-wire`'s client role. It reports its own CPU use and warns near saturation: a
//! saturated client measures itself, not the server.

pub mod payload;
pub mod run;
pub mod stats;
pub mod sys;
pub mod target;
pub mod tls;
mod worker;

pub use run::{Load, Report, RunConfig, Scenario, run};
