//! Three `uproar` nodes (separate processes, two workers each) sharing topics through a real
//! NATS server started here (Debian's `nats-server`; `.ci/run` installs it). Without it the
//! tests skip with a message, unless UPROAR_REQUIRE_CLIENTS=1 (as in CI), which makes that a
//! failure.
//!
//! - Subscribers on every node, publishers on every node (WebSocket and HTTP): every
//!   subscriber receives every message exactly once, in order per publisher.
//! - A topic with subscribers on one node only is subscribed at the broker by that node
//!   alone (NATS's own view, `/connz?subs=1`), and unsubscribed after the last one leaves.
//! - A node killed: the others keep serving, and the broker drops its subscriptions.
//! - The broker killed mid-stream and restarted: local delivery never stops, `/healthz` says
//!   503 meanwhile, the nodes reconnect, resubscribe and deliver across nodes again, and every
//!   message of the stream is delivered or counted: lost by the publishing node (it could not
//!   send it) or missed by the receiving node (a gap in the sequence numbers). The test checks
//!   the sum.
//! - NATS: a cluster of three servers with one killed: the nodes fail over, and the same sum
//!   holds; a message over the server's `max_payload` is refused for the cluster, delivered
//!   locally and counted.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use uproar_testkit::*;
use uproar_wire::DataKind;

fn required() -> bool {
    std::env::var_os("UPROAR_REQUIRE_CLIENTS").is_some_and(|v| v == "1")
}

fn have(cmd: &str) -> bool {
    let ok = Command::new(cmd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!required(), "{cmd} missing, and UPROAR_REQUIRE_CLIENTS=1");
        eprintln!("skipped: needs {cmd} (apt install {cmd})");
    }
    ok
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A nats-server on `port` with monitoring on `mport` (and `extra` arguments); killed on drop.
struct Nats {
    child: Child,
    port: u16,
    mport: u16,
    extra: Vec<String>,
}

impl Nats {
    fn start(port: u16, mport: u16) -> Nats {
        Nats::start_with(port, mport, Vec::new())
    }

    fn start_with(port: u16, mport: u16, extra: Vec<String>) -> Nats {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-m",
                &mport.to_string(),
            ])
            .args(&extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let n = Nats {
            child,
            port,
            mport,
            extra,
        };
        // Both the client port and the monitoring port: the tests read `/connz` right away.
        assert!(
            eventually(Duration::from_secs(10), || [port, mport]
                .iter()
                .all(|&p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok())),
            "nats-server did not start"
        );
        n
    }

    /// The subjects each client connection (by name: the node id) is subscribed to.
    /// A server that refuses the monitoring connection (killed, or a cluster peer restarting)
    /// has no known subscriptions: an empty map, and the callers poll again.
    fn subscriptions(&self) -> BTreeMap<String, BTreeSet<String>> {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.mport)) else {
            return BTreeMap::new();
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /connz?subs=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (status, _, body) = read_response(&mut s);
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut out = BTreeMap::new();
        for c in v["connections"].as_array().cloned().unwrap_or_default() {
            let name = c["name"].as_str().unwrap_or("").to_owned();
            let subs = c["subscriptions_list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect();
            out.insert(name, subs);
        }
        out
    }
}

/// What the shared test bodies need of a broker.
trait Broker {
    fn url(&self) -> String;
    /// How many connections are subscribed to `topic` at the broker, by its own view.
    fn subscribers(&self, topic: &str) -> usize;
    /// Whether node `id` is among them, where the broker can tell (NATS names connections).
    fn subscribed_by(&self, topic: &str, id: &str) -> Option<bool>;
    /// Kill the broker; [`start_again`](Self::start_again) brings it back on the same port.
    fn stop(&mut self);
    fn start_again(&mut self);
}

impl Broker for Nats {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
    fn subscribers(&self, topic: &str) -> usize {
        let ch = uproar_cluster::subject("uproar", topic);
        self.subscriptions()
            .values()
            .filter(|v| v.contains(&ch))
            .count()
    }
    fn subscribed_by(&self, topic: &str, id: &str) -> Option<bool> {
        let ch = uproar_cluster::subject("uproar", topic);
        Some(
            self.subscriptions()
                .get(id)
                .is_some_and(|v| v.contains(&ch)),
        )
    }
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    fn start_again(&mut self) {
        // The old one's drop kills a process that is gone already: harmless.
        *self = Nats::start_with(self.port, self.mport, self.extra.clone());
    }
}

/// A redis-server on `port`, no persistence; killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = Redis { child, port };
        assert!(
            eventually(Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "redis-server did not start"
        );
        r
    }

    /// `PUBSUB NUMSUB channel`, in RESP over a plain socket.
    fn numsub(&self, channel: &str) -> usize {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "*3\r\n$6\r\nPUBSUB\r\n$6\r\nNUMSUB\r\n${}\r\n{channel}\r\n",
            channel.len()
        )
        .unwrap();
        // The answer: *2 $len channel :count
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "redis closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(i) = text.rfind("\r\n:")
                && let Some(end) = text[i + 3..].find("\r\n")
            {
                return text[i + 3..i + 3 + end].parse().unwrap();
            }
        }
    }
}

impl Redis {
    /// How many channels matching `pattern` have subscribers (`PUBSUB CHANNELS pattern`).
    fn channels(&self, pattern: &str) -> usize {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "*3\r\n$6\r\nPUBSUB\r\n$8\r\nCHANNELS\r\n${}\r\n{pattern}\r\n",
            pattern.len()
        )
        .unwrap();
        // The answer's first line: *N (the names follow; not needed).
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line.trim().strip_prefix('*').unwrap().parse().unwrap()
    }

    /// How many times Redis ran `command` since it started (`INFO commandstats`).
    fn calls(&self, command: &str) -> u64 {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
            .unwrap();
        let mut r = BufReader::new(s);
        let mut head = String::new();
        r.read_line(&mut head).unwrap();
        let len: usize = head.trim().strip_prefix('$').unwrap().parse().unwrap();
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
        let body = String::from_utf8(body).unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .map_or(0, |v| v.split(',').next().unwrap().parse().unwrap())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker for Redis {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    fn subscribers(&self, topic: &str) -> usize {
        self.numsub(&format!("uproar.{topic}"))
    }
    fn subscribed_by(&self, _: &str, _: &str) -> Option<bool> {
        None
    }
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    fn start_again(&mut self) {
        *self = Redis::start(self.port);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text messages `c` receives up to and including `last`.
fn recv_until(c: &mut Client, last: &str) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        match c.recv() {
            Got::Text(t) => {
                let end = t == last;
                out.push(t);
                if end {
                    return out;
                }
            }
            other => panic!("expected a text message, got {other:?}"),
        }
    }
    panic!("{last:?} never came")
}

/// Publish from `from` until a message reaches node `to` (interest travels through the broker
/// asynchronously), then a marker both subscribers read up to: from here on the receiving node
/// has seen the origin's sequence, so any message missing later is counted as missed.
fn sync(from: &Example, to: &Example, a: &mut Client, b: &mut Client) {
    let before = metric(to.addr, "uproar_broker_received_total");
    let mut arrived = false;
    for i in 0..200 {
        assert_eq!(post(from.addr, "o", &format!("probe{i}")), 200);
        if eventually(Duration::from_millis(50), || {
            metric(to.addr, "uproar_broker_received_total") > before
        }) {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "nothing crossed the broker");
    assert_eq!(post(from.addr, "o", "synced"), 200);
    recv_until(a, "synced");
    recv_until(b, "synced");
}

/// A WebSocket publisher on `addr` sending `m0`, `m1`, ... to `o`, one every 4 ms, until told to
/// stop (at most 5,000); joins to how many it sent.
fn stream(addr: SocketAddr) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let t = std::thread::spawn(move || {
        let mut p = Client::connect(addr, "/ws/o?mode=pub");
        let mut k = 0;
        while !flag.load(Ordering::Relaxed) && k < 5000 {
            p.send_text(&format!("m{k}"));
            k += 1;
            std::thread::sleep(Duration::from_millis(4));
        }
        // The last one: a different word, so the receivers know the stream is over.
        p.send_text("end");
        k
    });
    (stop, t)
}

/// After a stream of `total` messages published on `origin`: `a` (on the origin) got every
/// one in order; `b` (on `receiver`) got some in order, and what it did not get is exactly what
/// the origin counted as lost plus what the receiver counted as missed.
fn check_stream(
    total: usize,
    a: &mut Client,
    b: &mut Client,
    origin: &Example,
    receiver: &Example,
) -> f64 {
    let num = |m: &String| m.strip_prefix('m').map(|k| k.parse::<usize>().unwrap());
    let got_a: Vec<usize> = recv_until(a, "end").iter().filter_map(num).collect();
    assert_eq!(
        got_a,
        (0..total).collect::<Vec<_>>(),
        "local delivery never stops"
    );
    let got_b: Vec<usize> = recv_until(b, "end").iter().filter_map(num).collect();
    assert!(
        got_b.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicate"
    );
    let lost = metric(origin.addr, "uproar_broker_lost_total");
    let missed = metric(receiver.addr, "uproar_broker_missed_total");
    eprintln!(
        "stream: published {total}, received across {}, lost at the origin {lost}, missed at the receiver {missed}",
        got_b.len()
    );
    assert_eq!(
        got_b.len() as f64 + lost + missed,
        total as f64,
        "received {} + lost at the origin {lost} + missed at the receiver {missed} = published {total}",
        got_b.len()
    );
    lost + missed
}

/// Two nodes on `broker` (ids `{prefix}0`, `{prefix}1`), healthy, a subscriber to `o` on each,
/// synced (see [`sync`]).
fn two_nodes(broker: &str, prefix: &str) -> (Vec<Example>, Client, Client) {
    let nodes: Vec<Example> = (0..2)
        .map(|i| node(broker, &format!("{prefix}{i}")))
        .collect();
    for n in &nodes {
        assert!(eventually(Duration::from_secs(10), || healthz(n.addr) == 200));
    }
    let mut a = Client::connect(nodes[0].addr, "/ws/o?mode=sub");
    let mut b = Client::connect(nodes[1].addr, "/ws/o?mode=sub");
    sync(&nodes[0], &nodes[1], &mut a, &mut b);
    (nodes, a, b)
}

fn node(nats: &str, id: &str) -> Example {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uproar"));
    cmd.env("RUST_LOG", "warn")
        .env("UPROAR_SHUTDOWN_GRACE", "300ms");
    run_command(
        cmd,
        &[
            "--threads",
            "2",
            "--broker",
            nats,
            "--node-id",
            id,
            "--broker-linger",
            "300ms",
        ],
    )
}

fn healthz(addr: SocketAddr) -> u16 {
    http(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").0
}

fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (_, _, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

fn post(addr: SocketAddr, topic: &str, body: &str) -> u16 {
    let req = format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http(addr, req.as_bytes()).0
}

/// Receive `n` text messages.
fn recv_texts(c: &mut Client, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| match c.recv() {
            Got::Text(t) => t,
            other => panic!("expected a text message, got {other:?}"),
        })
        .collect()
}

#[test]
fn nats_three_nodes_share_topics_exactly_once_in_order_per_publisher() {
    if have("nats-server") {
        share_topics(&Nats::start(free_port(), free_port()));
    }
}

#[test]
fn redis_three_nodes_share_topics_exactly_once_in_order_per_publisher() {
    if have("redis-server") {
        share_topics(&Redis::start(free_port()));
    }
}

#[test]
fn nats_outage_is_survived_counted_and_recovered() {
    if have("nats-server") {
        outage(Nats::start(free_port(), free_port()));
    }
}

#[test]
fn redis_outage_is_survived_counted_and_recovered() {
    if have("redis-server") {
        outage(Redis::start(free_port()));
    }
}

fn share_topics(nats: &impl Broker) {
    let nodes: Vec<Example> = (0..3)
        .map(|i| node(&nats.url(), &format!("node{i}")))
        .collect();
    for n in &nodes {
        assert!(
            eventually(Duration::from_secs(10), || healthz(n.addr) == 200),
            "connected"
        );
    }
    // Two subscribers per node.
    let mut subs: Vec<Client> = nodes
        .iter()
        .flat_map(|n| {
            [
                Client::connect(n.addr, "/ws/cl.t?mode=sub"),
                Client::connect(n.addr, "/ws/cl.t?mode=sub"),
            ]
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || nats.subscribers("cl.t") == 3),
        "every node subscribed at the broker: {}",
        nats.subscribers("cl.t")
    );
    // Publishers on every node: WebSocket and HTTP, 30 messages each.
    const N: usize = 30;
    let mut pubs: Vec<Client> = nodes
        .iter()
        .map(|n| Client::connect(n.addr, "/ws/cl.t?mode=pub"))
        .collect();
    for k in 0..N {
        for (i, p) in pubs.iter_mut().enumerate() {
            p.send_text(&format!("n{i}-ws-{k}"));
        }
        for (i, n) in nodes.iter().enumerate() {
            assert_eq!(post(n.addr, "cl.t", &format!("n{i}-http-{k}")), 200);
        }
    }
    for (si, s) in subs.iter_mut().enumerate() {
        let got = recv_texts(s, 6 * N);
        let set: BTreeSet<&String> = got.iter().collect();
        assert_eq!(set.len(), 6 * N, "subscriber {si}: a duplicate");
        // In order per publisher.
        for i in 0..3 {
            for via in ["ws", "http"] {
                let prefix = format!("n{i}-{via}-");
                let seq: Vec<usize> = got
                    .iter()
                    .filter_map(|m| m.strip_prefix(&prefix))
                    .map(|k| k.parse().unwrap())
                    .collect();
                assert_eq!(
                    seq,
                    (0..N).collect::<Vec<_>>(),
                    "subscriber {si}, publisher {prefix}"
                );
            }
        }
    }
    // Nothing more arrives (exactly once): a marker published now is the next message.
    assert_eq!(post(nodes[0].addr, "cl.t", "marker"), 200);
    for s in &mut subs {
        assert_eq!(s.recv(), Got::Text("marker".into()));
    }
    // Binary keeps its kind and its exact bytes (every byte value) across nodes.
    let bytes: Vec<u8> = (0..=255u8).rev().chain(0..=255).collect();
    pubs[2].send(DataKind::Binary, &bytes);
    for s in &mut subs {
        assert_eq!(s.recv(), Got::Binary(bytes.clone()));
    }
    // A topic with a subscriber on node 1 only: subscribed at the broker by node 1 alone.
    let mut solo = Client::connect(nodes[1].addr, "/ws/solo?mode=sub");
    assert!(eventually(Duration::from_secs(10), || nats
        .subscribers("solo")
        == 1));
    if let Some(by1) = nats.subscribed_by("solo", "node1") {
        assert!(by1, "the one subscription is node 1's");
    }
    assert_eq!(post(nodes[2].addr, "solo", "to the one"), 200);
    assert_eq!(solo.recv(), Got::Text("to the one".into()));
    // The last subscriber leaves: unsubscribed after the linger.
    drop(solo);
    assert!(
        eventually(Duration::from_secs(10), || nats.subscribers("solo") == 0),
        "unsubscribed"
    );
    // loadtest across the nodes: 30 subscribers spread over the three, a publisher on each;
    // every delivery verified (none lost, duplicated or out of order per publisher).
    let urls = |q: &str| {
        nodes
            .iter()
            .map(|n| format!("ws://{}/ws/lt{q}", n.addr))
            .collect::<Vec<_>>()
            .join(",")
    };
    let cfg = uproar_loadtest::RunConfig {
        deflate: false,
        tls: None,
        token: None,
        json: false,
        url: urls("?mode=sub"),
        scenario: uproar_loadtest::Scenario::Broadcast {
            subscribers: 30,
            publishers: 3,
            rate: 300.0,
            size: 64,
            binary: false,
            slow_fraction: 0.0,
            publish_url: Some(urls("?mode=pub")),
        },
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(500),
        threads: 1,
        server_pid: None,
        measure_pids: Vec::new(),
        progress: false,
    };
    // Every node subscribed to the topic at the broker before the load starts (a subscriber
    // per node held through the run), so no early message goes only where interest had spread.
    let _held: Vec<Client> = nodes
        .iter()
        .map(|n| Client::connect(n.addr, "/ws/lt?mode=sub"))
        .collect();
    assert!(eventually(Duration::from_secs(10), || nats
        .subscribers("lt")
        == 3));
    let r = uproar_loadtest::run(&cfg).unwrap();
    assert!(!r.failed() && r.connections == 33, "{}", r.text());
    assert!(r.deliveries_per_sec > 1000.0, "{}", r.text());
    assert_eq!(metric(nodes[0].addr, "uproar_broker_connected"), 1.0);
    assert!(metric(nodes[0].addr, "uproar_broker_sent_total") >= (2 * N) as f64);
    assert!(metric(nodes[0].addr, "uproar_broker_received_total") >= (4 * N) as f64);
    // A node killed (SIGKILL): the broker drops its subscriptions, the others keep serving.
    let mut nodes = nodes;
    drop(nodes.pop());
    assert!(
        eventually(Duration::from_secs(10), || nats.subscribers("cl.t") == 2),
        "the dead node's subscription dropped: {}",
        nats.subscribers("cl.t")
    );
    assert_eq!(post(nodes[0].addr, "cl.t", "after a node died"), 200);
    for s in &mut subs[..4] {
        assert_eq!(s.recv(), Got::Text("after a node died".into()));
    }
    for n in nodes {
        n.stop_with_sigterm();
    }
}

fn outage<B: Broker>(mut nats: B) {
    let (nodes, mut a, mut b) = two_nodes(&nats.url(), "out");
    assert!(
        eventually(Duration::from_secs(10), || nats.subscribers("o") == 2),
        "both nodes subscribed at the broker"
    );
    // A publisher on node 0 streams through the whole outage.
    let (stop, publisher) = stream(nodes[0].addr);
    std::thread::sleep(Duration::from_millis(300));
    nats.stop();
    for n in &nodes {
        assert!(
            eventually(Duration::from_secs(10), || healthz(n.addr) == 503),
            "unhealthy while cut off"
        );
    }
    assert_eq!(metric(nodes[0].addr, "uproar_broker_connected"), 0.0);
    std::thread::sleep(Duration::from_millis(300));
    // The broker comes back on the same port: reconnected, resubscribed, delivering again.
    nats.start_again();
    for n in &nodes {
        assert!(
            eventually(Duration::from_secs(20), || healthz(n.addr) == 200),
            "reconnected"
        );
    }
    assert!(
        eventually(Duration::from_secs(10), || nats.subscribers("o") == 2),
        "resubscribed"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let total = publisher.join().unwrap();
    let uncounted = check_stream(total, &mut a, &mut b, &nodes[0], &nodes[1]);
    assert!(
        metric(
            nodes[0].addr,
            "uproar_broker_lost_total{reason=\"disconnected\"}"
        ) >= 1.0,
        "published during the outage: lost, and counted"
    );
    assert!(uncounted >= 1.0);
    assert!(metric(nodes[0].addr, "uproar_broker_reconnects_total") >= 1.0);
    for n in nodes {
        n.stop_with_sigterm();
    }
}

/// Three nats-servers in a cluster, two nodes given all three URLs; the server node 0 is
/// connected to is killed mid-stream: node 0 fails over to another, delivery across nodes goes
/// on, and the stream's sum holds.
#[test]
fn nats_cluster_one_server_killed_nodes_fail_over() {
    if !have("nats-server") {
        return;
    }
    let ports: Vec<(u16, u16, u16)> = (0..3)
        .map(|_| (free_port(), free_port(), free_port()))
        .collect();
    let mut servers: Vec<Option<Nats>> = ports
        .iter()
        .map(|&(p, m, c)| {
            let routes: Vec<String> = ports
                .iter()
                .filter(|o| o.2 != c)
                .map(|o| format!("nats://127.0.0.1:{}", o.2))
                .collect();
            Some(Nats::start_with(
                p,
                m,
                vec![
                    "--cluster_name".into(),
                    "t".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{c}"),
                    "--routes".into(),
                    routes.join(","),
                ],
            ))
        })
        .collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{}", p.0))
        .collect();
    let (nodes, mut a, mut b) = two_nodes(&urls.join(","), "fo");
    // Which server node 0 is on (NATS names the connection by the node id).
    fn on(servers: &[Option<Nats>], id: &str) -> Option<usize> {
        servers.iter().position(|s| {
            s.as_ref()
                .is_some_and(|s| s.subscriptions().contains_key(id))
        })
    }
    let mut first = None;
    assert!(eventually(Duration::from_secs(10), || {
        first = on(&servers, "fo0");
        first.is_some()
    }));
    let first = first.unwrap();
    let (stop, publisher) = stream(nodes[0].addr);
    std::thread::sleep(Duration::from_millis(300));
    drop(servers[first].take());
    assert!(
        eventually(Duration::from_secs(20), || on(&servers, "fo0")
            .is_some_and(|s| s != first)),
        "node 0 failed over to another server"
    );
    assert!(eventually(Duration::from_secs(20), || healthz(
        nodes[0].addr
    ) == 200));
    // Node 1 (maybe on the killed server too) receives the stream again before it ends.
    let now = metric(nodes[1].addr, "uproar_broker_received_total");
    assert!(
        eventually(Duration::from_secs(20), || metric(
            nodes[1].addr,
            "uproar_broker_received_total"
        ) > now + 10.0),
        "delivery across nodes resumed"
    );
    stop.store(true, Ordering::Relaxed);
    let total = publisher.join().unwrap();
    check_stream(total, &mut a, &mut b, &nodes[0], &nodes[1]);
    assert!(metric(nodes[0].addr, "uproar_broker_reconnects_total") >= 1.0);
    for n in nodes {
        n.stop_with_sigterm();
    }
}

/// A message over the NATS server's `max_payload` (2 KiB here): delivered on its node, refused
/// for the cluster with reason `too_large`; smaller ones still cross.
#[test]
fn nats_max_payload_is_refused_for_the_cluster_delivered_locally_and_counted() {
    if !have("nats-server") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("uproar-nats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("max_payload.conf");
    std::fs::write(&conf, "max_payload: 2048\n").unwrap();
    let nats = Nats::start_with(
        free_port(),
        free_port(),
        vec!["-c".into(), conf.display().to_string()],
    );
    let (nodes, mut a, mut b) = two_nodes(&nats.url(), "mp");
    let big = "x".repeat(3000);
    assert_eq!(post(nodes[0].addr, "o", &big), 200);
    assert_eq!(post(nodes[0].addr, "o", "small"), 200);
    assert_eq!(
        recv_texts(&mut a, 2),
        [big, "small".to_owned()],
        "both, locally"
    );
    assert_eq!(
        b.recv(),
        Got::Text("small".into()),
        "the big one not across"
    );
    assert_eq!(
        metric(
            nodes[0].addr,
            "uproar_broker_lost_total{reason=\"too_large\"}"
        ),
        1.0
    );
    assert_eq!(metric(nodes[1].addr, "uproar_broker_missed_total"), 0.0);
    for n in nodes {
        n.stop_with_sigterm();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// 1,100 topics subscribed in a burst (more than one SUBSCRIBE batch of 1,000): all subscribed
/// at Redis; Redis restarted: all subscribed again.
#[test]
fn redis_a_burst_of_topics_is_subscribed_in_batches_and_again_after_a_restart() {
    if !have("redis-server") {
        return;
    }
    const T: usize = 1100;
    let mut redis = Redis::start(free_port());
    let n = node(&redis.url(), "many");
    assert!(eventually(Duration::from_secs(10), || healthz(n.addr) == 200));
    let _subs: Vec<Client> = (0..T)
        .map(|i| Client::connect(n.addr, &format!("/ws/many{i}?mode=sub")))
        .collect();
    assert!(
        eventually(Duration::from_secs(20), || redis.channels("uproar.many*")
            == T),
        "{} of {T} subscribed",
        redis.channels("uproar.many*")
    );
    // The gauge follows Redis's replies to the SUBSCRIBE batches, published at the bridge's
    // next turn.
    assert!(
        eventually(Duration::from_secs(10), || metric(
            n.addr,
            "uproar_broker_topics"
        ) == T as f64),
        "uproar_broker_topics {}",
        metric(n.addr, "uproar_broker_topics")
    );
    redis.stop();
    assert!(eventually(Duration::from_secs(10), || healthz(n.addr) == 503));
    redis.start_again();
    assert!(eventually(Duration::from_secs(20), || healthz(n.addr) == 200));
    assert!(
        eventually(Duration::from_secs(20), || redis.channels("uproar.many*")
            == T),
        "{} of {T} subscribed again",
        redis.channels("uproar.many*")
    );
    // In batches: two SUBSCRIBE commands (1,000 and 100 channels) since the restart.
    assert_eq!(redis.calls("subscribe"), 2);
    n.stop_with_sigterm();
}
