//! The coordinator: plans connections, starts one worker per thread, moves the run through its
//! phases, samples CPU and memory at the window's edges, and builds the report.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uproar_wire::OpCode;

use crate::payload::STAMP_LEN;
use crate::stats::{ThreadStats, histogram, percentiles};
use crate::sys;
use crate::target::Target;
use crate::worker::{Params, Role, Worker};

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Connecting = 0,
    Running = 1,
    Draining = 2,
    Done = 3,
}

/// State every worker sees.
pub(crate) struct Shared {
    pub base: Instant,
    phase: AtomicU8,
    pub warm_ns: AtomicU64,
    pub end_ns: AtomicU64,
    pub opened: AtomicUsize,
    pub failed: AtomicUsize,
    pub received: AtomicU64,
    pub in_flight: AtomicI64,
    pub tids: Mutex<Vec<i32>>,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            base: Instant::now(),
            phase: AtomicU8::new(Phase::Connecting as u8),
            warm_ns: AtomicU64::new(0),
            end_ns: AtomicU64::new(u64::MAX),
            opened: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            tids: Mutex::new(Vec::new()),
            first_error: Mutex::new(None),
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Acquire) {
            0 => Phase::Connecting,
            1 => Phase::Running,
            2 => Phase::Draining,
            _ => Phase::Done,
        }
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Release);
    }

    pub(crate) fn first_error(&self, msg: &str) {
        let mut e = self.first_error.lock().expect("error slot");
        if e.is_none() {
            *e = Some(msg.to_owned());
        }
    }
}

/// How echo connections load the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Closed loop: this many messages in flight per connection.
    Depth(u32),
    /// Open loop: this many messages per second in total, spread over the connections.
    Rate(f64),
}

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Scenario {
    /// Every message comes back, checked byte for byte.
    Echo {
        connections: usize,
        size: usize,
        binary: bool,
        load: Load,
        /// The server is a raw TCP echo (no WebSocket): skip the handshake and decode the
        /// reflected client frames. Measures the kernel's ceiling with the same traffic.
        raw_tcp: bool,
        /// Closed loop: poll at most once per this window (zero: read every reply at once).
        batch_window: Duration,
    },
    /// Publishers send to a topic; every subscriber checks every message.
    Broadcast {
        subscribers: usize,
        publishers: usize,
        rate: f64,
        size: usize,
        binary: bool,
        slow_fraction: f64,
        publish_url: Option<String>,
    },
    /// Open and hold connections.
    Connect {
        connections: usize,
        rate: Option<f64>,
        hold: Duration,
    },
}

/// A whole run's settings.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Offer permessage-deflate and compress what is sent once it is negotiated.
    pub deflate: bool,
    /// For `wss://` URLs: the TLS client configuration (default: trust the system's CAs).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// A token sent as `?token=` on every upgrade (the uproar server's JWT auth).
    pub token: Option<String>,
    /// JSON-like payload filler (compressible like real text) instead of a repeated pattern.
    pub json: bool,
    /// `ws://host:port/path` (or `wss://`); several, comma-separated, spread the clients over them.
    pub url: String,
    /// The scenario.
    pub scenario: Scenario,
    /// Measured time.
    pub duration: Duration,
    /// Time before measuring.
    pub warmup: Duration,
    /// Load threads.
    pub threads: usize,
    /// The server's pid, for its CPU time and memory.
    pub server_pid: Option<u32>,
    /// More processes whose CPU over the window goes into the report, by name (the other nodes
    /// of a cluster, a broker).
    pub measure_pids: Vec<(String, u32)>,
    /// A live progress line on a terminal.
    pub progress: bool,
}

/// The outcome of a run. [`Report::to_json`] gives the stable machine-readable form.
#[derive(Debug, Clone)]
pub struct Report {
    /// `echo`, `broadcast` or `connect`.
    pub scenario: &'static str,
    /// The run's parameters.
    pub parameters: Value,
    /// Length of the measured window, s.
    pub window_secs: f64,
    /// Echo: messages echoed per second; broadcast: messages published per second.
    pub messages_per_sec: f64,
    /// Messages received per second (broadcast: summed over subscribers).
    pub deliveries_per_sec: f64,
    /// Send-to-receive latency percentiles, µs.
    pub latency_us: Vec<(&'static str, u64)>,
    /// Broadcast: publish-to-last-subscriber latency percentiles, µs.
    pub fanout_complete_us: Vec<(&'static str, u64)>,
    /// Connect + handshake latency percentiles, µs.
    pub connect_us: Vec<(&'static str, u64)>,
    /// Connections opened.
    pub connections: u64,
    /// Failed connections (connect, handshake, I/O, unexpected close).
    pub errors: u64,
    /// The first error messages.
    pub error_samples: Vec<String>,
    /// Messages never received.
    pub lost: u64,
    /// Messages received twice.
    pub duplicated: u64,
    /// Messages received out of order.
    pub reordered: u64,
    /// Messages whose bytes were wrong.
    pub corrupt: u64,
    /// Close codes the server sent.
    pub close_codes: BTreeMap<u16, u64>,
    /// How slow subscribers ended.
    pub slow_subscribers: BTreeMap<String, u64>,
    /// The load generator's CPU over the window, in cores.
    pub client_cpu: f64,
    /// Busiest load thread's CPU share (1.0 = saturated).
    pub client_max_thread_cpu: f64,
    /// The server's CPU over the window, in cores (`--server-pid`).
    pub server_cpu: Option<f64>,
    /// Deliveries per server CPU-second.
    pub messages_per_server_cpu_sec: Option<f64>,
    /// Server RSS at the end, KiB.
    pub server_rss_kib: Option<u64>,
    /// CPU over the window, in cores, of each process of [`RunConfig::measure_pids`].
    pub measured_cpu: BTreeMap<String, f64>,
    /// Connect: growth of the server's anonymous resident memory per open connection, KiB.
    pub rss_per_connection_kib: Option<f64>,
    /// Connections that negotiated permessage-deflate (`--deflate`).
    pub deflate_connections: u64,
    /// Bytes received over the whole run as they came over the wire (frames, compressed or
    /// not), beside the payload bytes of the messages they carried.
    pub bytes_in_wire: u64,
    /// Payload bytes of the messages received (inflated).
    pub bytes_in_payload: u64,
}

/// A busiest-thread CPU share above this means the client may be the limit.
pub const SATURATED: f64 = 0.9;

impl Report {
    /// Whether verification found anything wrong or a connection failed.
    pub fn failed(&self) -> bool {
        self.lost + self.duplicated + self.reordered + self.corrupt + self.errors > 0
    }

    /// Whether the load generator was close to saturation (its figures may not be the
    /// server's limit).
    pub fn client_saturated(&self) -> bool {
        self.client_max_thread_cpu > SATURATED
    }

    /// The machine-readable report. Its keys are stable (see `tests/json_schema.rs`).
    pub fn to_json(&self) -> Value {
        let pct = |v: &[(&str, u64)]| -> Value {
            v.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect()
        };
        json!({
            "scenario": self.scenario,
            "parameters": self.parameters,
            "window_secs": self.window_secs,
            "connections": self.connections,
            "messages_per_sec": self.messages_per_sec,
            "deliveries_per_sec": self.deliveries_per_sec,
            "latency_us": pct(&self.latency_us),
            "fanout_complete_us": pct(&self.fanout_complete_us),
            "connect_us": pct(&self.connect_us),
            "errors": self.errors,
            "error_samples": self.error_samples,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "corrupt": self.corrupt,
            "close_codes": self.close_codes.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "slow_subscribers": self.slow_subscribers,
            "client_cpu": self.client_cpu,
            "client_max_thread_cpu": self.client_max_thread_cpu,
            "client_saturated": self.client_saturated(),
            "server_cpu": self.server_cpu,
            "messages_per_server_cpu_sec": self.messages_per_server_cpu_sec,
            "server_rss_kib": self.server_rss_kib,
            "measured_cpu": self.measured_cpu,
            "rss_per_connection_kib": self.rss_per_connection_kib,
            "deflate_connections": self.deflate_connections,
            "bytes_in_wire": self.bytes_in_wire,
            "bytes_in_payload": self.bytes_in_payload,
        })
    }

    /// A human-readable summary.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let pct = |v: &[(&str, u64)]| {
            v.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join("  ")
        };
        s += &format!("{} {}\n", self.scenario, self.parameters);
        s += &format!(
            "connections     {} open, {} errors\n",
            self.connections, self.errors
        );
        if self.scenario != "connect" {
            s += &format!(
                "throughput      {:.0} messages/s, {:.0} deliveries/s over {:.1} s\n",
                self.messages_per_sec, self.deliveries_per_sec, self.window_secs
            );
            s += &format!("latency µs      {}\n", pct(&self.latency_us));
        }
        if !self.fanout_complete_us.is_empty() {
            s += &format!("last sub µs     {}\n", pct(&self.fanout_complete_us));
        }
        if !self.connect_us.is_empty() {
            s += &format!("connect µs      {}\n", pct(&self.connect_us));
        }
        if self.bytes_in_payload > 0 {
            s += &format!(
                "bytes in        {} on the wire for {} of payload ({:.2}x); {} connections compressed\n",
                self.bytes_in_wire,
                self.bytes_in_payload,
                self.bytes_in_wire as f64 / self.bytes_in_payload as f64,
                self.deflate_connections
            );
        }
        s += &format!(
            "verification    lost {}  duplicated {}  reordered {}  corrupt {}\n",
            self.lost, self.duplicated, self.reordered, self.corrupt
        );
        if !self.slow_subscribers.is_empty() {
            s += &format!("slow subscribers {:?}\n", self.slow_subscribers);
        }
        if !self.close_codes.is_empty() {
            s += &format!("close codes     {:?}\n", self.close_codes);
        }
        s += &format!(
            "client cpu      {:.2} cores (busiest thread {:.0}%)\n",
            self.client_cpu,
            self.client_max_thread_cpu * 100.0
        );
        if let Some(c) = self.server_cpu {
            s += &format!("server cpu      {c:.2} cores");
            if let Some(m) = self.messages_per_server_cpu_sec {
                s += &format!(", {m:.0} deliveries per server CPU-second");
            }
            s += "\n";
        }
        for (name, c) in &self.measured_cpu {
            s += &format!("cpu of {name:<8} {c:.2} cores\n");
        }
        if let Some(r) = self.server_rss_kib {
            s += &format!("server rss      {r} KiB");
            if let Some(p) = self.rss_per_connection_kib {
                s += &format!(" ({p:.2} KiB anonymous memory per connection)");
            }
            s += "\n";
        }
        if self.client_saturated() {
            s += "WARNING: a load thread was near saturation: these figures may be the client's limit, not the server's\n";
        }
        for e in &self.error_samples {
            s += &format!("error: {e}\n");
        }
        s
    }
}

fn plan(cfg: &RunConfig) -> Result<(Vec<Role>, Params, &'static str, Value), String> {
    // Several URLs, comma-separated (nodes of a cluster): clients spread over them.
    let parse_all = |urls: &str| -> Result<Vec<Target>, String> {
        urls.split(',')
            .map(|u| {
                let t = Target::parse(u.trim())?;
                Ok(match &cfg.token {
                    Some(tok) => t.with_query(&format!("token={tok}")),
                    None => t,
                })
            })
            .collect()
    };
    let mut targets = parse_all(&cfg.url)?;
    let target = targets.remove(0);
    let tls = match (&cfg.tls, target.tls) {
        (_, false) => None,
        (Some(c), true) => Some(c.clone()),
        (None, true) => Some(crate::tls::client_config(None, false)?),
    };
    let mut params = Params {
        tls,
        pub_target: target.clone(),
        more_pub_targets: Vec::new(),
        more_targets: targets,
        target,
        size: STAMP_LEN,
        opcode: OpCode::Text,
        depth: None,
        rate: 0.0,
        connect_rate: None,
        publishers: 0,
        raw_tcp: false,
        batch_window: Duration::ZERO,
        deflate: cfg.deflate,
        json: cfg.json,
    };
    let check_size = |size: usize| {
        if size < STAMP_LEN {
            Err(format!(
                "--size must be at least {STAMP_LEN} bytes (sequence number and timestamp)"
            ))
        } else {
            Ok(size)
        }
    };
    Ok(match &cfg.scenario {
        Scenario::Echo {
            connections,
            size,
            binary,
            load,
            raw_tcp,
            batch_window,
        } => {
            params.size = check_size(*size)?;
            params.raw_tcp = *raw_tcp;
            if !batch_window.is_zero() {
                if !matches!(load, Load::Depth(_)) {
                    return Err("--batch-window applies to the closed loop (--depth) only".into());
                }
                if *batch_window > Duration::from_millis(100) {
                    return Err("--batch-window over 100ms would measure the client's sleep".into());
                }
                params.batch_window = *batch_window;
            }
            params.opcode = if *binary {
                OpCode::Binary
            } else {
                OpCode::Text
            };
            match load {
                Load::Depth(d) => params.depth = Some((*d).max(1)),
                Load::Rate(r) => params.rate = *r,
            }
            let p = json!({"connections": connections, "size": size, "binary": binary,
                "depth": params.depth, "rate": if params.depth.is_none() { Some(params.rate) } else { None },
                "duration_secs": cfg.duration.as_secs_f64(), "warmup_secs": cfg.warmup.as_secs_f64(), "threads": cfg.threads, "url": cfg.url,
                "raw_tcp": raw_tcp, "batch_window_secs": batch_window.as_secs_f64()});
            (vec![Role::Echo; *connections], params, "echo", p)
        }
        Scenario::Broadcast {
            subscribers,
            publishers,
            rate,
            size,
            binary,
            slow_fraction,
            publish_url,
        } => {
            params.size = check_size(*size)?;
            params.opcode = if *binary {
                OpCode::Binary
            } else {
                OpCode::Text
            };
            params.rate = *rate;
            if *publishers == 0 || *publishers > 16384 {
                return Err("--publishers must be between 1 and 16384".into());
            }
            params.publishers = *publishers;
            match publish_url {
                Some(u) => {
                    let mut all = parse_all(u)?;
                    params.pub_target = all.remove(0);
                    params.more_pub_targets = all;
                }
                None => {
                    params.pub_target = params.target.with_query("mode=pub");
                    params.more_pub_targets = params
                        .more_targets
                        .iter()
                        .map(|t| t.with_query("mode=pub"))
                        .collect();
                }
            }
            let slow = ((*subscribers as f64) * slow_fraction.clamp(0.0, 1.0)).round() as usize;
            let mut roles: Vec<Role> = (0..*subscribers)
                .map(|i| Role::Subscriber { slow: i < slow })
                .collect();
            roles.extend((0..*publishers).map(|p| Role::Publisher(p as u16)));
            let p = json!({"subscribers": subscribers, "publishers": publishers, "rate": rate, "size": size,
                "binary": binary, "slow_fraction": slow_fraction, "slow_subscribers": slow,
                "duration_secs": cfg.duration.as_secs_f64(), "warmup_secs": cfg.warmup.as_secs_f64(), "threads": cfg.threads,
                "url": cfg.url, "publish_url": format!("ws://{}{}", params.pub_target.host, params.pub_target.path)});
            (roles, params, "broadcast", p)
        }
        Scenario::Connect {
            connections,
            rate,
            hold,
        } => {
            params.connect_rate = *rate;
            let p = json!({"connections": connections, "rate": rate, "hold_secs": hold.as_secs_f64(),
                "threads": cfg.threads, "url": cfg.url});
            (vec![Role::Holder; *connections], params, "connect", p)
        }
    })
}

/// Sampled at both edges of the measured window.
struct Sample {
    at: Instant,
    client: f64,
    threads: Vec<f64>,
    server: Option<f64>,
    others: Vec<Option<f64>>,
}

fn sample(shared: &Shared, pid: Option<u32>, others: &[(String, u32)]) -> Sample {
    let tids = shared.tids.lock().expect("tids").clone();
    Sample {
        at: Instant::now(),
        client: sys::process_cpu(std::process::id()).unwrap_or(0.0),
        threads: tids
            .iter()
            .map(|t| sys::thread_cpu(*t).unwrap_or(0.0))
            .collect(),
        server: pid.and_then(|p| sys::process_cpu(p).ok()),
        others: others
            .iter()
            .map(|(_, p)| sys::process_cpu(*p).ok())
            .collect(),
    }
}

struct Progress {
    on: bool,
    last: Instant,
    last_count: u64,
}

impl Progress {
    fn tick(&mut self, shared: &Shared, total: usize, label: &str) {
        if !self.on || self.last.elapsed() < Duration::from_millis(500) {
            return;
        }
        let n = shared.received.load(Relaxed);
        let rate = (n - self.last_count) as f64 / self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        self.last_count = n;
        let t = shared.base.elapsed().as_secs_f64();
        eprint!(
            "\r\x1b[2K[{t:6.1}s] {label:<10} open {}/{total}  failed {}  received {n} ({rate:.0}/s)",
            shared.opened.load(Relaxed),
            shared.failed.load(Relaxed)
        );
        let _ = std::io::stderr().flush();
    }

    fn end(&self) {
        if self.on {
            eprint!("\r\x1b[2K");
        }
    }
}

fn wait(until: Instant, shared: &Shared, progress: &mut Progress, total: usize, label: &str) {
    while Instant::now() < until {
        progress.tick(shared, total, label);
        std::thread::sleep(
            until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50)),
        );
    }
}

/// Run a scenario to its end. `Err` is a setup failure (bad URL, limits, unreachable server,
/// refused upgrade); a completed run returns a report even if verification failed.
pub fn run(cfg: &RunConfig) -> Result<Report, String> {
    let (roles, params, scenario, parameters) = plan(cfg)?;
    let total = roles.len();
    if total == 0 {
        return Err("nothing to do: zero connections".into());
    }
    let (soft, hard) = sys::raise_nofile().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    if total as u64 + 64 > soft {
        return Err(format!(
            "{total} connections need about {} file descriptors, but RLIMIT_NOFILE is {soft} (hard limit {hard}): raise it (ulimit -n)",
            total + 64
        ));
    }
    if let Some(ports) = sys::ephemeral_ports()
        && total as u64 > ports
    {
        return Err(format!(
            "{total} connections to one server address need {total} local ports; net.ipv4.ip_local_port_range has {ports}"
        ));
    }
    let threads = cfg.threads.clamp(1, total);
    let shared = Arc::new(Shared::new());
    let mut progress = Progress {
        on: cfg.progress && std::io::stderr().is_terminal(),
        last: Instant::now(),
        last_count: 0,
    };
    // Per-connection memory counts the server's anonymous memory only: a binary faults its
    // code in (file-backed pages) the first time the connection path runs, once, not per
    // connection (a larger binary showed 0.03 KiB more "per connection" at 10,000 from that).
    let anon_before = cfg.server_pid.and_then(|p| sys::rss_anon_kib(p).ok());

    let mut shares: Vec<Vec<(usize, Role)>> = vec![Vec::new(); threads];
    for (i, r) in roles.iter().enumerate() {
        shares[i % threads].push((i, *r));
    }
    let senders_total = roles
        .iter()
        .filter(|r| matches!(r, Role::Echo | Role::Publisher(_)))
        .count()
        .max(1);
    let mut handles = Vec::new();
    for (w, share) in shares.into_iter().enumerate() {
        let mut p = params.clone();
        let my_senders = share
            .iter()
            .filter(|(_, r)| matches!(r, Role::Echo | Role::Publisher(_)))
            .count();
        p.rate = params.rate * my_senders as f64 / senders_total as f64;
        p.connect_rate = params.connect_rate.map(|r| r / threads as f64);
        let worker = Worker::new(shared.clone(), p, share).map_err(|e| format!("poll: {e}"))?;
        let h = std::thread::Builder::new()
            .name(format!("loadtest-{w}"))
            .spawn(move || worker.run())
            .map_err(|e| format!("spawn: {e}"))?;
        handles.push(h);
    }
    let finish =
        |shared: &Shared, handles: Vec<std::thread::JoinHandle<ThreadStats>>| -> ThreadStats {
            shared.set_phase(Phase::Done);
            let mut all = ThreadStats::new();
            for h in handles {
                all.merge(h.join().expect("worker thread panicked"));
            }
            all
        };

    // Connect everything.
    let connect_time = match params.connect_rate {
        Some(r) => Duration::from_secs_f64(total as f64 / r) + Duration::from_secs(15),
        None => Duration::from_secs(15) + Duration::from_millis(2 * total as u64),
    };
    let deadline = Instant::now() + connect_time;
    while shared.opened.load(Relaxed) + shared.failed.load(Relaxed) < total
        && Instant::now() < deadline
    {
        progress.tick(&shared, total, "connecting");
        std::thread::sleep(Duration::from_millis(10));
    }
    if shared.opened.load(Relaxed) == 0 {
        let all = finish(&shared, handles);
        progress.end();
        let e = shared.first_error.lock().expect("error slot").clone();
        return Err(e
            .or(all.error_samples.first().cloned())
            .unwrap_or_else(|| "no connection could be opened".into()));
    }

    let mut window = Duration::ZERO;
    let (mut s0, mut s1) = (None, None);
    let (mut rss_open, mut anon_open) = (None, None);
    match &cfg.scenario {
        Scenario::Connect { hold, .. } => {
            wait(
                Instant::now() + Duration::from_secs(1),
                &shared,
                &mut progress,
                total,
                "settling",
            );
            rss_open = cfg.server_pid.and_then(|p| sys::rss_kib(p).ok());
            anon_open = cfg.server_pid.and_then(|p| sys::rss_anon_kib(p).ok());
            wait(
                Instant::now() + *hold,
                &shared,
                &mut progress,
                total,
                "holding",
            );
        }
        _ => {
            if matches!(cfg.scenario, Scenario::Broadcast { .. }) {
                // Let the server finish registering subscriptions before anything is published.
                std::thread::sleep(Duration::from_millis(200));
            }
            let start = Instant::now();
            let warm = start + cfg.warmup;
            let end = warm + cfg.duration;
            let ns = |t: Instant| (t - shared.base).as_nanos() as u64;
            shared.warm_ns.store(ns(warm), Relaxed);
            shared.end_ns.store(ns(end), Relaxed);
            shared.set_phase(Phase::Running);
            wait(warm, &shared, &mut progress, total, "warm-up");
            s0 = Some(sample(&shared, cfg.server_pid, &cfg.measure_pids));
            wait(end, &shared, &mut progress, total, "running");
            s1 = Some(sample(&shared, cfg.server_pid, &cfg.measure_pids));
            window = cfg.duration;
            shared.set_phase(Phase::Draining);
            // Let in-flight messages arrive: until nothing is outstanding (echo) or nothing
            // arrived for 300 ms (broadcast), at most 5 s.
            let limit = Instant::now() + Duration::from_secs(5);
            let mut last = (shared.received.load(Relaxed), Instant::now());
            while Instant::now() < limit {
                let n = shared.received.load(Relaxed);
                if n != last.0 {
                    last = (n, Instant::now());
                }
                let echo_done = matches!(cfg.scenario, Scenario::Echo { .. })
                    && shared.in_flight.load(Relaxed) <= 0;
                if echo_done || last.1.elapsed() > Duration::from_millis(300) {
                    break;
                }
                progress.tick(&shared, total, "draining");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    let rss_end = cfg.server_pid.and_then(|p| sys::rss_kib(p).ok());
    let mut all = finish(&shared, handles);
    progress.end();

    // Broadcast loss: every fast subscriber should have every message of every publisher.
    let fast_subs = all.sub_trackers.len();
    for trackers in &all.sub_trackers {
        for (p, t) in trackers.iter().enumerate() {
            let sent = all.published.get(&(p as u16)).copied().unwrap_or(0);
            // Duplicates and reorders were counted as they arrived; only loss needs the end.
            all.counters.lost += t.lost(sent);
        }
    }
    let mut fanout = histogram();
    for (count, max_ns) in all.fanout.values() {
        if *count as usize == fast_subs {
            let _ = fanout.record((max_ns / 1000).max(1));
        }
    }
    let secs = window.as_secs_f64();
    let deliveries_per_sec = if secs > 0.0 {
        all.counters.measured as f64 / secs
    } else {
        0.0
    };
    let messages_per_sec = match cfg.scenario {
        Scenario::Broadcast { .. } if secs > 0.0 => all.fanout.len() as f64 / secs,
        _ => deliveries_per_sec,
    };
    let (mut client_cpu, mut max_thread, mut server_cpu) = (0.0, 0.0, None);
    let mut measured_cpu = BTreeMap::new();
    if let (Some(a), Some(b)) = (&s0, &s1) {
        let dt = (b.at - a.at).as_secs_f64().max(1e-9);
        client_cpu = (b.client - a.client) / dt;
        max_thread = a
            .threads
            .iter()
            .zip(&b.threads)
            .map(|(x, y)| (y - x) / dt)
            .fold(0.0, f64::max);
        server_cpu = a.server.zip(b.server).map(|(x, y)| (y - x) / dt);
        for (((name, _), x), y) in cfg.measure_pids.iter().zip(&a.others).zip(&b.others) {
            if let (Some(x), Some(y)) = (x, y) {
                measured_cpu.insert(name.clone(), (y - x) / dt);
            }
        }
    }
    let per_cpu_sec = server_cpu
        .filter(|c| *c > 0.0)
        .map(|c| all.counters.measured as f64 / (c * secs));
    let rss_per_conn = match (&cfg.scenario, anon_before, anon_open) {
        (Scenario::Connect { .. }, Some(b), Some(a)) if all.counters.opened > 0 => {
            Some((a as f64 - b as f64) / all.counters.opened as f64)
        }
        _ => None,
    };
    Ok(Report {
        scenario,
        parameters,
        window_secs: secs,
        messages_per_sec,
        deliveries_per_sec,
        latency_us: percentiles(&all.latency),
        fanout_complete_us: percentiles(&fanout),
        connect_us: percentiles(&all.connect),
        connections: all.counters.opened,
        errors: all.counters.errors,
        error_samples: all.error_samples,
        lost: all.counters.lost,
        duplicated: all.counters.duplicated,
        reordered: all.counters.reordered,
        corrupt: all.counters.corrupt,
        close_codes: all.close_codes,
        slow_subscribers: all.slow_outcomes,
        client_cpu,
        client_max_thread_cpu: max_thread,
        server_cpu,
        messages_per_server_cpu_sec: per_cpu_sec,
        server_rss_kib: rss_open.or(rss_end),
        measured_cpu,
        rss_per_connection_kib: rss_per_conn,
        deflate_connections: all.counters.deflate,
        bytes_in_wire: all.counters.wire_in,
        bytes_in_payload: all.counters.payload_in,
    })
}
