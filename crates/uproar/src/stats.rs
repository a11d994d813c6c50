//! Per-worker counters. The worker counts in plain integers (`Counts`, in its `Ctx`) and
//! copies them once per loop turn into relaxed atomics (`Published`) that any thread can
//! read: no atomic operation per message, no contended cache line.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a request did not become a WebSocket, for the rejection counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// 400: a malformed request or upgrade.
    BadRequest,
    /// 401 or 403: refused by the application (token, origin).
    Forbidden,
    /// 404: no such route.
    NotFound,
    /// 408: the request did not arrive in time.
    Timeout,
    /// 426: unsupported WebSocket version.
    Version,
    /// 431: request head too large.
    TooLarge,
    /// 503: over `max_connections`.
    Overloaded,
    /// Any other status.
    Other,
}

impl Rejection {
    /// Every reason, in the order of [`WorkerStats::rejections`].
    pub const ALL: [Rejection; 8] = [
        Rejection::BadRequest,
        Rejection::Forbidden,
        Rejection::NotFound,
        Rejection::Timeout,
        Rejection::Version,
        Rejection::TooLarge,
        Rejection::Overloaded,
        Rejection::Other,
    ];

    /// The reason for an HTTP status.
    pub fn of_status(status: u16) -> Rejection {
        match status {
            400 => Rejection::BadRequest,
            401 | 403 => Rejection::Forbidden,
            404 => Rejection::NotFound,
            408 => Rejection::Timeout,
            426 => Rejection::Version,
            431 => Rejection::TooLarge,
            503 => Rejection::Overloaded,
            _ => Rejection::Other,
        }
    }

    /// A label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::BadRequest => "bad_request",
            Rejection::Forbidden => "forbidden",
            Rejection::NotFound => "not_found",
            Rejection::Timeout => "timeout",
            Rejection::Version => "version",
            Rejection::TooLarge => "too_large",
            Rejection::Overloaded => "overloaded",
            Rejection::Other => "other",
        }
    }

    fn index(self) -> usize {
        Rejection::ALL.iter().position(|&r| r == self).unwrap_or(7)
    }
}

/// A snapshot of one worker's counters (totals since start, except the gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Gauge: connections open on this worker (HTTP and WebSocket).
    pub connections: u64,
    /// Gauge: open WebSockets.
    pub websockets: u64,
    /// Gauge: bytes queued and not yet taken by sockets.
    pub buffered_bytes: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Upgrades completed.
    pub upgrades: u64,
    /// Requests refused, by [`Rejection`] (in the order of [`Rejection::ALL`]).
    pub rejections: [u64; 8],
    /// Messages received from clients.
    pub messages_in: u64,
    /// Payload bytes received from clients.
    pub bytes_in: u64,
    /// Messages queued to clients (sends and fan-out deliveries).
    pub messages_out: u64,
    /// Frame bytes queued to clients.
    pub bytes_out: u64,
    /// Messages published from this worker (callbacks) or received from other workers.
    pub published: u64,
    /// Fan-out deliveries.
    pub deliveries: u64,
    /// Messages dropped for subscribers over the limit (drop policy).
    pub drops: u64,
    /// Connections closed as slow consumers (close policy): fan-out subscribers and direct
    /// sends alike.
    pub slow_closes: u64,
    /// Messages published elsewhere that this worker's inbox refused because it held its
    /// maximum (the worker was far behind): its subscribers missed them.
    pub refused_inbox_full: u64,
    /// Messages published elsewhere that this worker's inbox refused because the server was
    /// shutting down.
    pub refused_stopping: u64,
    /// permessage-deflate: messages sent compressed (a shared encoding counts once per
    /// subscriber it went to).
    pub deflate_compressed: u64,
    /// permessage-deflate: messages sent uncompressed to connections that negotiated it
    /// (under the size threshold, or opted out).
    pub deflate_plain: u64,
    /// Payload bytes of the compressed messages before compression.
    pub deflate_bytes_before: u64,
    /// ... and after.
    pub deflate_bytes_after: u64,
    /// Received compressed messages that were not valid deflate (closed 1007).
    pub inflate_corrupt: u64,
    /// Received compressed messages that inflated past the message limit (closed 1009).
    pub inflate_too_big: u64,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS connections that failed before their handshake completed (garbage instead of a
    /// ClientHello, no common version or suite, an oversized handshake).
    pub tls_handshake_failures: u64,
    /// TLS connections that failed after it (a bad or oversized record, failed decryption).
    pub tls_errors: u64,
    /// Plain-HTTP requests to a TLS listener (answered 400 in plain text and closed).
    pub tls_plain_http: u64,
}

/// What the worker counts as it goes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub(crate) accepted: u64,
    pub(crate) upgrades: u64,
    pub(crate) rejections: [u64; 8],
    pub(crate) messages_in: u64,
    pub(crate) bytes_in: u64,
    pub(crate) messages_out: u64,
    pub(crate) bytes_out: u64,
    /// Connections closed as slow consumers by a direct send (fan-out closes are counted by
    /// the pub/sub registry).
    pub(crate) slow_closes: u64,
}

impl Counts {
    pub(crate) fn reject(&mut self, status: u16) {
        self.rejections[Rejection::of_status(status).index()] += 1;
    }
}

/// The atomics other threads read. Each worker writes its own every loop turn, so each is
/// aligned to 128 bytes (two cache lines, the unit the adjacent-line prefetcher pulls in):
/// workers' counters in one `Vec` never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Published {
    values: [AtomicU64; 31],
}

impl Published {
    pub(crate) fn store(&self, s: &WorkerStats) {
        let mut v = [0u64; 31];
        v[27..].copy_from_slice(&[
            s.tls_handshakes,
            s.tls_handshake_failures,
            s.tls_errors,
            s.tls_plain_http,
        ]);
        v[21..27].copy_from_slice(&[
            s.deflate_compressed,
            s.deflate_plain,
            s.deflate_bytes_before,
            s.deflate_bytes_after,
            s.inflate_corrupt,
            s.inflate_too_big,
        ]);
        v[..13].copy_from_slice(&[
            s.connections,
            s.websockets,
            s.buffered_bytes,
            s.accepted,
            s.upgrades,
            s.messages_in,
            s.bytes_in,
            s.messages_out,
            s.bytes_out,
            s.published,
            s.deliveries,
            s.drops,
            s.slow_closes,
        ]);
        v[13..21].copy_from_slice(&s.rejections);
        for (a, x) in self.values.iter().zip(v) {
            a.store(x, Ordering::Relaxed);
        }
    }

    pub(crate) fn load(&self) -> WorkerStats {
        let v: Vec<u64> = self
            .values
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        let mut rejections = [0u64; 8];
        rejections.copy_from_slice(&v[13..21]);
        WorkerStats {
            connections: v[0],
            websockets: v[1],
            buffered_bytes: v[2],
            accepted: v[3],
            upgrades: v[4],
            messages_in: v[5],
            bytes_in: v[6],
            messages_out: v[7],
            bytes_out: v[8],
            published: v[9],
            deliveries: v[10],
            drops: v[11],
            slow_closes: v[12],
            rejections,
            refused_inbox_full: 0,
            refused_stopping: 0,
            deflate_compressed: v[21],
            deflate_plain: v[22],
            deflate_bytes_before: v[23],
            deflate_bytes_after: v[24],
            inflate_corrupt: v[25],
            inflate_too_big: v[26],
            tls_handshakes: v[27],
            tls_handshake_failures: v[28],
            tls_errors: v[29],
            tls_plain_http: v[30],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Published;

    /// Workers' counters sit side by side in a `Vec`: no two may share a cache line (or the
    /// pair of lines the prefetcher moves together).
    #[test]
    fn workers_counters_never_share_a_cache_line() {
        let v: Vec<Published> = (0..4).map(|_| Published::default()).collect();
        for pair in v.windows(2) {
            let a = &pair[0] as *const Published as usize;
            let b = &pair[1] as *const Published as usize;
            assert!(a.is_multiple_of(128) && b - a >= 128, "{a:#x} {b:#x}");
        }
    }
}
