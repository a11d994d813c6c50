//! Engine configuration. Every default says why it is what it is.

use std::time::Duration;

/// What to do when a send would take a connection's buffered bytes over
/// [`Config::max_buffered_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackpressurePolicy {
    /// Drop the message and close the connection with 1008 "slow consumer": a client that
    /// cannot keep up gets a clear answer and stops costing memory. The default.
    Close,
    /// Drop the message (the send returns [`SendStatus::Dropped`](crate::SendStatus)) and
    /// keep the connection: for feeds where only the latest state matters.
    Drop,
}

/// Which I/O driver the workers run. Both drive the same connection lifecycle, so behaviour
/// is the same; they differ in cost (docs/operations.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Driver {
    /// io_uring if this process may use it (ring setup and every operation the driver needs,
    /// probed at start), else epoll, saying why in the log. The default.
    Auto,
    /// io_uring: multishot accept and recv over provided buffers, one system call per loop
    /// turn. Fails to start where io_uring is unavailable, saying what would enable it.
    IoUring,
    /// epoll through mio (kqueue on macOS and the BSDs): works in every container and sandbox
    /// that allows ordinary sockets.
    Epoll,
}

impl Driver {
    /// The name used by flags, metrics and logs: `auto`, `io-uring`, `epoll`.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Auto => "auto",
            Driver::IoUring => "io-uring",
            Driver::Epoll => "epoll",
        }
    }
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Driver {
    type Err = String;

    fn from_str(s: &str) -> Result<Driver, String> {
        match s {
            "auto" => Ok(Driver::Auto),
            "io-uring" | "io_uring" | "iouring" => Ok(Driver::IoUring),
            "epoll" => Ok(Driver::Epoll),
            other => Err(format!(
                "unknown driver {other:?}: use auto, io-uring or epoll"
            )),
        }
    }
}

/// permessage-deflate (RFC 7692): whether and how messages are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Deflate {
    /// Nothing offered is accepted. The engine's default: compression costs CPU, and whether
    /// it pays depends on the traffic.
    Off,
    /// For broadcast: every accepted offer is answered with no context takeover both ways, so
    /// one compressor and one inflater per worker serve every connection (an idle connection
    /// holds no deflate memory) and a published message is compressed once per worker.
    Shared,
    /// For small repetitive messages (chat, echo): a compressor and an inflater per
    /// connection, with context takeover, made on first use.
    Dedicated,
}

impl Deflate {
    /// `off`, `shared`, `dedicated`.
    pub fn name(self) -> &'static str {
        match self {
            Deflate::Off => "off",
            Deflate::Shared => "shared",
            Deflate::Dedicated => "dedicated",
        }
    }
}

impl std::str::FromStr for Deflate {
    type Err = String;

    fn from_str(s: &str) -> Result<Deflate, String> {
        match s {
            "off" => Ok(Deflate::Off),
            "shared" => Ok(Deflate::Shared),
            "dedicated" => Ok(Deflate::Dedicated),
            other => Err(format!(
                "unknown deflate mode {other:?}: use off, shared or dedicated"
            )),
        }
    }
}

/// Limits and sizes of a server. Build it with [`Server::builder`](crate::Server::builder).
#[derive(Debug, Clone)]
pub struct Config {
    /// The I/O driver. Default [`Driver::Auto`]: io_uring where it is allowed (the cheapest),
    /// epoll where a container or sysctl blocks it, rather than not starting.
    pub driver: Driver,
    /// Worker threads, one io_uring each. Default: one per CPU this process may run on
    /// (its affinity mask): thread-per-core is the design.
    pub threads: usize,
    /// Pin each worker to its own CPU. Default true: a worker that migrates loses its caches
    /// and competes with its siblings.
    pub pin_threads: bool,
    /// Largest frame payload accepted, else close 1009. Default 16 MiB: the largest frame in
    /// the Autobahn suite; one header cannot announce more than we would hold.
    pub max_frame_size: u64,
    /// Largest message accepted, else close 1009. Default 16 MiB: a fragmented message is
    /// held whole before the application sees it.
    pub max_message_size: u64,
    /// Largest HTTP request head, else 431. Default 8 KiB: nginx's default, and a bound on
    /// what a connection can make us hold before it is even a WebSocket.
    pub max_header_bytes: usize,
    /// Largest plain-HTTP request body, else 413. Default 1 MiB: enough for a published
    /// message; bodies are held whole.
    pub max_body_bytes: usize,
    /// Time from accept to a complete request head (and the keep-alive idle time of plain
    /// HTTP), else 408 and close. Default 10 s: generous for real clients, short enough that
    /// slow-loris connections do not pile up.
    pub handshake_timeout: Duration,
    /// After this long without input, ping; after as long again, close (1006). Default 120 s:
    /// below common proxy idle cut-offs once the ping is counted, and cheap at 10,000s of
    /// connections. `None` disables it.
    pub idle_timeout: Option<Duration>,
    /// Time to wait for the peer's close frame after ours, and for its FIN after the close
    /// handshake. Default 5 s: long enough for a loaded peer, short enough that dead peers do
    /// not pile up.
    pub close_timeout: Duration,
    /// Most open connections over all workers; more are answered 503 and closed. Default
    /// 10,000: fits the common `ulimit -n` hard limits with room for the engine's own
    /// descriptors; raise it with the limit.
    pub max_connections: usize,
    /// Most bytes queued for one connection and not yet taken by its socket. Default 1 MiB:
    /// a burst of large messages fits; a peer that stops reading cannot cost more.
    pub max_buffered_bytes: usize,
    /// What happens when a send would pass `max_buffered_bytes`. Default
    /// [`BackpressurePolicy::Close`].
    pub backpressure: BackpressurePolicy,
    /// Size of each pooled receive buffer (io_uring), and of the one read buffer each epoll
    /// worker reads every socket into. Default 32 KiB: a frame that fits in one buffer is
    /// handed over in place, one that straddles two is copied; at 16 KiB every 16 KiB message
    /// straddled, and echoing them cost twice the CPU (measured, docs/benchmarks.md).
    pub recv_buffer_size: u32,
    /// Receive buffers per worker (a power of two). Default 256 (8 MiB per worker): one
    /// completion per busy connection per loop turn for hundreds of connections; when the pool
    /// runs dry the recv is re-armed at the end of the turn, not lost.
    pub recv_buffers: u16,
    /// Fault the receive pool in at start. Default true: the hot path then never takes a
    /// page fault, and the pool shows in RSS from the start, as the fixed cost it is.
    pub prefault_buffers: bool,
    /// Submission queue entries per ring (the completion queue gets four times as many).
    /// Default 4096: a loop turn's sends for thousands of connections without an early submit.
    pub ring_entries: u32,
    /// Listen backlog. Default 4096: connection storms queue instead of being refused.
    pub backlog: i32,
    /// Let other processes listen on the same address too (`SO_REUSEPORT` across processes),
    /// for a handover during a restart: the kernel then splits new clients between the
    /// processes, and each has its own topics (a publish reaches only its own subscribers).
    /// Default false: a second server on a port in use is refused at start, never a silent
    /// split.
    pub reuse_port: bool,
    /// permessage-deflate. Default [`Deflate::Off`].
    pub deflate: Deflate,
    /// Messages shorter than this go out uncompressed even to connections that negotiated
    /// compression. Default 64 bytes: a sync-flushed deflate block carries a few bytes of
    /// framing, so below this compression rarely saves bytes and always costs CPU.
    pub deflate_min_size: usize,
    /// The largest window a per-connection compressor uses in [`Deflate::Dedicated`] mode
    /// (9-15 bits), also asked of clients that allow it. Default 11 (2 KiB): small messages
    /// repeat within a few KiB, and a smaller window searches less.
    pub deflate_window_bits: u8,
    /// zlib's compression level (1-9). Default 6, zlib's own: in shared mode a message is
    /// compressed once per worker, so the level's CPU is spread over every subscriber.
    pub deflate_level: u8,
    /// TLS: with a configuration, the listener serves `https://` and `wss://` only. Default
    /// none (plain `http://` and `ws://`): certificates are the operator's to give.
    pub tls: Option<crate::TlsConfig>,
    /// Told of topics becoming active or idle on this node and of publishes made here (a
    /// broker bridge). Default none.
    pub observer: Option<std::sync::Arc<dyn crate::NodeObserver>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            driver: Driver::Auto,
            threads: core_affinity::get_core_ids().map_or(1, |c| c.len().max(1)),
            pin_threads: true,
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_header_bytes: uproar_wire::handshake::DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: 1 << 20,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(120)),
            close_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            max_buffered_bytes: 1 << 20,
            backpressure: BackpressurePolicy::Close,
            recv_buffer_size: 32 << 10,
            recv_buffers: 256,
            prefault_buffers: true,
            ring_entries: 4096,
            backlog: 4096,
            reuse_port: false,
            deflate: Deflate::Off,
            deflate_min_size: 64,
            deflate_window_bits: 11,
            deflate_level: 6,
            tls: None,
            observer: None,
        }
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        use crate::Error::Config as E;
        if self.threads == 0 {
            return Err(E("threads must be at least 1"));
        }
        if !self.recv_buffers.is_power_of_two() || self.recv_buffers > 1 << 15 {
            return Err(E("recv_buffers must be a power of two up to 32768"));
        }
        if self.recv_buffer_size < 256 {
            return Err(E("recv_buffer_size must be at least 256 bytes"));
        }
        if self.max_connections == 0 {
            return Err(E("max_connections must be at least 1"));
        }
        if self.max_header_bytes < 256 {
            return Err(E("max_header_bytes must be at least 256"));
        }
        if !(9..=15).contains(&self.deflate_window_bits) {
            return Err(E("deflate_window_bits must be 9 to 15"));
        }
        if !(1..=9).contains(&self.deflate_level) {
            return Err(E("deflate_level must be 1 to 9"));
        }
        if self.ring_entries < 8 {
            return Err(E("ring_entries must be at least 8"));
        }
        Ok(())
    }

    pub(crate) fn wire(&self) -> uproar_wire::Config {
        uproar_wire::Config {
            max_frame_size: self.max_frame_size,
            max_message_size: self.max_message_size,
            delivery: uproar_wire::Delivery::Whole,
            auto_pong: true,
            idle_timeout: self.idle_timeout,
            close_timeout: self.close_timeout,
        }
    }
}
