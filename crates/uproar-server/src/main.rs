//! `uproar`: the broadcast server. Clients subscribe to topics over WebSocket and publish to
//! them; backends publish over HTTP. See `uproar --help` and the README.

mod app;
mod auth;
mod metrics;
mod units;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use uproar::{BackpressurePolicy, Deflate, Driver, Server, TlsConfig};

use app::{App, RateLimit, Settings};
use units::{parse_duration, parse_size};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The demo page served at `GET /`.
pub(crate) const DEMO_PAGE: &str = include_str!("demo.html");

/// A WebSocket broadcast server on io_uring.
///
/// Routes: ws://HOST/ws/{topic} subscribes to the topic and publishes what the client sends
/// (?mode=sub receive-only, ?mode=pub publish-only); ws://HOST/echo echoes;
/// POST /publish/{topic} publishes the body (text/* as text, else binary); GET /healthz;
/// GET /metrics (Prometheus); GET / (a demo page). Every flag can also be set with the
/// environment variable named beside it. Sizes take B, KiB, MiB or GiB; durations ms, s, m
/// or h.
#[derive(Debug, Parser)]
#[command(name = "uproar", version, about, long_about = None)]
struct Args {
    /// Address to listen on. Default loopback only: exposing a server is a decision; pass
    /// 0.0.0.0:9001 to accept from the network.
    #[arg(long, env = "UPROAR_LISTEN", default_value = "127.0.0.1:9001")]
    listen: SocketAddr,

    /// I/O driver: auto (io_uring where this process may use it, else epoll, saying why in
    /// the log), io-uring (fail to start where it is blocked), or epoll. Default auto: the
    /// cheapest driver that runs here, rather than not starting in a container that blocks
    /// io_uring.
    #[arg(long, env = "UPROAR_DRIVER", default_value = "auto", value_parser = parse_driver)]
    driver: Driver,

    /// Share --listen with other processes (SO_REUSEPORT across processes), for a handover
    /// during a restart: the kernel splits new clients between old and new process, and a
    /// publish reaches only the subscribers of the process that took it. Default off: a
    /// second server on a port in use is refused at start instead of silently splitting
    /// clients between two unrelated sets of topics.
    #[arg(long, env = "UPROAR_REUSE_PORT", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    reuse_port: bool,

    /// permessage-deflate: off; shared (for broadcast: no context takeover, so one
    /// compressor per worker serves everyone, a published message is compressed once per
    /// worker, and an idle connection holds no compression memory); or dedicated (a
    /// compressor per connection with context takeover, for chat-like traffic of small
    /// similar messages; about 180 KiB per active connection). Default shared: measured on
    /// a 1 KiB JSON broadcast to 1000 subscribers it costs no more server CPU per delivery
    /// than no compression (0.92x: one compression per worker, fewer bytes to write) and
    /// sends 0.35x the bytes, and an idle connection costs the same (docs/benchmarks.md).
    #[arg(long, env = "UPROAR_DEFLATE", default_value = "shared", value_parser = parse_deflate)]
    deflate: Deflate,

    /// Messages shorter than this are sent uncompressed even to clients that negotiated
    /// permessage-deflate. Default 64B: a sync-flushed deflate block carries a few bytes of
    /// framing, so below this compression rarely saves bytes and always costs CPU.
    #[arg(long, env = "UPROAR_DEFLATE_MIN_SIZE", default_value = "64B", value_parser = parse_size)]
    deflate_min_size: u64,

    /// Worker threads, one io_uring each. Default: one per CPU this process may use
    /// (thread-per-core is the design).
    #[arg(long, env = "UPROAR_THREADS")]
    threads: Option<usize>,

    /// Largest message accepted, else close 1009. Default 16MiB: the largest message in the
    /// Autobahn suite; a fragmented message is held whole.
    #[arg(long, env = "UPROAR_MAX_MESSAGE_SIZE", default_value = "16MiB", value_parser = parse_size)]
    max_message_size: u64,

    /// Largest frame accepted, else close 1009. Default 16MiB: one header cannot announce
    /// more than we would hold.
    #[arg(long, env = "UPROAR_MAX_FRAME_SIZE", default_value = "16MiB", value_parser = parse_size)]
    max_frame_size: u64,

    /// Largest HTTP request head, else 431. Default 8KiB: nginx's default; bounds what a
    /// connection can make us hold before it is a WebSocket.
    #[arg(long, env = "UPROAR_MAX_HEADER_BYTES", default_value = "8KiB", value_parser = parse_size)]
    max_header_bytes: u64,

    /// Largest POST /publish body, else 413. Default 1MiB: a published message is held whole.
    #[arg(long, env = "UPROAR_MAX_BODY_BYTES", default_value = "1MiB", value_parser = parse_size)]
    max_body_bytes: u64,

    /// Time to send a complete request head (and keep-alive idle time), else 408. Default
    /// 10s: generous for real clients, short enough that slow-loris connections do not pile up.
    #[arg(long, env = "UPROAR_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,

    /// Ping a WebSocket silent this long; close it after as long again. 0 disables. Default
    /// 120s: under common proxy idle cut-offs once the ping is counted.
    #[arg(long, env = "UPROAR_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    idle_timeout: Duration,

    /// Wait this long for the peer's close frame (and FIN) after ours. Default 5s: enough for
    /// a loaded peer, short enough that dead peers do not pile up.
    #[arg(long, env = "UPROAR_CLOSE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    close_timeout: Duration,

    /// Most open connections; more are answered 503. Default 10000: fits common `ulimit -n`
    /// hard limits; raise it with the limit.
    #[arg(long, env = "UPROAR_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,

    /// What happens to a subscriber whose backlog passes --max-backpressure: close it with
    /// 1008 "slow consumer" (default: it gets a clear answer instead of silent gaps), or drop
    /// messages for it and count them.
    #[arg(long, env = "UPROAR_BACKPRESSURE_POLICY", value_enum, default_value_t = Policy::Close)]
    backpressure_policy: Policy,

    /// Most bytes queued for one client before the backpressure policy applies. Default
    /// 1MiB: a burst fits; a stalled reader costs at most this plus one message.
    #[arg(long, env = "UPROAR_MAX_BACKPRESSURE", default_value = "1MiB", value_parser = parse_size)]
    max_backpressure: u64,

    /// Comma-separated Origins allowed to open WebSockets (e.g. https://example.com).
    /// Default: any, for a development server; set it for browsers on the open web.
    #[arg(long, env = "UPROAR_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,

    /// Bearer token POST /publish requires. Default: none (anyone who can reach the port may
    /// publish); set it whenever the port is reachable by others.
    #[arg(long, env = "UPROAR_PUBLISH_TOKEN")]
    publish_token: Option<String>,

    /// Whether WebSocket clients may publish to their topic. Default true (chat-like use);
    /// false makes every /ws/{topic} receive-only and refuses ?mode=pub.
    #[arg(long, env = "UPROAR_CLIENTS_CAN_PUBLISH", default_value_t = true, action = clap::ArgAction::Set)]
    clients_can_publish: bool,

    /// Certificate chain (PEM, leaf first) to serve TLS with: with --tls-key, --listen serves
    /// https:// and wss:// only. Repeat the pair (or separate paths with commas) for several
    /// certificates: each handshake gets the first valid for the name it asks for (SNI), or
    /// the first. Reloaded on SIGHUP. Default none: plain http:// and ws://.
    #[arg(
        long,
        env = "UPROAR_TLS_CERT",
        value_delimiter = ',',
        requires = "tls_key"
    )]
    tls_cert: Vec<PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of each --tls-cert, in the same order.
    #[arg(
        long,
        env = "UPROAR_TLS_KEY",
        value_delimiter = ',',
        requires = "tls_cert"
    )]
    tls_key: Vec<PathBuf>,

    /// HS256 secret (at least 32 bytes) that WebSocket clients' JWTs are signed with. With it
    /// (or --jwt-public-key) every upgrade needs a valid token (?token= or Authorization:
    /// Bearer) whose `subscribe` and `publish` claims (topic patterns: exact, or a prefix
    /// ending in *) cover the topic, and `exp` is enforced while connected (closed 1008
    /// "token expired"). POST /publish also takes such a token. Default none: no auth.
    #[arg(long, env = "UPROAR_JWT_SECRET")]
    jwt_secret: Option<String>,

    /// Public key (PEM file: RSA for RS256, EC for ES256, Ed25519 for EdDSA) that clients'
    /// JWTs are signed with; see --jwt-secret.
    #[arg(long, env = "UPROAR_JWT_PUBLIC_KEY")]
    jwt_public_key: Option<PathBuf>,

    /// Clock difference allowed between a token's issuer and this server when checking `exp`
    /// and `nbf`. Default 5s: a token issued "now" by a machine slightly ahead is not refused
    /// as not yet valid, and an expired token lives at most 5 s longer.
    #[arg(long, env = "UPROAR_JWT_LEEWAY", default_value = "5s", value_parser = parse_duration)]
    jwt_leeway: Duration,

    /// Most messages per second one client connection may send (a token bucket with a burst
    /// of one second's worth). 0: no limit. Default 0: a broadcast server's own backends
    /// often publish over WebSocket at high rates, so a limit is the operator's choice; set it
    /// when clients are untrusted.
    #[arg(long, env = "UPROAR_CLIENT_MAX_MESSAGES_PER_SEC", default_value_t = 0)]
    client_max_messages_per_sec: u64,

    /// Most payload bytes per second one client connection may send (a token bucket with a
    /// burst of one second's worth; one message may overdraw it). 0: no limit. Default 0, for
    /// the reason above.
    #[arg(long, env = "UPROAR_CLIENT_MAX_BYTES_PER_SEC", default_value = "0B", value_parser = parse_size)]
    client_max_bytes_per_sec: u64,

    /// What happens to a client over its rate limit: close it with 1008 "rate limit" (default:
    /// a clear answer), or drop its messages over the limit and count them.
    #[arg(long, env = "UPROAR_CLIENT_RATE_LIMIT_POLICY", value_enum, default_value_t = Policy::Close)]
    client_rate_limit_policy: Policy,

    /// Share topics with other uproar nodes through a broker: nats://HOST:PORT, several
    /// separated by commas for a NATS cluster (the client fails over), or one redis://HOST:PORT
    /// (Redis pub/sub). A message published on
    /// any node then reaches the subscribers of every node (at most once across nodes, in
    /// order per publisher); a node subscribes at the broker only to topics it has
    /// subscribers for. Default none: a single node.
    #[arg(long, env = "UPROAR_BROKER", value_delimiter = ',')]
    broker: Vec<String>,

    /// This node's id, tagging what it publishes to the broker. Default: random, logged at
    /// start (unique per process, which is all the tagging needs).
    #[arg(long, env = "UPROAR_NODE_ID")]
    node_id: Option<String>,

    /// Broker subjects are PREFIX.{topic}. Default uproar: several deployments can share one
    /// broker with different prefixes.
    #[arg(long, env = "UPROAR_BROKER_PREFIX", default_value = "uproar")]
    broker_prefix: String,

    /// How long a topic without local subscribers stays subscribed at the broker. Default 2s:
    /// a page reload does not unsubscribe and resubscribe at the broker.
    #[arg(long, env = "UPROAR_BROKER_LINGER", default_value = "2s", value_parser = parse_duration)]
    broker_linger: Duration,

    /// Time given to clients to finish the close handshake on SIGTERM/SIGINT. Default 5s.
    #[arg(long, env = "UPROAR_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    shutdown_grace: Duration,
}

/// A node id: 16 hex digits from the process's random hasher seed, the time and the pid.
fn random_node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", h.finish())
}

/// The TLS configuration from --tls-cert and --tls-key, paired in order.
fn load_tls(certs: &[PathBuf], keys: &[PathBuf]) -> Result<TlsConfig, String> {
    if certs.len() != keys.len() {
        return Err(format!(
            "{} --tls-cert but {} --tls-key: give one key per certificate",
            certs.len(),
            keys.len()
        ));
    }
    let pairs: Vec<_> = certs
        .iter()
        .zip(keys)
        .map(|(c, k)| (c.as_path(), k.as_path()))
        .collect();
    TlsConfig::from_pem_file_pairs(&pairs).map_err(|e| e.to_string())
}

fn parse_driver(s: &str) -> Result<Driver, String> {
    s.parse()
}

fn parse_deflate(s: &str) -> Result<Deflate, String> {
    s.parse()
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Policy {
    Close,
    Drop,
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let auth = if args.jwt_secret.is_some() || args.jwt_public_key.is_some() {
        let pem = match &args.jwt_public_key {
            None => None,
            Some(p) => match std::fs::read(p) {
                Ok(b) => Some(b),
                Err(e) => {
                    eprintln!("uproar: --jwt-public-key {}: {e}", p.display());
                    std::process::exit(1);
                }
            },
        };
        match auth::Auth::new(
            args.jwt_secret.as_deref(),
            pem.as_deref(),
            args.jwt_leeway.as_secs(),
        ) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("uproar: {e}");
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    let rate = (args.client_max_messages_per_sec > 0 || args.client_max_bytes_per_sec > 0)
        .then_some({
            RateLimit {
                messages: args.client_max_messages_per_sec as f64,
                bytes: args.client_max_bytes_per_sec as f64,
                close: matches!(args.client_rate_limit_policy, Policy::Close),
            }
        });
    let demo_page = if auth.is_some() {
        DEMO_PAGE.replacen("data-auth=\"off\"", "data-auth=\"on\"", 1)
    } else {
        DEMO_PAGE.to_owned()
    };
    let cluster = if args.broker.is_empty() {
        None
    } else {
        let nats = args.broker.iter().all(|b| b.starts_with("nats://"));
        let redis = args.broker.len() == 1 && args.broker[0].starts_with("redis://");
        if !nats && !redis {
            eprintln!(
                "uproar: --broker takes nats://HOST:PORT (several, comma-separated, for a NATS cluster) or one redis://HOST:PORT"
            );
            std::process::exit(1);
        }
        let node_id = args.node_id.clone().unwrap_or_else(random_node_id);
        tracing::info!(node_id, brokers = ?args.broker, "cluster: sharing topics through the broker");
        let mut cfg = uproar_cluster::ClusterConfig::new(args.broker.clone(), node_id);
        cfg.prefix = args.broker_prefix.clone();
        cfg.linger = args.broker_linger;
        Some(uproar_cluster::Bridge::new(cfg))
    };
    let settings = Arc::new(Settings {
        cluster: cluster.as_ref().map(|(b, _)| b.stats()),
        demo_page,
        allowed_origins: args.allowed_origins.clone(),
        publish_token: args.publish_token.clone(),
        clients_can_publish: args.clients_can_publish,
        auth,
        rate,
        counters: Default::default(),
    });
    let mut b = Server::builder()
        .listen(args.listen)
        .driver(args.driver)
        .deflate(args.deflate)
        .deflate_min_size(args.deflate_min_size as usize)
        .reuse_port(args.reuse_port)
        .max_message_size(args.max_message_size)
        .max_frame_size(args.max_frame_size)
        .max_header_bytes(args.max_header_bytes as usize)
        .max_body_bytes(args.max_body_bytes as usize)
        .handshake_timeout(args.handshake_timeout)
        .idle_timeout((!args.idle_timeout.is_zero()).then_some(args.idle_timeout))
        .close_timeout(args.close_timeout)
        .max_connections(args.max_connections)
        .max_buffered_bytes(args.max_backpressure as usize)
        .backpressure(match args.backpressure_policy {
            Policy::Close => BackpressurePolicy::Close,
            Policy::Drop => BackpressurePolicy::Drop,
        });
    if let Some(t) = args.threads {
        b = b.threads(t);
    }
    if !args.tls_cert.is_empty() {
        match load_tls(&args.tls_cert, &args.tls_key) {
            Ok(tls) => b = b.tls(tls),
            Err(e) => {
                eprintln!("uproar: TLS: {e}");
                std::process::exit(1);
            }
        }
    }
    // Handlers first: a SIGTERM that arrives once clients can connect (even before the thread
    // below reads it) must be a graceful shutdown, never the default action's abrupt exit.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("uproar: cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };
    if let Some((bridge, _)) = &cluster {
        b = b.observer(Arc::new(bridge.clone()));
    }
    let reload_settings = settings.clone();
    let server = match b.start(move |_| App {
        settings: settings.clone(),
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("uproar: {e}");
            std::process::exit(1);
        }
    };
    if let Some((_, runner)) = cluster
        && let Err(e) = runner.start(server.publisher())
    {
        eprintln!("uproar: cannot start the cluster bridge: {e}");
        std::process::exit(1);
    }
    let scheme = if args.tls_cert.is_empty() {
        "http"
    } else {
        "https"
    };
    println!("listening on {} ({})", server.local_addr(), server.driver());
    tracing::info!(addr = %server.local_addr(), driver = %server.driver(), tls = scheme == "https",
        "uproar is listening; open {scheme}://{}/ for the demo", server.local_addr());
    let handle = server.handle();
    let grace = args.shutdown_grace;
    let (certs, keys) = (args.tls_cert.clone(), args.tls_key.clone());
    std::thread::spawn(move || {
        let counters = &reload_settings.counters;
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                if certs.is_empty() {
                    tracing::info!("SIGHUP: no TLS certificate to reload");
                    continue;
                }
                // New handshakes get the new certificate; a bad file keeps the old one.
                match load_tls(&certs, &keys).map(|t| handle.reload_tls(t)) {
                    Ok(Ok(())) => {
                        counters.tls_reloads.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("SIGHUP: TLS certificates reloaded")
                    }
                    Ok(Err(e)) => {
                        counters.tls_reload_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "SIGHUP: TLS reload")
                    }
                    Err(e) => {
                        counters.tls_reload_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e,
                        "SIGHUP: TLS certificates not reloaded; serving the previous ones")
                    }
                }
                continue;
            }
            tracing::info!(
                signal = sig,
                ?grace,
                "shutting down: closing every connection with 1001"
            );
            handle.shutdown(grace);
            break;
        }
    });
    if let Err(e) = server.join() {
        eprintln!("uproar: {e}");
        std::process::exit(1);
    }
    tracing::info!("stopped");
}
