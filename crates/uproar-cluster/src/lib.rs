//! # uproar-cluster: uproar nodes sharing topics through NATS
//!
//! A bridge between one node (an uproar server) and a NATS cluster, so that a message
//! published on any node reaches the subscribers of every node. It runs the broker client on
//! its own thread (a tokio current-thread runtime) and meets the engine through public pieces
//! only: it is the engine's [`NodeObserver`] (told when a topic gets its first subscriber on
//! the node and when its last leaves, and of every publish made on the node) and it delivers
//! what comes from the broker with [`Publisher::publish_frame_local`].
//!
//! - A node subscribes at the broker only to topics with subscribers on the node: the first
//!   local subscriber subscribes; the last one leaving unsubscribes after a linger, so churn
//!   does not thrash the broker.
//! - A publish is delivered locally at once (by the engine) and sent to the broker once,
//!   tagged with the origin node's id (a header); each node drops its own messages when they
//!   come back.
//! - Messages keep their kind (a header) and their exact bytes. Order: **at most once across
//!   nodes, in order per publisher** (one bridge thread, one NATS connection per node, and
//!   NATS keeps the order of one connection's messages to each subscriber).
//! - Broker down: local delivery goes on; messages for other nodes are counted as lost (never
//!   queued without bound); the client reconnects with backoff and resubscribes.
//!
//! See `docs/cluster.md`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use uproar::{DataKind, Frame, NodeObserver, Publisher};

/// Header naming the node a message was published on.
const ORIGIN: &str = "Uproar-Origin";
/// Header saying whether the message is text (`t`) or binary (`b`).
const KIND: &str = "Uproar-Kind";

/// Events waiting for the bridge thread; why 65,536: a burst of publishes during a broker
/// hiccup fits, and a stalled bridge costs at most this many messages' references (the
/// payloads are shared with the engine's frames), after which publishes are counted as lost.
const QUEUE: usize = 65_536;

/// How the bridge connects.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:port`), several for a cluster: the client fails over;
    /// or one Redis URL (`redis://host:port`): Redis pub/sub.
    pub servers: Vec<String>,
    /// This node's id: tags what it publishes. Unique per node.
    pub node_id: String,
    /// Subjects are `{prefix}.{escaped topic}`. Default `uproar`.
    pub prefix: String,
    /// How long a topic without local subscribers stays subscribed at the broker. Default 2 s:
    /// a page reload (unsubscribe, subscribe again) does not reach the broker.
    pub linger: Duration,
}

impl ClusterConfig {
    /// Defaults for `servers` and `node_id`.
    pub fn new(servers: Vec<String>, node_id: String) -> ClusterConfig {
        ClusterConfig {
            servers,
            node_id,
            prefix: "uproar".into(),
            linger: Duration::from_secs(2),
        }
    }
}

/// Why a message for other nodes was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The broker connection was down.
    Disconnected,
    /// Larger than the broker's maximum payload.
    TooLarge,
    /// The bridge's queue was full (the bridge thread is behind).
    QueueFull,
}

impl Lost {
    /// Every reason, in the order of [`ClusterStats::lost`].
    pub const ALL: [Lost; 3] = [Lost::Disconnected, Lost::TooLarge, Lost::QueueFull];

    /// A label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Lost::Disconnected => "disconnected",
            Lost::TooLarge => "too_large",
            Lost::QueueFull => "queue_full",
        }
    }
}

/// The bridge's state and counters, readable from any thread.
#[derive(Debug, Default)]
pub struct ClusterStats {
    connected: AtomicBool,
    reconnects: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    lost: [AtomicU64; 3],
    subscribed: AtomicU64,
}

impl ClusterStats {
    /// The broker connection is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    /// Connections re-established after a loss.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
    /// Messages sent to the broker.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    /// Messages from other nodes delivered here.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    /// Messages for other nodes lost, by reason (in the order of [`Lost::ALL`]).
    pub fn lost(&self, why: Lost) -> u64 {
        self.lost[why as usize].load(Ordering::Relaxed)
    }
    /// Topics subscribed at the broker (lingering ones included).
    pub fn subscribed(&self) -> u64 {
        self.subscribed.load(Ordering::Relaxed)
    }
    fn lose(&self, why: Lost) {
        self.lost[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

enum Event {
    Active(Box<str>),
    Idle(Box<str>),
    Publish(Box<str>, DataKind, Bytes),
    /// The linger of a topic ended (generation: stale if it became active since).
    Unsubscribe(Box<str>, u64),
}

/// The engine's side of the bridge: give it to `Server::builder().observer(..)`, start the
/// server, then [`start`](Self::start) the bridge with the server's `Publisher`.
#[derive(Debug, Clone)]
pub struct Bridge {
    tx: mpsc::Sender<Event>,
    stats: Arc<ClusterStats>,
    max_payload: Arc<AtomicU64>,
}

/// What [`Bridge::new`] returns besides the observer: the half that runs the bridge.
#[derive(Debug)]
pub struct BridgeRunner {
    rx: mpsc::Receiver<Event>,
    tx: mpsc::Sender<Event>,
    stats: Arc<ClusterStats>,
    max_payload: Arc<AtomicU64>,
    config: ClusterConfig,
}

impl Bridge {
    /// A bridge for `config`: the observer to give the engine, and the runner.
    pub fn new(config: ClusterConfig) -> (Bridge, BridgeRunner) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(ClusterStats::default());
        let max_payload = Arc::new(AtomicU64::new(u64::MAX));
        (
            Bridge {
                tx: tx.clone(),
                stats: stats.clone(),
                max_payload: max_payload.clone(),
            },
            BridgeRunner {
                rx,
                tx,
                stats,
                max_payload,
                config,
            },
        )
    }

    /// The bridge's counters.
    pub fn stats(&self) -> Arc<ClusterStats> {
        self.stats.clone()
    }
}

impl NodeObserver for Bridge {
    fn topic_active(&self, topic: &str) {
        // Subscription changes must not be lost: wait for room (the bridge thread never
        // blocks on the engine, so this cannot deadlock).
        let _ = self.tx.blocking_send(Event::Active(topic.into()));
    }

    fn topic_idle(&self, topic: &str) {
        let _ = self.tx.blocking_send(Event::Idle(topic.into()));
    }

    fn published(&self, topic: &str, frame: &Frame) {
        if !self.stats.connected() {
            self.stats.lose(Lost::Disconnected);
            return;
        }
        if frame.payload().len() as u64 > self.max_payload.load(Ordering::Relaxed) {
            self.stats.lose(Lost::TooLarge);
            tracing::warn!(
                topic,
                bytes = frame.payload().len(),
                "message larger than the broker's max_payload: delivered on this node only"
            );
            return;
        }
        let ev = Event::Publish(topic.into(), frame.kind(), frame.payload_bytes());
        if self.tx.try_send(ev).is_err() {
            self.stats.lose(Lost::QueueFull);
        }
    }
}

/// The NATS subject of `topic`: `{prefix}.` then the topic with every byte outside
/// `A-Z a-z 0-9 _ -` written `~HH` (hex), so `.` (NATS's token separator), `:`, `*` and `>`
/// (wildcards) never reach the subject as themselves, and distinct topics stay distinct.
pub fn subject(prefix: &str, topic: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 1 + topic.len());
    s.push_str(prefix);
    s.push('.');
    for b in topic.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            s.push(b as char);
        } else {
            s.push_str(&format!("~{b:02X}"));
        }
    }
    if topic.is_empty() {
        s.push('~');
    }
    s
}

/// The topic of a subject made by [`subject`].
pub fn topic_of(prefix: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    if rest == "~" {
        return Some(String::new());
    }
    let mut out = Vec::with_capacity(rest.len());
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'~' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl BridgeRunner {
    /// Run the bridge on its own thread (a tokio current-thread runtime) until the process
    /// ends; messages from other nodes are delivered with `publisher`.
    pub fn start(self, publisher: Publisher) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("uproar-cluster".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cluster bridge: no runtime");
                        return;
                    }
                };
                if self
                    .config
                    .servers
                    .iter()
                    .any(|s| s.starts_with("redis://"))
                {
                    rt.block_on(self.run_redis(publisher));
                } else {
                    rt.block_on(self.run(publisher));
                }
            })
    }

    async fn run(mut self, publisher: Publisher) {
        let stats = self.stats.clone();
        let ever = Arc::new(AtomicBool::new(false));
        let opts = async_nats::ConnectOptions::new()
            .name(&self.config.node_id)
            .retry_on_initial_connect()
            .max_reconnects(None)
            // Backoff: 100 ms, doubling, at most 5 s.
            .reconnect_delay_callback(|n| {
                Duration::from_millis(100u64.saturating_mul(1 << n.min(6))).min(Duration::from_secs(5))
            })
            .event_callback({
                let stats = stats.clone();
                let ever = ever.clone();
                move |ev| {
                    let stats = stats.clone();
                    let ever = ever.clone();
                    async move {
                        match ev {
                            async_nats::Event::Connected => {
                                stats.connected.store(true, Ordering::Relaxed);
                                if ever.swap(true, Ordering::Relaxed) {
                                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                                }
                                tracing::info!("cluster: connected to the broker");
                            }
                            async_nats::Event::Disconnected | async_nats::Event::Closed => {
                                stats.connected.store(false, Ordering::Relaxed);
                                tracing::warn!(
                                    "cluster: broker connection lost; local delivery goes on, messages for other nodes are counted as lost"
                                );
                            }
                            other => tracing::info!(event = %other, "cluster: broker event"),
                        }
                    }
                }
            });
        let servers: Vec<async_nats::ServerAddr> = self
            .config
            .servers
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let client = match opts.connect(servers).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cluster: cannot connect to the broker");
                return;
            }
        };
        // retry_on_initial_connect returns before the first connection: the callback sets
        // `connected`, and the max payload is read once known.
        let prefix = self.config.prefix.clone();
        let node = self.config.node_id.clone();
        // Topic -> (generation, subscription task).
        let mut subs: HashMap<Box<str>, (u64, Option<tokio::task::JoinHandle<()>>)> =
            HashMap::new();
        let mut generation = 0u64;
        while let Some(ev) = self.rx.recv().await {
            if stats.connected() {
                let mp = client.server_info().max_payload as u64;
                if mp > 0 {
                    self.max_payload.store(mp, Ordering::Relaxed);
                }
            }
            match ev {
                Event::Publish(topic, kind, payload) => {
                    let mut h = async_nats::HeaderMap::new();
                    h.insert(ORIGIN, node.as_str());
                    h.insert(KIND, if kind == DataKind::Text { "t" } else { "b" });
                    match client
                        .publish_with_headers(subject(&prefix, &topic), h, payload)
                        .await
                    {
                        Ok(()) => {
                            stats.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => stats.lose(Lost::Disconnected),
                    }
                }
                Event::Active(topic) => {
                    generation += 1;
                    match subs.get_mut(&topic) {
                        // Lingering: still subscribed; the pending unsubscribe is now stale.
                        Some(entry) => entry.0 = generation,
                        None => {
                            let task =
                                subscribe(&client, &prefix, &topic, &node, &publisher, &stats)
                                    .await;
                            subs.insert(topic, (generation, task));
                            stats.subscribed.store(subs.len() as u64, Ordering::Relaxed);
                        }
                    }
                }
                Event::Idle(topic) => {
                    if let Some(entry) = subs.get_mut(&topic) {
                        generation += 1;
                        entry.0 = generation;
                        let tx = self.tx.clone();
                        let linger = self.config.linger;
                        let g = generation;
                        tokio::spawn(async move {
                            tokio::time::sleep(linger).await;
                            let _ = tx.send(Event::Unsubscribe(topic, g)).await;
                        });
                    }
                }
                Event::Unsubscribe(topic, g) => {
                    if subs.get(&topic).is_some_and(|e| e.0 == g) {
                        if let Some((_, Some(task))) = subs.remove(&topic) {
                            // Dropping the subscriber unsubscribes at the broker.
                            task.abort();
                        }
                        stats.subscribed.store(subs.len() as u64, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// A message on Redis, which has no headers: `U`, version 1, the kind (`t` or `b`), the origin
/// node id's length (one byte) and the id, then the payload as it is.
fn envelope(node: &str, kind: DataKind, payload: &[u8]) -> Vec<u8> {
    let id = &node.as_bytes()[..node.len().min(255)];
    let mut v = Vec::with_capacity(4 + id.len() + payload.len());
    v.extend_from_slice(&[b'U', 1, if kind == DataKind::Text { b't' } else { b'b' }]);
    v.push(id.len() as u8);
    v.extend_from_slice(id);
    v.extend_from_slice(payload);
    v
}

/// The origin, kind and payload of an [`envelope`]; `None` if it is not one.
fn open_envelope(v: &[u8]) -> Option<(&[u8], DataKind, &[u8])> {
    let (head, rest) = v.split_first_chunk::<4>()?;
    if head[..2] != [b'U', 1] {
        return None;
    }
    let kind = match head[2] {
        b't' => DataKind::Text,
        b'b' => DataKind::Binary,
        _ => return None,
    };
    let n = usize::from(head[3]);
    (rest.len() >= n).then(|| (&rest[..n], kind, &rest[n..]))
}

impl BridgeRunner {
    /// Redis pub/sub: one connection subscribing (split into a sink that subscribes and a stream
    /// of messages), one publishing. Channels are `{prefix}.{topic}`. On any error both are
    /// dropped and made again with backoff, and every topic with local subscribers is
    /// subscribed again.
    async fn run_redis(mut self, publisher: Publisher) {
        let stats = self.stats.clone();
        let url = self.config.servers[0].clone();
        let node = self.config.node_id.clone();
        let prefix = self.config.prefix.clone();
        let channel = |t: &str| format!("{prefix}.{t}");
        let client = match redis::Client::open(url.as_str()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cluster: bad Redis URL");
                return;
            }
        };
        // Topic -> generation (for the linger), subscribed or wanted.
        let mut topics: HashMap<Box<str>, u64> = HashMap::new();
        let mut generation = 0u64;
        let mut attempt = 0u32;
        let mut ever = false;
        loop {
            let conns = async {
                let ps = client.get_async_pubsub().await?;
                let pubc = client.get_multiplexed_async_connection().await?;
                Ok::<_, redis::RedisError>((ps, pubc))
            }
            .await;
            let (ps, mut pubc) = match conns {
                Ok(c) => c,
                Err(e) => {
                    attempt += 1;
                    let wait = Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)))
                        .min(Duration::from_secs(5));
                    tracing::debug!(error = %e, ?wait, "cluster: Redis unreachable");
                    // Keep the wanted topics current meanwhile; publishes are counted as lost by
                    // the observer (not connected).
                    let deadline = tokio::time::sleep(wait);
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            _ = &mut deadline => break,
                            ev = self.rx.recv() => match ev {
                                None => return,
                                Some(ev) => self.redis_offline(ev, &mut topics, &mut generation),
                            },
                        }
                    }
                    continue;
                }
            };
            attempt = 0;
            let (mut sink, mut stream) = ps.split();
            let mut ok = true;
            for t in topics.keys() {
                ok &= sink.subscribe(channel(t)).await.is_ok();
            }
            if !ok {
                continue;
            }
            stats
                .subscribed
                .store(topics.len() as u64, Ordering::Relaxed);
            stats.connected.store(true, Ordering::Relaxed);
            if std::mem::replace(&mut ever, true) {
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!("cluster: connected to Redis");
            loop {
                tokio::select! {
                    msg = stream.next() => {
                        let Some(msg) = msg else { break };
                        let Some(topic) = msg.get_channel_name().strip_prefix(&format!("{prefix}.")).map(str::to_owned) else { continue };
                        let Some((origin, kind, payload)) = open_envelope(msg.get_payload_bytes()) else { continue };
                        if origin == node.as_bytes() {
                            continue;
                        }
                        stats.received.fetch_add(1, Ordering::Relaxed);
                        let _ = publisher.publish_frame_local(&topic, &Frame::new(kind, payload));
                    }
                    ev = self.rx.recv() => {
                        let Some(ev) = ev else { return };
                        let r: redis::RedisResult<()> = match ev {
                            Event::Publish(topic, kind, payload) => {
                                let r = redis::cmd("PUBLISH")
                                    .arg(channel(&topic))
                                    .arg(envelope(&node, kind, &payload))
                                    .query_async::<i64>(&mut pubc)
                                    .await;
                                match r {
                                    Ok(_) => { stats.sent.fetch_add(1, Ordering::Relaxed); Ok(()) }
                                    Err(e) => { stats.lose(Lost::Disconnected); Err(e) }
                                }
                            }
                            Event::Active(topic) => {
                                generation += 1;
                                let fresh = topics.insert(topic.clone(), generation).is_none();
                                stats.subscribed.store(topics.len() as u64, Ordering::Relaxed);
                                if fresh { sink.subscribe(channel(&topic)).await } else { Ok(()) }
                            }
                            Event::Idle(topic) => {
                                if let Some(g) = topics.get_mut(&topic) {
                                    generation += 1;
                                    *g = generation;
                                    self.linger(topic, generation);
                                }
                                Ok(())
                            }
                            Event::Unsubscribe(topic, g) => {
                                if topics.get(&topic) == Some(&g) {
                                    topics.remove(&topic);
                                    stats.subscribed.store(topics.len() as u64, Ordering::Relaxed);
                                    sink.unsubscribe(channel(&topic)).await
                                } else {
                                    Ok(())
                                }
                            }
                        };
                        if r.is_err() {
                            break;
                        }
                    }
                }
            }
            stats.connected.store(false, Ordering::Relaxed);
            tracing::warn!(
                "cluster: Redis connection lost; local delivery goes on, messages for other nodes are counted as lost"
            );
        }
    }

    /// An event while Redis is unreachable: only the wanted topics change.
    fn redis_offline(&self, ev: Event, topics: &mut HashMap<Box<str>, u64>, generation: &mut u64) {
        match ev {
            Event::Publish(..) => self.stats.lose(Lost::Disconnected),
            Event::Active(topic) => {
                *generation += 1;
                topics.insert(topic, *generation);
            }
            Event::Idle(topic) => {
                if let Some(g) = topics.get_mut(&topic) {
                    *generation += 1;
                    *g = *generation;
                    self.linger(topic, *generation);
                }
            }
            Event::Unsubscribe(topic, g) => {
                if topics.get(&topic) == Some(&g) {
                    topics.remove(&topic);
                }
            }
        }
        self.stats
            .subscribed
            .store(topics.len() as u64, Ordering::Relaxed);
    }

    /// After the linger, unsubscribe `topic` unless it became active again since.
    fn linger(&self, topic: Box<str>, generation: u64) {
        let tx = self.tx.clone();
        let linger = self.config.linger;
        tokio::spawn(async move {
            tokio::time::sleep(linger).await;
            let _ = tx.send(Event::Unsubscribe(topic, generation)).await;
        });
    }
}

/// Subscribe to `topic` at the broker; the task delivering its messages here.
async fn subscribe(
    client: &async_nats::Client,
    prefix: &str,
    topic: &str,
    node: &str,
    publisher: &Publisher,
    stats: &Arc<ClusterStats>,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut sub = match client.subscribe(subject(prefix, topic)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(topic, error = %e, "cluster: subscribe");
            return None;
        }
    };
    let (node, topic, publisher, stats) = (
        node.to_owned(),
        topic.to_owned(),
        publisher.clone(),
        stats.clone(),
    );
    Some(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let headers = msg.headers.as_ref();
            let origin = headers.and_then(|h| h.get(ORIGIN)).map(|v| v.as_str());
            if origin == Some(node.as_str()) {
                continue;
            }
            let kind = match headers.and_then(|h| h.get(KIND)).map(|v| v.as_str()) {
                Some("t") => DataKind::Text,
                _ => DataKind::Binary,
            };
            stats.received.fetch_add(1, Ordering::Relaxed);
            let _ = publisher.publish_frame_local(&topic, &Frame::new(kind, &msg.payload));
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_envelopes_round_trip_and_refuse_other_bytes() {
        let v = envelope("node-1", DataKind::Text, b"hello");
        assert_eq!(
            open_envelope(&v),
            Some((&b"node-1"[..], DataKind::Text, &b"hello"[..]))
        );
        let v = envelope("n", DataKind::Binary, b"");
        assert_eq!(
            open_envelope(&v),
            Some((&b"n"[..], DataKind::Binary, &b""[..]))
        );
        assert_eq!(open_envelope(b"plain text"), None);
        assert_eq!(open_envelope(&[b'U', 1, b't', 9, b'x']), None);
    }

    #[test]
    fn subjects_escape_separators_and_wildcards_and_round_trip() {
        assert_eq!(subject("uproar", "news"), "uproar.news");
        assert_eq!(subject("uproar", "a.b:c"), "uproar.a~2Eb~3Ac");
        assert_eq!(subject("p", "x*>~"), "p.x~2A~3E~7E");
        for t in ["news", "a.b:c", "x*>~", "", "~2E", "é"] {
            assert_eq!(
                topic_of("uproar", &subject("uproar", t)).as_deref(),
                Some(t),
                "{t}"
            );
        }
        // Distinct topics, distinct subjects.
        assert_ne!(subject("u", "a.b"), subject("u", "a~2Eb"));
        assert_eq!(topic_of("other", "uproar.x"), None);
    }
}
