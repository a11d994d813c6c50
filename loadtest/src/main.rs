//! `loadtest`: drive any `ws://` server and measure it. Exit status: 0 when every message was
//! verified, 1 when verification failed or connections broke, 2 when the run could not start.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use uproar_loadtest::{Load, RunConfig, Scenario, run};

#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    version,
    about = "Load generator for RFC 6455 WebSocket servers"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Cmd,
    /// Load threads [default: the CPUs this process may run on, e.g. under taskset].
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// The server's pid: its CPU time over the window and its RSS go into the report.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// NAME=PID: this process's CPU over the window goes into the report too (other nodes of a
    /// cluster, a broker); repeatable.
    #[arg(long, global = true, value_parser = name_pid)]
    measure_pid: Vec<(String, u32)>,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// No live progress line.
    #[arg(long, global = true)]
    quiet: bool,
    /// Offer permessage-deflate (as Chromium does: `client_max_window_bits`), compress what
    /// is sent once it is negotiated, inflate what comes back; the report gives bytes on the
    /// wire beside payload bytes.
    #[arg(long, global = true)]
    deflate: bool,
    /// For wss:// URLs: trust the CA certificates in this PEM file (default: the system's).
    #[arg(long, global = true)]
    ca: Option<std::path::PathBuf>,
    /// For wss:// URLs: accept any server certificate (benchmarks against self-signed servers;
    /// the handshake's signatures are still checked).
    #[arg(long, global = true)]
    insecure: bool,
    /// Send this token as ?token= on every upgrade (a JWT for the uproar server's auth).
    #[arg(long, global = true)]
    token: Option<String>,
    /// Payload filler after the sequence stamp: `pattern` (a repeated 8-byte pattern) or
    /// `json` (JSON-like market ticks whose fields change per message: compressible like
    /// real text, for measuring compression).
    #[arg(long, global = true, default_value = "pattern", value_parser = ["pattern", "json"])]
    payload: String,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// N connections send messages that the server echoes; every echo is checked.
    Echo {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Message size in bytes (at least 16: sequence number and timestamp).
        #[arg(long, default_value_t = 20)]
        size: usize,
        /// Closed loop: messages in flight per connection [default: 1].
        #[arg(long, conflicts_with = "rate")]
        depth: Option<u32>,
        /// Closed loop only: a worker polls at most once per this window, so replies pile up
        /// and are read and answered in batches, as a pipelining client's would [default: 0,
        /// every reply is read as soon as it arrives]. On one shared machine an eager reader
        /// pays a read and a write per reply against a server that writes each reply on its
        /// own, and contends with it for the socket locks. Latency includes up to one window.
        #[arg(long, conflicts_with = "rate", value_parser = parse_duration)]
        batch_window: Option<Duration>,
        /// Open loop: messages per second in total; latency from the scheduled send time.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        warmup: Duration,
        /// Binary frames instead of text.
        #[arg(long)]
        binary: bool,
        /// The server is a raw TCP echo (no WebSocket, e.g. peer-uring-echo): skip the
        /// handshake; the same frames go out and are checked when they come back.
        #[arg(long)]
        raw_tcp: bool,
    },
    /// Publishers send to a topic URL at a fixed rate; every subscriber checks every message.
    Broadcast {
        /// The topic URL subscribers connect to (e.g. ws://127.0.0.1:9001/ws/bench); several,
        /// comma-separated (nodes of a cluster), spread the subscribers over them.
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Messages per second, all publishers together.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value_t = 20)]
        size: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        warmup: Duration,
        /// This fraction of subscribers stops reading after the handshake.
        #[arg(long, default_value_t = 0.0)]
        slow_fraction: f64,
        /// Publishers' URL, or several comma-separated [default: each --url with ?mode=pub].
        #[arg(long)]
        publish_url: Option<String>,
        #[arg(long)]
        binary: bool,
    },
    /// Open and hold N connections; connect latency; with --server-pid, server RSS per connection.
    Connect {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// New connections per second [default: as fast as possible].
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        hold: Duration,
    },
}

/// `10s`, `500ms`, `200us`, `2m`, `1.5s`; a bare number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "us" | "µs" => v / 1e6,
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (us, ms, s, m)")),
    };
    if !(0.0..1e7).contains(&secs) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let (url, scenario, duration, warmup) = match cli.scenario {
        Cmd::Echo {
            url,
            connections,
            size,
            depth,
            batch_window,
            rate,
            duration,
            warmup,
            binary,
            raw_tcp,
        } => {
            let load = match rate {
                Some(r) => Load::Rate(r),
                None => Load::Depth(depth.unwrap_or(1)),
            };
            (
                url,
                Scenario::Echo {
                    connections,
                    size,
                    binary,
                    load,
                    raw_tcp,
                    batch_window: batch_window.unwrap_or_default(),
                },
                duration,
                warmup,
            )
        }
        Cmd::Broadcast {
            url,
            subscribers,
            publishers,
            rate,
            size,
            duration,
            warmup,
            slow_fraction,
            publish_url,
            binary,
        } => (
            url,
            Scenario::Broadcast {
                subscribers,
                publishers,
                rate,
                size,
                binary,
                slow_fraction,
                publish_url,
            },
            duration,
            warmup,
        ),
        Cmd::Connect {
            url,
            connections,
            rate,
            hold,
        } => (
            url,
            Scenario::Connect {
                connections,
                rate,
                hold,
            },
            Duration::ZERO,
            Duration::ZERO,
        ),
    };
    let tls = if cli.ca.is_some() || cli.insecure {
        match uproar_loadtest::tls::client_config(cli.ca.as_deref(), cli.insecure) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("loadtest: {e}");
                std::process::exit(2);
            }
        }
    } else {
        None
    };
    let cfg = RunConfig {
        deflate: cli.deflate,
        tls,
        token: cli.token.clone(),
        json: cli.payload == "json",
        url,
        scenario,
        duration,
        warmup,
        threads,
        server_pid: cli.server_pid,
        measure_pids: cli.measure_pid.clone(),
        progress: !cli.quiet && !cli.json,
    };
    match run(&cfg) {
        Ok(report) => {
            if cli.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.text());
            }
            if report.failed() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::from(2)
        }
    }
}

/// `--measure-pid NAME=PID`.
fn name_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    let pid = pid.parse().map_err(|e| format!("{pid}: {e}"))?;
    Ok((name.to_owned(), pid))
}
