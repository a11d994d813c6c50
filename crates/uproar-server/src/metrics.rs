//! `GET /metrics` in the Prometheus text format (version 0.0.4), one series per worker.

use std::fmt::Write as _;

use std::sync::atomic::Ordering;

use uproar::{Driver, Rejection, WorkerStats};

use crate::app::Counters;
use crate::auth::Denied;

type Field = fn(&WorkerStats) -> u64;

/// (name, type, help, value) of every series but the rejections.
const SERIES: [(&str, &str, &str, Field); 23] = [
    (
        "uproar_connections",
        "gauge",
        "Open connections (HTTP and WebSocket).",
        |s| s.connections,
    ),
    (
        "uproar_websockets",
        "gauge",
        "Open WebSocket connections.",
        |s| s.websockets,
    ),
    (
        "uproar_buffered_bytes",
        "gauge",
        "Bytes queued for clients, not yet taken by their sockets (sampled once a second).",
        |s| s.buffered_bytes,
    ),
    (
        "uproar_accepted_total",
        "counter",
        "Connections accepted.",
        |s| s.accepted,
    ),
    (
        "uproar_upgrades_total",
        "counter",
        "WebSocket upgrades completed.",
        |s| s.upgrades,
    ),
    (
        "uproar_messages_in_total",
        "counter",
        "Messages received from clients.",
        |s| s.messages_in,
    ),
    (
        "uproar_bytes_in_total",
        "counter",
        "Payload bytes received from clients.",
        |s| s.bytes_in,
    ),
    (
        "uproar_messages_out_total",
        "counter",
        "Messages queued to clients (replies and fan-out deliveries).",
        |s| s.messages_out,
    ),
    (
        "uproar_bytes_out_total",
        "counter",
        "Frame bytes queued to clients.",
        |s| s.bytes_out,
    ),
    (
        "uproar_published_total",
        "counter",
        "Messages fanned out by this worker (published here or received from other workers).",
        |s| s.published,
    ),
    (
        "uproar_deliveries_total",
        "counter",
        "Fan-out deliveries to subscribers.",
        |s| s.deliveries,
    ),
    (
        "uproar_drops_total",
        "counter",
        "Messages dropped for subscribers over the backlog limit (drop policy).",
        |s| s.drops,
    ),
    (
        "uproar_slow_consumer_closes_total",
        "counter",
        "Connections closed as slow consumers (close policy), fan-out and direct sends.",
        |s| s.slow_closes,
    ),
    (
        "uproar_deflate_messages_compressed_total",
        "counter",
        "Messages sent compressed (permessage-deflate), per delivery.",
        |s| s.deflate_compressed,
    ),
    (
        "uproar_deflate_messages_plain_total",
        "counter",
        "Messages sent uncompressed to clients that negotiated permessage-deflate (small or opted out).",
        |s| s.deflate_plain,
    ),
    (
        "uproar_deflate_bytes_before_total",
        "counter",
        "Payload bytes of compressed messages before compression, per delivery.",
        |s| s.deflate_bytes_before,
    ),
    (
        "uproar_deflate_bytes_after_total",
        "counter",
        "Payload bytes of compressed messages after compression, per delivery.",
        |s| s.deflate_bytes_after,
    ),
    (
        "uproar_inflate_errors_corrupt_total",
        "counter",
        "Received compressed messages that were not valid deflate (closed 1007).",
        |s| s.inflate_corrupt,
    ),
    (
        "uproar_inflate_errors_too_big_total",
        "counter",
        "Received compressed messages that inflated past the message limit (closed 1009).",
        |s| s.inflate_too_big,
    ),
    (
        "uproar_tls_handshakes_total",
        "counter",
        "TLS handshakes completed.",
        |s| s.tls_handshakes,
    ),
    (
        "uproar_tls_handshake_failures_total",
        "counter",
        "TLS connections that failed before the handshake completed (garbage, no common version or suite).",
        |s| s.tls_handshake_failures,
    ),
    (
        "uproar_tls_errors_total",
        "counter",
        "TLS connections that failed after the handshake (a bad or oversized record).",
        |s| s.tls_errors,
    ),
    (
        "uproar_tls_plain_http_total",
        "counter",
        "Plain-HTTP requests to the TLS port (answered 400 and closed).",
        |s| s.tls_plain_http,
    ),
];

pub(crate) fn render(
    driver: Driver,
    workers: &[WorkerStats],
    server: &Counters,
    cluster: Option<&uproar_cluster::ClusterStats>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP uproar_driver_info The I/O driver the workers run.\n\
         # TYPE uproar_driver_info gauge\nuproar_driver_info{{driver=\"{driver}\"}} 1"
    );
    for (name, kind, help, field) in SERIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (w, s) in workers.iter().enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{w}\"}} {}", field(s));
        }
    }
    let name = "uproar_rejections_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests that did not become WebSockets, by reason.\n# TYPE {name} counter"
    );
    for (w, s) in workers.iter().enumerate() {
        for (i, r) in Rejection::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{worker=\"{w}\",reason=\"{}\"}} {}",
                r.label(),
                s.rejections[i]
            );
        }
    }
    let name = "uproar_mesh_refused_total";
    let _ = writeln!(
        out,
        "# HELP {name} Messages published elsewhere that this worker's inbox refused, by reason \
         (its subscribers missed them).\n# TYPE {name} counter"
    );
    for (w, s) in workers.iter().enumerate() {
        for (reason, n) in [
            ("inbox_full", s.refused_inbox_full),
            ("stopping", s.refused_stopping),
        ] {
            let _ = writeln!(out, "{name}{{worker=\"{w}\",reason=\"{reason}\"}} {n}");
        }
    }
    // The server's own counters (over all workers).
    let name = "uproar_auth_denied_total";
    let _ = writeln!(
        out,
        "# HELP {name} Upgrades and publishes refused (401) for their token, by reason.\n# TYPE {name} counter"
    );
    for d in Denied::ALL {
        let n = server.auth_denied[d.index()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}{{reason=\"{}\"}} {n}", d.label());
    }
    for (name, help, v) in [
        (
            "uproar_auth_forbidden_total",
            "Subscribes and publishes a valid token did not allow (403, or 1008 for a message).",
            &server.auth_forbidden,
        ),
        (
            "uproar_token_expired_closes_total",
            "Connections closed (1008) when their token expired.",
            &server.token_expired_closes,
        ),
        (
            "uproar_rate_limit_closes_total",
            "Connections closed (1008) for publishing over the rate limit.",
            &server.rate_limit_closes,
        ),
        (
            "uproar_rate_limit_drops_total",
            "Client messages dropped for going over the rate limit.",
            &server.rate_limit_drops,
        ),
        (
            "uproar_tls_reloads_total",
            "TLS certificates reloaded on SIGHUP.",
            &server.tls_reloads,
        ),
        (
            "uproar_tls_reload_failures_total",
            "SIGHUP reloads that failed (a bad file): the previous certificates are still served.",
            &server.tls_reload_failures,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Ordering::Relaxed)
        );
    }
    if let Some(c) = cluster {
        for (name, kind, help, v) in [
            (
                "uproar_broker_connected",
                "gauge",
                "1 while the broker connection is up.",
                u64::from(c.connected()),
            ),
            (
                "uproar_broker_reconnects_total",
                "counter",
                "Broker connections re-established after a loss.",
                c.reconnects(),
            ),
            (
                "uproar_broker_sent_total",
                "counter",
                "Messages sent to the broker for other nodes.",
                c.sent(),
            ),
            (
                "uproar_broker_received_total",
                "counter",
                "Messages from other nodes delivered here.",
                c.received(),
            ),
            (
                "uproar_broker_missed_total",
                "counter",
                "Messages other nodes sent to the broker that never arrived here (gaps in their sequence numbers).",
                c.missed(),
            ),
            (
                "uproar_broker_topics",
                "gauge",
                "Topics subscribed at the broker (lingering ones included).",
                c.subscribed(),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        let name = "uproar_broker_lost_total";
        let _ = writeln!(
            out,
            "# HELP {name} Messages for other nodes lost, by reason (delivered locally all the same).\n# TYPE {name} counter"
        );
        for why in uproar_cluster::Lost::ALL {
            let _ = writeln!(out, "{name}{{reason=\"{}\"}} {}", why.label(), c.lost(why));
        }
    }
    out
}
