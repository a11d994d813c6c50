//! Pub/sub through the engine: subscribers on every worker get every message exactly once and
//! in order per publisher (publishers on several workers at once, and a `Publisher` handle
//! from another thread); unsubscribe and close stop delivery; slow consumers are closed (or
//! their drops counted) while fast ones lose nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use uproar::{
    BackpressurePolicy, CloseCode, CloseEvent, ConnId, Ctx, DataKind, Handler, Message, Upgrade,
    UpgradeRequest, WebSocket,
};

/// `/ws/TOPIC[?mode=pub|sub]`: subscribe (unless pub) and publish what is sent (unless sub).
/// Commands: `whoami` (the worker's index), `unsub`, `stats` (topics and counters here),
/// `block` (hold the worker until [`UNBLOCK`]), `spam N` (publish N messages).
struct Topics;

static UNBLOCK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Set while a worker is held by `block`.
static BLOCKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

struct Conn {
    topic: String,
    publish: bool,
    subscribe: bool,
}

impl Handler for Topics {
    type Conn = Conn;

    fn on_upgrade<'r>(&mut self, _: &mut Ctx<Conn>, req: &UpgradeRequest<'r>) -> Upgrade<'r, Conn> {
        let Some(topic) = req.path().strip_prefix("/ws/") else {
            return Upgrade::reject(404, "no such route");
        };
        let mode = req.query().unwrap_or("");
        Upgrade::accept(Conn {
            topic: topic.to_owned(),
            publish: mode != "mode=sub",
            subscribe: mode != "mode=pub",
        })
    }

    fn on_open(&mut self, ws: &mut WebSocket<'_, Conn>) {
        if ws.data().subscribe {
            let topic = ws.data().topic.clone();
            assert!(ws.subscribe(&topic));
        }
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, Conn>, msg: Message<'_>) {
        match msg.as_text() {
            Some("whoami") => {
                let w = ws.ctx().worker().to_string();
                let _ = ws.send_text(&w);
            }
            Some("unsub") => {
                let topic = ws.data().topic.clone();
                let was = ws.unsubscribe(&topic);
                let _ = ws.send_text(&format!("unsub {was}"));
            }
            Some("block") => {
                // Hold this worker until the test lets go (bounded: 10 s).
                let t = std::time::Instant::now();
                BLOCKED.store(true, std::sync::atomic::Ordering::Release);
                while !UNBLOCK.load(std::sync::atomic::Ordering::Acquire)
                    && t.elapsed() < Duration::from_secs(10)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let _ = ws.send_text("unblocked");
            }
            Some(t) if t.starts_with("spam ") => {
                let n: usize = t[5..].parse().unwrap();
                let topic = ws.data().topic.clone();
                for i in 0..n {
                    ws.publish(&topic, DataKind::Text, format!("spam-{i}").as_bytes());
                }
                let _ = ws.send_text("spammed");
            }
            Some("stats") => {
                let c = ws.ctx().pubsub_counters();
                let line = format!(
                    "topics={} deliveries={} drops={} slow_closes={}",
                    ws.ctx().topics(),
                    c.deliveries,
                    c.drops,
                    c.slow_closes
                );
                let _ = ws.send_text(&line);
            }
            _ if ws.data().publish => {
                let topic = ws.data().topic.clone();
                ws.publish(&topic, msg.kind(), msg.data());
            }
            _ => ws.close(CloseCode::POLICY_VIOLATION, "receive-only connection"),
        }
    }

    fn on_close(&mut self, _: &mut Ctx<Conn>, _: ConnId, _: Conn, _: CloseEvent<'_>) {}
}

fn whoami(c: &mut Client) -> usize {
    c.send_text("whoami");
    match c.recv() {
        Got::Text(t) => t.parse().unwrap(),
        other => panic!("{other:?}"),
    }
}

/// Read `n` messages of the form `SOURCE-SEQ`; check each source's sequence is 0, 1, 2, ...
fn read_in_order(c: &mut Client, n: usize) -> BTreeMap<String, u64> {
    let mut next: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..n {
        let Got::Text(t) = c.recv() else {
            panic!("expected a text message")
        };
        let (src, seq) = t.rsplit_once('-').unwrap();
        let seq: u64 = seq.parse().unwrap();
        let want = next.entry(src.to_owned()).or_default();
        assert_eq!(seq, *want, "from {src}: lost, duplicated or reordered");
        *want += 1;
    }
    next
}

#[test]
fn every_subscriber_on_every_worker_gets_every_message_once_in_order() {
    let server = builder().threads(2).start(|_| Topics).unwrap();
    let addr = server.local_addr();
    // Subscribers until both workers have some (SO_REUSEPORT spreads them by hash).
    let mut subs = Vec::new();
    let mut workers = BTreeSet::new();
    while subs.len() < 8 || (workers.len() < 2 && subs.len() < 64) {
        let mut c = Client::connect(addr, "/ws/news?mode=sub");
        workers.insert(whoami(&mut c));
        subs.push(c);
    }
    assert_eq!(workers.len(), 2, "subscribers on both workers");
    // Publishers on both workers too.
    let mut pubs = Vec::new();
    let mut pub_workers = BTreeSet::new();
    while pubs.len() < 4 || (pub_workers.len() < 2 && pubs.len() < 64) {
        let mut c = Client::connect(addr, "/ws/news?mode=pub");
        pub_workers.insert(whoami(&mut c));
        pubs.push(c);
    }
    assert_eq!(pub_workers.len(), 2, "publishers on both workers");
    const N: u64 = 300;
    let npubs = pubs.len();
    let senders: Vec<_> = pubs
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            std::thread::spawn(move || {
                for seq in 0..N {
                    c.send_text(&format!("p{i}-{seq}"));
                }
                c
            })
        })
        .collect();
    let publisher = server.publisher();
    let handle_sender = std::thread::spawn(move || {
        for seq in 0..N {
            assert!(publisher.publish("news", DataKind::Text, format!("handle-{seq}").as_bytes()));
        }
    });
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                read_in_order(&mut c, (npubs as u64 + 1) as usize * N as usize)
            })
        })
        .collect();
    let _pubs: Vec<Client> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    handle_sender.join().unwrap();
    for r in readers {
        let got = r.join().unwrap();
        assert_eq!(
            got.len(),
            npubs + 1,
            "every publisher reached every subscriber"
        );
        assert!(got.values().all(|&n| n == N), "all {N} from each: {got:?}");
    }
}

#[test]
fn unsubscribe_and_close_stop_delivery() {
    let server = builder().start(|_| Topics).unwrap();
    let addr = server.local_addr();
    let mut a = Client::connect(addr, "/ws/t?mode=sub");
    let mut b = Client::connect(addr, "/ws/t?mode=sub");
    let mut p = Client::connect(addr, "/ws/t?mode=pub");
    p.send_text("x-0");
    assert_eq!(a.recv(), Got::Text("x-0".into()));
    assert_eq!(b.recv(), Got::Text("x-0".into()));
    a.send_text("unsub");
    assert_eq!(a.recv(), Got::Text("unsub true".into()));
    b.close(CloseCode::NORMAL, "");
    assert_eq!(b.expect_close().0, 1000);
    p.send_text("x-1");
    // `a` gets the answer to its next command, not the publish.
    a.send_text("stats");
    match a.recv() {
        Got::Text(t) => assert!(t.starts_with("topics=0 deliveries=2 "), "{t}"),
        other => panic!("{other:?}"),
    }
    // A receive-only connection may not publish.
    let mut r = Client::connect(addr, "/ws/t?mode=sub");
    r.send_text("not allowed");
    assert_eq!(r.expect_close().0, 1008);
}

/// A subscriber that stops reading is closed as a slow consumer (default policy) and a fast
/// one loses nothing; under the drop policy the slow one stays and its drops are counted.
#[test]
fn slow_consumers_are_closed_or_dropped_and_fast_ones_lose_nothing() {
    for policy in [BackpressurePolicy::Close, BackpressurePolicy::Drop] {
        let server = builder()
            .max_buffered_bytes(1 << 20)
            .close_timeout(Duration::from_millis(300))
            .backpressure(policy)
            .start(|_| Topics)
            .unwrap();
        let addr = server.local_addr();
        let _slow = Client::connect(addr, "/ws/feed?mode=sub");
        let mut fast = Client::connect(addr, "/ws/feed?mode=sub");
        let mut p = Client::connect(addr, "/ws/feed?mode=pub");
        // 16 MB in all, more than the slow reader's socket buffers can absorb, at a pace the
        // fast reader keeps up with (64 KiB per millisecond).
        const N: usize = 1000;
        let reader = std::thread::spawn(move || {
            let mut got = 0;
            for seq in 0..N {
                match fast.recv() {
                    Got::Binary(b) => {
                        assert_eq!(&b[..8], &(seq as u64).to_be_bytes());
                        got += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
            (got, fast)
        });
        for seq in 0..N {
            let mut m = vec![0u8; 16 << 10];
            m[..8].copy_from_slice(&(seq as u64).to_be_bytes());
            p.send(DataKind::Binary, &m);
            if seq % 4 == 3 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let (got, _fast) = reader.join().unwrap();
        assert_eq!(got, N, "{policy:?}: the fast subscriber got everything");
        let mut q = Client::connect(addr, "/ws/other");
        std::thread::sleep(Duration::from_millis(100));
        q.send_text("stats");
        let Got::Text(stats) = q.recv() else { panic!() };
        match policy {
            BackpressurePolicy::Close => {
                assert!(
                    stats.contains("slow_closes=1") && stats.contains("drops=0"),
                    "{stats}"
                )
            }
            BackpressurePolicy::Drop => {
                assert!(
                    stats.contains("slow_closes=0") && !stats.contains("drops=0 "),
                    "{stats}"
                )
            }
        }
    }
}

/// A `Publisher` after shutdown is refused (nothing piles up in inboxes no worker drains).
#[test]
fn a_publisher_is_refused_after_shutdown() {
    let server = builder().threads(2).start(|_| Topics).unwrap();
    let publisher = server.publisher();
    assert!(publisher.publish("t", DataKind::Text, b"before"));
    server.handle().shutdown(Duration::ZERO);
    server.join().unwrap();
    assert!(!publisher.publish("t", DataKind::Text, b"after"));
}

/// Publishes "first" through a `Publisher` (every worker's inbox, this one's too), then
/// "second" from the callback itself, when a client sends `go`.
struct Causal {
    publisher: std::sync::Arc<std::sync::OnceLock<uproar::Publisher>>,
}

impl Handler for Causal {
    type Conn = ();

    fn on_upgrade<'r>(&mut self, _: &mut Ctx<()>, _: &UpgradeRequest<'r>) -> Upgrade<'r, ()> {
        Upgrade::accept(())
    }

    fn on_open(&mut self, ws: &mut WebSocket<'_, ()>) {
        assert!(ws.subscribe("t"));
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, ()>, msg: Message<'_>) {
        match msg.as_text() {
            Some("whoami") => {
                let w = ws.ctx().worker().to_string();
                let _ = ws.send_text(&w);
            }
            Some("go") => {
                let p = self.publisher.get().expect("publisher set after start");
                assert!(p.publish("t", DataKind::Text, b"first"));
                ws.publish("t", DataKind::Text, b"second");
            }
            _ => {}
        }
    }

    fn on_close(&mut self, _: &mut Ctx<()>, _: ConnId, _: (), _: CloseEvent<'_>) {}
}

/// Causal order: a message published before another (here by the same callback, first
/// through a `Publisher`, whose copy for this worker waits in its inbox) reaches every
/// subscriber first, on this worker and on the other one; with one worker too.
#[test]
fn a_publish_never_overtakes_one_made_before_it() {
    for threads in [1, 2] {
        causal_order(threads);
    }
}

fn causal_order(threads: usize) {
    let publisher = std::sync::Arc::new(std::sync::OnceLock::new());
    let server = builder()
        .threads(threads)
        .start({
            let publisher = publisher.clone();
            move |_| Causal {
                publisher: publisher.clone(),
            }
        })
        .unwrap();
    assert!(publisher.set(server.publisher()).is_ok());
    let addr = server.local_addr();
    let mut clients: Vec<(usize, Client)> = Vec::new();
    while (clients.len() < 2
        || clients.iter().map(|c| c.0).collect::<BTreeSet<_>>().len() < threads)
        && clients.len() < 64
    {
        let mut c = Client::connect(addr, "/ws");
        clients.push((whoami(&mut c), c));
    }
    let workers: BTreeSet<usize> = clients.iter().map(|c| c.0).collect();
    assert_eq!(workers.len(), threads, "clients on every worker");
    for round in 0..20 {
        let n = clients.len();
        clients[round % n].1.send_text("go");
        for (w, c) in &mut clients {
            assert_eq!(
                c.recv(),
                Got::Text("first".into()),
                "{threads} workers, round {round}, worker {w}"
            );
            assert_eq!(
                c.recv(),
                Got::Text("second".into()),
                "{threads} workers, round {round}, worker {w}"
            );
        }
    }
}

/// A worker far behind (its inbox full) refuses what another worker publishes: the refusal is
/// counted against it, by reason, and every message it did take is delivered in order.
#[test]
fn a_full_inbox_refuses_publishes_and_counts_them() {
    let server = builder().threads(2).start(|_| Topics).unwrap();
    let addr = server.local_addr();
    // A subscriber on each worker (the kernel spreads connections by hash; try until both).
    let mut by_worker: BTreeMap<usize, Client> = BTreeMap::new();
    for _ in 0..64 {
        let mut c = Client::connect(addr, "/ws/flood");
        let w = whoami(&mut c);
        by_worker.entry(w).or_insert(c);
        if by_worker.len() == 2 {
            break;
        }
    }
    assert_eq!(by_worker.len(), 2, "connections reached both workers");
    let mut slow = by_worker.remove(&1).unwrap();
    let mut fast = by_worker.remove(&0).unwrap();
    slow.send_text("block");
    assert!(eventually(Duration::from_secs(5), || BLOCKED
        .load(std::sync::atomic::Ordering::Acquire)));
    let extra = 10;
    fast.send_text(&format!("spam {}", (1 << 16) + extra));
    let stats = || server.handle().stats();
    // Worker 0 publishes while worker 1 is held: its inbox takes 65,536, refuses the rest.
    assert!(
        eventually(Duration::from_secs(20), || stats()[1].refused_inbox_full
            == extra as u64),
        "{:?}",
        stats()[1]
    );
    assert_eq!(stats()[1].refused_stopping, 0);
    assert_eq!(stats()[0].refused_inbox_full, 0);
    UNBLOCK.store(true, std::sync::atomic::Ordering::Release);
    server.handle().shutdown(Duration::ZERO);
    server.join().unwrap();
    drop((slow, fast));
}
