//! The `uproar` binary, run as a process: pub/sub across workers from WebSocket and HTTP
//! publishers, receive-only clients, the publish token, origins and routes, metrics that match
//! the traffic, configuration from the environment, and SIGTERM.

use std::collections::BTreeMap;

use uproar_testkit::*;
use uproar_wire::{CloseCode, DataKind};

/// The server with quiet logs and, unless the test sets one, a short shutdown grace (clients
/// left open by a test do not answer the 1001).
fn uproar(args: &[&str]) -> Example {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_uproar"));
    cmd.env("RUST_LOG", "warn");
    if !args.contains(&"--shutdown-grace") {
        cmd.env("UPROAR_SHUTDOWN_GRACE", "300ms");
    }
    run_command(cmd, args)
}

fn post(addr: std::net::SocketAddr, path: &str, headers: &str, body: &str) -> (u16, String) {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, _, body) = http(addr, req.as_bytes());
    (status, String::from_utf8(body).unwrap())
}

fn metrics(addr: std::net::SocketAddr) -> BTreeMap<String, f64> {
    let (status, head, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"));
    parse_prometheus(&String::from_utf8(body).unwrap())
}

/// Parse the Prometheus text format strictly: every line is a `# HELP`/`# TYPE` comment or
/// `name{labels} value`, every sample's name was declared by a TYPE line before it.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            types.insert(name.to_owned(), kind.to_owned());
        } else if line.starts_with("# HELP ") {
        } else {
            let (series, value) = line.rsplit_once(' ').expect("sample: series value");
            let name = series.split('{').next().unwrap();
            assert!(types.contains_key(name), "sample before its TYPE: {line}");
            assert!(
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "metric name {name}"
            );
            if let Some(labels) = series.strip_prefix(name) {
                assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')));
            }
            samples.insert(
                series.to_owned(),
                value.parse::<f64>().expect("numeric value"),
            );
        }
    }
    samples
}

/// Sum of a metric over workers.
fn total(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn publishers_on_every_worker_and_over_http_reach_every_subscriber_once_in_order() {
    let ex = uproar(&["--threads", "2"]);
    let addr = ex.addr;
    let mut subs: Vec<Client> = (0..16)
        .map(|_| Client::connect(addr, "/ws/news?mode=sub"))
        .collect();
    let m = metrics(addr);
    assert!(
        m["uproar_websockets{worker=\"0\"}"] > 0.0 && m["uproar_websockets{worker=\"1\"}"] > 0.0,
        "subscribers on both workers: {m:?}"
    );
    const N: usize = 200;
    let pubs: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr, "/ws/news?mode=pub");
                for seq in 0..N {
                    c.send_text(&format!("ws{i}-{seq}"));
                }
                c
            })
        })
        .collect();
    for seq in 0..N {
        let (status, _) = post(
            addr,
            "/publish/news",
            "Content-Type: text/plain\r\n",
            &format!("http-{seq}"),
        );
        assert_eq!(status, 200);
    }
    let _pubs: Vec<Client> = pubs.into_iter().map(|t| t.join().unwrap()).collect();
    for c in &mut subs {
        let mut next: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..5 * N {
            let Got::Text(t) = c.recv() else {
                panic!("text expected")
            };
            let (src, seq) = t.rsplit_once('-').unwrap();
            let want = next.entry(src.to_owned()).or_default();
            assert_eq!(
                seq.parse::<usize>().unwrap(),
                *want,
                "{src}: lost, duplicated or reordered"
            );
            *want += 1;
        }
        assert_eq!(next.len(), 5);
    }
    ex.stop_with_sigterm();
}

#[test]
fn receive_only_clients_cannot_publish_and_close_stops_delivery() {
    let ex = uproar(&["--threads", "1"]);
    let addr = ex.addr;
    let mut a = Client::connect(addr, "/ws/t?mode=sub");
    let mut b = Client::connect(addr, "/ws/t");
    assert_eq!(
        post(addr, "/publish/t", "", "x").1,
        "{\"topic\":\"t\",\"node_subscribers\":2}\n"
    );
    assert_eq!(
        a.recv(),
        Got::Binary(b"x".to_vec()),
        "no text/* content type: binary"
    );
    assert_eq!(b.recv(), Got::Binary(b"x".to_vec()));
    b.close(CloseCode::NORMAL, "");
    assert_eq!(b.expect_close().0, 1000);
    assert_eq!(
        post(addr, "/publish/t", "", "y").1,
        "{\"topic\":\"t\",\"node_subscribers\":1}\n"
    );
    assert_eq!(a.recv(), Got::Binary(b"y".to_vec()));
    a.send_text("may I?");
    assert_eq!(a.expect_close(), (1008, "receive-only connection".into()));
    // Binary from a publisher stays binary; text stays text.
    let mut s = Client::connect(addr, "/ws/u?mode=sub");
    let mut p = Client::connect(addr, "/ws/u?mode=pub");
    p.send(DataKind::Binary, &[1, 2, 3]);
    p.send_text("three");
    assert_eq!(s.recv(), Got::Binary(vec![1, 2, 3]));
    assert_eq!(s.recv(), Got::Text("three".into()));
    ex.stop_with_sigterm();
}

#[test]
fn publish_token_origins_and_routes() {
    let ex = uproar(&[
        "--publish-token",
        "s3cret",
        "--allowed-origins",
        "http://good.example,http://also.example",
    ]);
    let addr = ex.addr;
    assert_eq!(post(addr, "/publish/t", "", "x").0, 401);
    assert_eq!(
        post(addr, "/publish/t", "Authorization: Bearer wrong\r\n", "x").0,
        401
    );
    assert_eq!(
        post(addr, "/publish/t", "Authorization: Bearer s3cret\r\n", "x").0,
        200
    );
    assert_eq!(
        post(
            addr,
            "/publish/no%20spaces",
            "Authorization: Bearer s3cret\r\n",
            "x"
        )
        .0,
        400
    );
    let upgrade = |path: &str, origin: &str| {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin}\r\n"
        );
        http(addr, req.as_bytes()).0
    };
    assert_eq!(upgrade("/ws/t", "Origin: http://good.example\r\n"), 101);
    assert_eq!(upgrade("/ws/t", "Origin: http://also.example\r\n"), 101);
    assert_eq!(upgrade("/ws/t", "Origin: http://evil.example\r\n"), 403);
    assert_eq!(
        upgrade("/ws/t", ""),
        403,
        "no Origin when origins are restricted"
    );
    assert_eq!(
        upgrade("/elsewhere", "Origin: http://good.example\r\n"),
        404
    );
    assert_eq!(upgrade("/ws/", "Origin: http://good.example\r\n"), 400);
    let (status, _, body) = http(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));
    let (status, head, body) = http(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(head.contains("text/html"));
    assert!(
        String::from_utf8(body)
            .unwrap()
            .contains("<title>uproar</title>")
    );
    assert_eq!(
        http(addr, b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n").0,
        405
    );
    ex.stop_with_sigterm();
}

#[test]
fn metrics_parse_and_count_what_was_sent() {
    let ex = uproar(&["--threads", "1"]);
    let addr = ex.addr;
    let mut subs: Vec<Client> = (0..3)
        .map(|_| Client::connect(addr, "/ws/m?mode=sub"))
        .collect();
    let mut p = Client::connect(addr, "/ws/m?mode=pub");
    for i in 0..5 {
        p.send_text(&format!("msg{i}"));
    }
    for c in &mut subs {
        for i in 0..5 {
            assert_eq!(c.recv(), Got::Text(format!("msg{i}")));
        }
    }
    assert_eq!(
        http(
            addr,
            b"GET /ws/m HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"
        )
        .0,
        400
    );
    let m = metrics(addr);
    assert_eq!(total(&m, "uproar_upgrades_total"), 4.0);
    assert_eq!(total(&m, "uproar_websockets"), 4.0);
    assert_eq!(total(&m, "uproar_messages_in_total"), 5.0);
    assert_eq!(total(&m, "uproar_bytes_in_total"), 20.0);
    assert_eq!(total(&m, "uproar_published_total"), 5.0);
    assert_eq!(total(&m, "uproar_deliveries_total"), 15.0);
    assert_eq!(total(&m, "uproar_messages_out_total"), 15.0);
    assert_eq!(total(&m, "uproar_bytes_out_total"), 15.0 * 6.0);
    assert_eq!(
        m["uproar_rejections_total{worker=\"0\",reason=\"bad_request\"}"],
        1.0
    );
    assert_eq!(total(&m, "uproar_drops_total"), 0.0);
    assert_eq!(total(&m, "uproar_mesh_refused_total"), 0.0);
    assert!(m.contains_key("uproar_mesh_refused_total{worker=\"0\",reason=\"inbox_full\"}"));
    // The driver that runs, as an info metric.
    let driver = std::env::var("UPROAR_DRIVER").unwrap_or_else(|_| "auto".into());
    let info: Vec<_> = m
        .keys()
        .filter(|k| k.starts_with("uproar_driver_info"))
        .collect();
    assert_eq!(info.len(), 1, "{info:?}");
    match driver.as_str() {
        "auto" => assert!(info[0].contains("io-uring") || info[0].contains("epoll")),
        d => assert_eq!(info[0], &format!("uproar_driver_info{{driver=\"{d}\"}}")),
    }
    assert_eq!(m[info[0]], 1.0);
    ex.stop_with_sigterm();
}

/// `POST /publish` answers the topic's subscribers on the whole node, whichever worker took
/// the request (it used to count only that worker's).
#[test]
fn publish_answers_the_subscribers_of_every_worker() {
    let ex = uproar(&["--threads", "2"]);
    let addr = ex.addr;
    let mut subs: Vec<Client> = (0..12)
        .map(|_| Client::connect(addr, "/ws/n?mode=sub"))
        .collect();
    let m = metrics(addr);
    let per_worker = [
        m["uproar_websockets{worker=\"0\"}"],
        m["uproar_websockets{worker=\"1\"}"],
    ];
    assert!(
        per_worker.iter().all(|&n| n > 0.0),
        "both workers have subscribers: {per_worker:?}"
    );
    for _ in 0..4 {
        assert_eq!(
            post(addr, "/publish/n", "", "x").1,
            "{\"topic\":\"n\",\"node_subscribers\":12}\n"
        );
    }
    for c in &mut subs {
        for _ in 0..4 {
            assert_eq!(c.recv(), Got::Binary(b"x".to_vec()));
        }
    }
    subs.truncate(5);
    assert!(eventually(std::time::Duration::from_secs(5), || post(
        addr,
        "/publish/n",
        "",
        "y"
    )
    .1 == "{\"topic\":\"n\",\"node_subscribers\":5}\n"));
    assert_eq!(
        post(addr, "/publish/none", "", "z").1,
        "{\"topic\":\"none\",\"node_subscribers\":0}\n"
    );
    ex.stop_with_sigterm();
}

/// A second server on an address in use is refused (it would silently split clients between
/// two sets of topics); `--reuse-port` shares it on purpose.
#[test]
fn a_second_server_on_the_same_port_is_refused_unless_asked_to_share() {
    let first = uproar(&["--threads", "2"]);
    let addr = first.addr.to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_uproar"))
        .args(["--listen", &addr, "--threads", "1"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another process"), "{err}");
    assert!(err.contains("--reuse-port"), "{err}");
    // Sharing on purpose: both serve.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_uproar"));
    cmd.env("RUST_LOG", "warn")
        .env("UPROAR_SHUTDOWN_GRACE", "300ms");
    let mut second = cmd
        .args(["--listen", &addr, "--threads", "1", "--reuse-port"])
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(second.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with(&format!("listening on {addr}")), "{line}");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    assert!(second.wait().unwrap().success());
    first.stop_with_sigterm();
}

#[test]
fn absurd_durations_are_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_uproar"))
        .args(["--idle-timeout", "999999999999999999h"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is too long"), "{err}");
}

#[test]
fn limits_come_from_the_environment_too() {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_uproar"));
    cmd.env("UPROAR_MAX_MESSAGE_SIZE", "1KiB")
        .env("RUST_LOG", "warn");
    let ex = run_command(cmd, &["--threads", "1"]);
    let mut c = Client::connect(ex.addr, "/echo");
    c.send(DataKind::Binary, &[0; 1000]);
    assert_eq!(c.recv(), Got::Binary(vec![0; 1000]));
    c.send(DataKind::Binary, &[0; 2000]);
    assert_eq!(c.expect_close().0, 1009);
    ex.stop_with_sigterm();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_uproar"))
        .args(["--max-message-size", "12 parsecs"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown size unit"));
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let ex = uproar(&["--threads", "2", "--shutdown-grace", "5s"]);
    let mut clients: Vec<Client> = (0..8)
        .map(|i| Client::connect(ex.addr, &format!("/ws/s{i}")))
        .collect();
    let mut ex = ex;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(ex.child.id() as i32, libc::SIGTERM) };
    for c in &mut clients {
        assert_eq!(c.recv(), Got::Close(1001, "server shutting down".into()));
        assert_eq!(c.recv(), Got::Eof);
    }
    let status = ex.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
}

/// A SIGTERM that arrives the moment the server says it is listening (before any client,
/// while the main thread may still be starting up) is a graceful shutdown: exit 0, never the
/// default action's death by signal.
#[test]
fn sigterm_right_after_startup_still_exits_0() {
    for _ in 0..20 {
        uproar(&["--threads", "1"]).stop_with_sigterm();
    }
}
