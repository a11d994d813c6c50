//! loadtest against a deliberately faulty in-process server: verification must catch a server
//! that drops, duplicates, reorders or corrupts a message, report a close mid-run with its
//! code, and refuse to start against a refused upgrade or an unreachable address. Also checks
//! the JSON report's keys, which scripts depend on.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uproar_loadtest::{Load, RunConfig, Scenario, run};
use uproar_wire::conn::{Config, Connection, Event};
use uproar_wire::handshake::{HandshakeError, Request, validate_upgrade, write_response};
use uproar_wire::{CloseCode, FrameHead, OpCode};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Skip the 10th message of every connection (echo) or of subscriber 0 (broadcast).
    Drop,
    Duplicate,
    Reorder,
    Corrupt,
    /// Close with 1011 after 10 messages.
    Close,
    /// Answer the upgrade with 403.
    Refuse,
    /// Upgrade, then never read again (hold the socket for 5 s).
    Stall,
}

type Subscribers = Arc<Mutex<Vec<(usize, Arc<Mutex<TcpStream>>)>>>;

fn frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = FrameHead::new(true, op, payload.len() as u64, None)
        .as_bytes()
        .to_vec();
    v.extend_from_slice(payload);
    v
}

/// A small blocking server: `/echo` echoes, `/ws/*` is one topic (`?mode=pub`: publish only).
fn serve(fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let subs: Subscribers = Arc::new(Mutex::new(Vec::new()));
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let subs = subs.clone();
            std::thread::spawn(move || connection(n, stream, fault, subs));
        }
    });
    addr
}

fn connection(id: usize, mut s: TcpStream, fault: Fault, subs: Subscribers) {
    s.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut have = 0;
    let (path, rest) = loop {
        let Ok(n) = s.read(&mut buf[have..]) else {
            return;
        };
        if n == 0 {
            return;
        }
        have += n;
        match Request::parse(&buf[..have], 8192) {
            Ok(None) => continue,
            Ok(Some(req)) => {
                let mut out = Vec::new();
                if fault == Fault::Refuse {
                    write_response(&mut out, 403, &[], b"go away\n");
                    let _ = s.write_all(&out);
                    return;
                }
                match validate_upgrade(&req) {
                    Ok(up) => up.write_accept(&mut out, None),
                    Err(e) => {
                        e.write_response(&mut out);
                        let _ = s.write_all(&out);
                        return;
                    }
                }
                s.write_all(&out).unwrap();
                if fault == Fault::Stall {
                    std::thread::sleep(Duration::from_secs(5));
                    return;
                }
                break (req.target().to_owned(), buf[req.head_len()..have].to_vec());
            }
            Err(e) => {
                let mut out = Vec::new();
                HandshakeError::write_response(e, &mut out);
                let _ = s.write_all(&out);
                return;
            }
        }
    };
    let echo = path.starts_with("/echo");
    let publisher = path.contains("mode=pub");
    let me = Arc::new(Mutex::new(s.try_clone().unwrap()));
    if !echo && !publisher {
        subs.lock().unwrap().push((id, me.clone()));
    }
    let mut conn = Connection::server(Config::default());
    let mut count = 0u64;
    let mut held: Option<Vec<u8>> = None;
    let mut pending = rest;
    loop {
        let mut pos = 0;
        let mut replies: Vec<Vec<u8>> = Vec::new();
        let mut publish: Vec<(OpCode, Vec<u8>)> = Vec::new();
        loop {
            match conn.handle_read(&mut pending, &mut pos) {
                Ok(Some(Event::Message { kind, data })) => {
                    count += 1;
                    let op = kind.opcode();
                    if echo {
                        let mut f = frame(op, data);
                        match fault {
                            Fault::Drop if count == 10 => continue,
                            Fault::Duplicate if count == 10 => replies.push(f.clone()),
                            Fault::Reorder if count == 10 => {
                                held = Some(f);
                                continue;
                            }
                            Fault::Corrupt if count == 10 => {
                                let last = f.len() - 1;
                                f[last] ^= 0x01;
                            }
                            _ => {}
                        }
                        replies.push(f);
                        if let Some(h) = held.take_if(|_| count == 11) {
                            replies.push(h);
                        }
                    } else {
                        publish.push((op, data.to_vec()));
                    }
                    if fault == Fault::Close && count == 10 {
                        conn.queue_close(CloseCode::INTERNAL_ERROR, "injected")
                            .unwrap();
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => break,
            }
        }
        while let Some(f) = conn.poll_transmit() {
            replies.push(f.as_bytes().to_vec());
        }
        {
            let mut w = me.lock().unwrap();
            for r in &replies {
                if w.write_all(r).is_err() {
                    return;
                }
            }
        }
        for (op, data) in publish {
            let list = subs.lock().unwrap().clone();
            for (n, (_, sub)) in list.iter().enumerate() {
                let mut f = frame(op, &data);
                match fault {
                    Fault::Drop if n == 0 && data[2] == 9 && data[3] == 0 => continue,
                    Fault::Duplicate if n == 0 && data[2] == 9 && data[3] == 0 => {
                        let _ = sub.lock().unwrap().write_all(&f);
                    }
                    Fault::Corrupt if n == 0 && data[2] == 9 && data[3] == 0 => {
                        let last = f.len() - 1;
                        f[last] ^= 0x01;
                    }
                    _ => {}
                }
                let _ = sub.lock().unwrap().write_all(&f);
            }
        }
        if conn.is_closed() {
            return;
        }
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending = buf[..n].to_vec();
    }
}

fn echo_cfg(addr: SocketAddr, load: Load) -> RunConfig {
    RunConfig {
        deflate: false,
        tls: None,
        token: None,
        json: false,
        url: format!("ws://{addr}/echo"),
        scenario: Scenario::Echo {
            connections: 4,
            size: 40,
            binary: false,
            load,
            raw_tcp: false,
            batch_window: Duration::ZERO,
        },
        duration: Duration::from_millis(800),
        warmup: Duration::from_millis(200),
        threads: 2,
        server_pid: Some(std::process::id()),
        measure_pids: Vec::new(),
        progress: false,
    }
}

#[test]
fn a_correct_server_passes_verification() {
    let addr = serve(Fault::None);
    for load in [Load::Depth(1), Load::Depth(8), Load::Rate(2000.0)] {
        let r = run(&echo_cfg(addr, load)).unwrap();
        assert!(!r.failed(), "{load:?}: {}", r.text());
        assert_eq!(r.connections, 4);
        assert!(r.deliveries_per_sec > 100.0, "{}", r.text());
        assert!(!r.latency_us.is_empty());
        assert!(r.server_cpu.is_some() && r.messages_per_server_cpu_sec.is_some());
    }
    // Open loop sends what it was asked to: 2000/s for 0.8 s, never more; what arrives within
    // the window can lag behind on a loaded machine (CI runs Autobahn beside the tests).
    let r = run(&echo_cfg(addr, Load::Rate(2000.0))).unwrap();
    assert!(
        (1300.0..2200.0).contains(&r.deliveries_per_sec),
        "{}",
        r.text()
    );
}

#[test]
fn echo_verification_catches_every_fault() {
    let cases = [
        (Fault::Drop, "lost"),
        (Fault::Duplicate, "duplicated"),
        (Fault::Reorder, "reordered"),
        (Fault::Corrupt, "corrupt"),
    ];
    for (fault, what) in cases {
        let addr = serve(fault);
        let r = run(&echo_cfg(addr, Load::Depth(4))).unwrap();
        assert!(r.failed(), "{fault:?} not caught: {}", r.text());
        let n = match what {
            "lost" => r.lost,
            "duplicated" => r.duplicated,
            "reordered" => r.reordered,
            _ => r.corrupt,
        };
        // Each of the 4 connections saw the fault once.
        assert_eq!(n, 4, "{fault:?}: {}", r.text());
        let others = r.lost + r.duplicated + r.reordered + r.corrupt - n;
        assert_eq!(others, 0, "{fault:?} misclassified: {}", r.text());
    }
}

#[test]
fn broadcast_verification_catches_faults_at_one_subscriber() {
    for (fault, field) in [
        (Fault::None, ""),
        (Fault::Drop, "lost"),
        (Fault::Duplicate, "duplicated"),
        (Fault::Corrupt, "corrupt"),
    ] {
        let addr = serve(fault);
        let cfg = RunConfig {
            deflate: false,
            tls: None,
            token: None,
            json: false,
            url: format!("ws://{addr}/ws/news"),
            scenario: Scenario::Broadcast {
                subscribers: 5,
                publishers: 2,
                rate: 400.0,
                size: 32,
                binary: true,
                slow_fraction: 0.0,
                publish_url: None,
            },
            duration: Duration::from_millis(800),
            warmup: Duration::from_millis(100),
            threads: 2,
            server_pid: None,
            measure_pids: Vec::new(),
            progress: false,
        };
        let r = run(&cfg).unwrap();
        let got = match field {
            "lost" => r.lost,
            "duplicated" => r.duplicated,
            "corrupt" => r.corrupt,
            _ => 0,
        };
        if fault == Fault::None {
            assert!(!r.failed(), "{}", r.text());
            // 5 subscribers get every message: deliveries are 5x messages.
            // (Deliveries still in flight when the window ends are not counted: lower on a
            // loaded machine.)
            let ratio = r.deliveries_per_sec / r.messages_per_sec;
            assert!((3.5..5.5).contains(&ratio), "{}", r.text());
            assert!(!r.fanout_complete_us.is_empty());
        } else {
            // The message with sequence 9 of each of the 2 publishers, at one subscriber.
            assert_eq!(got, 2, "{fault:?}: {}", r.text());
        }
    }
}

#[test]
fn a_close_mid_run_is_reported_with_its_code() {
    let addr = serve(Fault::Close);
    let r = run(&echo_cfg(addr, Load::Depth(1))).unwrap();
    assert!(r.failed());
    assert_eq!(r.close_codes.get(&1011), Some(&4), "{}", r.text());
    assert!(
        r.error_samples.iter().any(|e| e.contains("1011")),
        "{:?}",
        r.error_samples
    );
}

/// A server that stops reading: the open-loop sender's unsent bytes are capped, and the run
/// fails with an error that says so instead of growing without bound.
#[test]
fn a_server_that_stops_reading_fails_the_run_with_bounded_memory() {
    let addr = serve(Fault::Stall);
    let mut cfg = echo_cfg(addr, Load::Rate(2000.0));
    cfg.scenario = Scenario::Echo {
        connections: 1,
        size: 64 << 10,
        binary: true,
        load: Load::Rate(2000.0),
        raw_tcp: false,
        batch_window: Duration::ZERO,
    };
    cfg.duration = Duration::from_millis(1500);
    let r = run(&cfg).unwrap();
    assert!(r.failed(), "{}", r.text());
    assert!(
        r.error_samples
            .iter()
            .any(|e| e.contains("stopped reading")),
        "{:?}",
        r.error_samples
    );
}

#[test]
fn a_refused_upgrade_and_an_unreachable_server_stop_the_run() {
    let addr = serve(Fault::Refuse);
    let e = run(&echo_cfg(addr, Load::Depth(1))).unwrap_err();
    assert!(e.contains("HTTP/1.1 403 Forbidden"), "{e}");

    // A port nobody listens on: bind, learn the port, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = run(&echo_cfg(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Load::Depth(1),
    ))
    .unwrap_err();
    assert!(e.to_lowercase().contains("refused"), "{e}");
}

#[test]
fn json_report_keys_are_stable() {
    let addr = serve(Fault::None);
    let mut cfg = echo_cfg(addr, Load::Depth(2));
    // The server here is this process: measured under a name too (what a cluster run does for
    // its other nodes and the broker), it used CPU in the window like the server did.
    cfg.measure_pids = vec![("me".into(), std::process::id())];
    let r = run(&cfg).unwrap();
    let v = r.to_json();
    let me = v["measured_cpu"]["me"].as_f64().unwrap();
    assert!(
        me > 0.0 && (me - r.server_cpu.unwrap()).abs() < 0.2,
        "{me} {:?}",
        r.server_cpu
    );
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    let want: BTreeSet<&str> = [
        "scenario",
        "parameters",
        "window_secs",
        "connections",
        "messages_per_sec",
        "deliveries_per_sec",
        "latency_us",
        "fanout_complete_us",
        "connect_us",
        "errors",
        "error_samples",
        "lost",
        "duplicated",
        "reordered",
        "corrupt",
        "close_codes",
        "slow_subscribers",
        "client_cpu",
        "client_max_thread_cpu",
        "client_saturated",
        "server_cpu",
        "messages_per_server_cpu_sec",
        "server_rss_kib",
        "measured_cpu",
        "rss_per_connection_kib",
        "deflate_connections",
        "bytes_in_wire",
        "bytes_in_payload",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, want);
    let lat: BTreeSet<&str> = v["latency_us"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        lat,
        ["max", "p50", "p90", "p99", "p99.9", "p99.99"]
            .into_iter()
            .collect()
    );
    assert_eq!(v["scenario"], "echo");
    assert!(v["messages_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn connect_scenario_opens_and_holds() {
    let addr = serve(Fault::None);
    let cfg = RunConfig {
        deflate: false,
        tls: None,
        token: None,
        json: false,
        url: format!("ws://{addr}/echo"),
        scenario: Scenario::Connect {
            connections: 50,
            rate: Some(500.0),
            hold: Duration::from_millis(300),
        },
        duration: Duration::ZERO,
        warmup: Duration::ZERO,
        threads: 2,
        server_pid: Some(std::process::id()),
        measure_pids: Vec::new(),
        progress: false,
    };
    let r = run(&cfg).unwrap();
    assert_eq!(r.connections, 50, "{}", r.text());
    assert!(!r.failed(), "{}", r.text());
    assert!(!r.connect_us.is_empty());
    assert!(r.rss_per_connection_kib.is_some());
}

/// A plain TCP echo (no WebSocket) reflects the client's masked frames; `raw_tcp` mode checks
/// them like any echo.
#[test]
fn raw_tcp_echo_mode() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let mut cfg = echo_cfg(addr, Load::Depth(4));
    cfg.scenario = Scenario::Echo {
        connections: 4,
        size: 100,
        binary: true,
        load: Load::Depth(4),
        raw_tcp: true,
        batch_window: Duration::ZERO,
    };
    let r = run(&cfg).unwrap();
    assert!(!r.failed(), "{}", r.text());
    assert!(r.deliveries_per_sec > 100.0, "{}", r.text());
}

/// Slow subscribers stop reading after the handshake: they are left out of the loss check and
/// reported apart with how they ended (this server never closes them: still open).
#[test]
fn slow_subscribers_are_reported_apart() {
    let addr = serve(Fault::None);
    let cfg = RunConfig {
        deflate: false,
        tls: None,
        token: None,
        json: false,
        url: format!("ws://{addr}/ws/slow"),
        scenario: Scenario::Broadcast {
            subscribers: 5,
            publishers: 1,
            rate: 200.0,
            size: 64,
            binary: false,
            slow_fraction: 0.2,
            publish_url: None,
        },
        duration: Duration::from_millis(600),
        warmup: Duration::from_millis(100),
        threads: 1,
        server_pid: None,
        measure_pids: Vec::new(),
        progress: false,
    };
    let r = run(&cfg).unwrap();
    assert!(!r.failed(), "{}", r.text());
    assert_eq!(r.slow_subscribers.get("open"), Some(&1), "{}", r.text());
    // 4 fast subscribers share the deliveries.
    let ratio = r.deliveries_per_sec / r.messages_per_sec;
    assert!((2.8..4.5).contains(&ratio), "{}", r.text());
}

/// The live progress line: drawn on a terminal (here a pseudo-terminal from util-linux
/// `script`), never when stderr is a pipe or with `--json`.
#[test]
fn progress_line_only_on_a_terminal() {
    let addr = serve(Fault::None);
    let bin = env!("CARGO_BIN_EXE_loadtest");
    let args = format!(
        "{bin} echo --url ws://{addr}/echo --connections 2 --size 32 --depth 1 \
         --duration 1500ms --warmup 1200ms --threads 1"
    );
    let tty = std::process::Command::new("script")
        .args(["-qfec", &args, "/dev/null"])
        .output()
        .expect("util-linux `script` runs the command on a pseudo-terminal");
    assert!(tty.status.success(), "{tty:?}");
    let shown = String::from_utf8_lossy(&tty.stdout);
    for want in [
        "\r\x1b[2K[",
        "warm-up",
        "running",
        "open 2/2",
        "received ",
        "verification    lost 0",
    ] {
        assert!(shown.contains(want), "{want:?} missing from {shown:?}");
    }
    for extra in [&[][..], &["--json"][..]] {
        let piped = std::process::Command::new(bin)
            .args(args.split_whitespace().skip(1))
            .args(extra)
            .output()
            .unwrap();
        assert!(piped.status.success(), "{piped:?}");
        let err = String::from_utf8_lossy(&piped.stderr);
        assert!(
            !err.contains("\x1b[2K"),
            "{extra:?}: progress drawn on a pipe: {err:?}"
        );
    }
}

/// `--batch-window`: replies wait for the next poll (so latency grows to the window's scale),
/// nothing is lost or reordered, and an open-loop run refuses it.
#[test]
fn batch_window_reads_replies_in_batches() {
    let addr = serve(Fault::None);
    let mut cfg = echo_cfg(addr, Load::Depth(8));
    let Scenario::Echo { batch_window, .. } = &mut cfg.scenario else {
        unreachable!()
    };
    *batch_window = Duration::from_millis(20);
    let r = run(&cfg).unwrap();
    assert!(!r.failed(), "{}", r.text());
    let p50 = r.to_json()["latency_us"]["p50"].as_f64().unwrap();
    assert!(
        p50 >= 5_000.0,
        "replies read at once, p50 {p50} µs: {}",
        r.text()
    );
    let eager = run(&echo_cfg(addr, Load::Depth(8))).unwrap();
    let eager_p50 = eager.to_json()["latency_us"]["p50"].as_f64().unwrap();
    assert!(
        eager_p50 < p50 / 2.0,
        "eager p50 {eager_p50} vs batched {p50}"
    );

    let mut open = echo_cfg(addr, Load::Rate(1000.0));
    let Scenario::Echo { batch_window, .. } = &mut open.scenario else {
        unreachable!()
    };
    *batch_window = Duration::from_millis(1);
    let err = run(&open).unwrap_err();
    assert!(err.contains("--batch-window"), "{err}");
}
