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
//! - Nothing is lost unseen: what a node cannot send it counts (`lost`); what it sent but
//!   another node never received (killed in the broker's buffers, published while that node
//!   was not yet resubscribed) that node counts (`missed`), from gaps in the per-topic
//!   sequence numbers each message carries.
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
/// Header with the origin's sequence number of the message on its topic: `EPOCH.SEQ`, the
/// epoch in hex (see [`Sequencer`]).
const SEQ: &str = "Uproar-Seq";

/// Events the Redis bridge takes at once, and channels per SUBSCRIBE command; why 1,000: a
/// burst of new topics (a node filling up after a restart) costs a round trip per thousand,
/// and one command stays far below Redis's 1 GB query buffer limit.
const SUBSCRIBE_BATCH: usize = 1_000;

/// Topics a node keeps a sequence number for; why 65,536: as many topics as a node publishes to
/// in practice. Past it the numbers start again under a new epoch (receivers then start afresh
/// instead of counting a gap), so many one-off topics cannot grow the map without bound.
const SEQ_TOPICS: usize = 65_536;
/// Origins a receiving node tracks per topic; why 1,024: far more nodes than a cluster has,
/// while nodes restarted under fresh random ids cannot grow the map without bound.
const SEQ_ORIGINS: usize = 1_024;

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
    missed: AtomicU64,
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
    /// Messages from other nodes that never arrived here: sent to the broker by their origin
    /// (so not in its `lost`) but missing from the sequence this node received, on a topic it was
    /// subscribed to (the broker restarted with them in its buffers, or this node was not yet
    /// subscribed again). Counted when the next message from that origin on that topic arrives.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }
    /// Topics subscribed at the broker (lingering ones included).
    pub fn subscribed(&self) -> u64 {
        self.subscribed.load(Ordering::Relaxed)
    }
    fn lose(&self, why: Lost) {
        self.lost[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The sending side's sequence numbers: per topic, 1, 2, 3... for the messages this node sends to
/// the broker, under an epoch that differs between runs of the node (and changes when the map is
/// cleared), so a receiver tells "numbers started again" from "messages went missing".
struct Sequencer {
    epoch: u32,
    next: HashMap<Box<str>, u64>,
}

impl Sequencer {
    fn new() -> Sequencer {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Sequencer {
            epoch: now.subsec_nanos() ^ (now.as_secs() as u32) ^ std::process::id().rotate_left(16),
            next: HashMap::new(),
        }
    }

    /// The number of the next message on `topic`.
    fn take(&mut self, topic: &str) -> (u32, u64) {
        if self.next.len() >= SEQ_TOPICS && !self.next.contains_key(topic) {
            self.next.clear();
            self.epoch = self.epoch.wrapping_add(1);
        }
        let n = self.next.entry(topic.into()).or_insert(0);
        *n += 1;
        (self.epoch, *n)
    }

    /// The message numbered last on `topic` was not sent after all: its number is free again
    /// (its loss is counted by the sender, so the receivers must not see a gap for it).
    fn give_back(&mut self, topic: &str) {
        if let Some(n) = self.next.get_mut(topic) {
            *n -= 1;
        }
    }
}

/// The receiving side, for one topic: the last (epoch, number) seen from each origin.
#[derive(Default)]
struct Gaps {
    last: HashMap<Box<[u8]>, (u32, u64)>,
}

impl Gaps {
    /// A message from `origin` numbered (`epoch`, `seq`) arrived: how many before it went missing.
    fn arrived(&mut self, origin: &[u8], epoch: u32, seq: u64) -> u64 {
        if self.last.len() >= SEQ_ORIGINS && !self.last.contains_key(origin) {
            self.last.clear();
        }
        match self.last.insert(origin.into(), (epoch, seq)) {
            Some((e, prev)) if e == epoch && seq > prev => seq - prev - 1,
            _ => 0,
        }
    }
}

/// The most the headers of one of our NATS messages take (the epoch at most 8 hex digits, the
/// number at most 20 decimal ones): NATS counts them against its `max_payload`.
fn header_bytes(node: &str) -> usize {
    let line = |k: &str, v: usize| k.len() + 2 + v + 2;
    "NATS/1.0\r\n".len() + line(ORIGIN, node.len()) + line(KIND, 1) + line(SEQ, 8 + 1 + 20) + 2
}

/// `EPOCH.SEQ` of the [`SEQ`] header.
fn parse_seq(v: &str) -> Option<(u32, u64)> {
    let (e, n) = v.split_once('.')?;
    Some((u32::from_str_radix(e, 16).ok()?, n.parse().ok()?))
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
        let mut seqs = Sequencer::new();
        while let Some(ev) = self.rx.recv().await {
            if stats.connected() {
                // NATS counts the headers against its limit.
                let mp = client.server_info().max_payload;
                if mp > 0 {
                    self.max_payload.store(
                        mp.saturating_sub(header_bytes(&node)) as u64,
                        Ordering::Relaxed,
                    );
                }
            }
            match ev {
                Event::Publish(topic, kind, payload) => {
                    // The observer checks too, but it may not have known the limit yet.
                    let max = client.server_info().max_payload;
                    if max > 0 && payload.len() + header_bytes(&node) > max {
                        stats.lose(Lost::TooLarge);
                        continue;
                    }
                    let mut h = async_nats::HeaderMap::new();
                    h.insert(ORIGIN, node.as_str());
                    h.insert(KIND, if kind == DataKind::Text { "t" } else { "b" });
                    let (epoch, seq) = seqs.take(&topic);
                    h.insert(SEQ, format!("{epoch:x}.{seq}").as_str());
                    match client
                        .publish_with_headers(subject(&prefix, &topic), h, payload)
                        .await
                    {
                        Ok(()) => {
                            stats.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            seqs.give_back(&topic);
                            stats.lose(Lost::Disconnected);
                        }
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

/// A message on Redis, which has no headers: `U`, version 2, the kind (`t` or `b`), the origin
/// node id's length (one byte) and the id, the sequence epoch (4 bytes) and number (8 bytes,
/// big-endian; see [`Sequencer`]), then the payload as it is.
fn envelope(node: &str, kind: DataKind, (epoch, seq): (u32, u64), payload: &[u8]) -> Vec<u8> {
    let id = &node.as_bytes()[..node.len().min(255)];
    let mut v = Vec::with_capacity(16 + id.len() + payload.len());
    v.extend_from_slice(&[b'U', 2, if kind == DataKind::Text { b't' } else { b'b' }]);
    v.push(id.len() as u8);
    v.extend_from_slice(id);
    v.extend_from_slice(&epoch.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// What an [`envelope`] carries.
#[derive(Debug, PartialEq)]
struct Opened<'a> {
    origin: &'a [u8],
    kind: DataKind,
    epoch: u32,
    seq: u64,
    payload: &'a [u8],
}

/// Open an [`envelope`]; `None` if it is not one.
fn open_envelope(v: &[u8]) -> Option<Opened<'_>> {
    let (head, rest) = v.split_first_chunk::<4>()?;
    if head[..2] != [b'U', 2] {
        return None;
    }
    let kind = match head[2] {
        b't' => DataKind::Text,
        b'b' => DataKind::Binary,
        _ => return None,
    };
    let (origin, rest) = rest.split_at_checked(usize::from(head[3]))?;
    let (epoch, rest) = rest.split_first_chunk::<4>()?;
    let (seq, payload) = rest.split_first_chunk::<8>()?;
    Some(Opened {
        origin,
        kind,
        epoch: u32::from_be_bytes(*epoch),
        seq: u64::from_be_bytes(*seq),
        payload,
    })
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
        let mut seqs = Sequencer::new();
        // Per subscribed topic, the sequence seen from each origin.
        let mut gaps: HashMap<Box<str>, Gaps> = HashMap::new();
        let mut batch = Vec::with_capacity(SUBSCRIBE_BATCH);
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
                                Some(ev) => {
                                    self.redis_offline(ev, &mut topics, &mut generation);
                                    gaps.retain(|t, _| topics.contains_key(t));
                                }
                            },
                        }
                    }
                    continue;
                }
            };
            attempt = 0;
            let (mut sink, mut stream) = ps.split();
            // Every wanted topic again, SUBSCRIBE_BATCH channels per command.
            let all: Vec<String> = topics.keys().map(|t| channel(t)).collect();
            let mut ok = true;
            for chunk in all.chunks(SUBSCRIBE_BATCH) {
                if sink.subscribe(chunk.to_vec()).await.is_err() {
                    ok = false;
                    break;
                }
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
                        let Some(m) = open_envelope(msg.get_payload_bytes()) else { continue };
                        if m.origin == node.as_bytes() {
                            continue;
                        }
                        if topics.contains_key(topic.as_str()) {
                            let missed = gaps.entry(topic.as_str().into()).or_default().arrived(m.origin, m.epoch, m.seq);
                            stats.missed.fetch_add(missed, Ordering::Relaxed);
                        }
                        stats.received.fetch_add(1, Ordering::Relaxed);
                        let _ = publisher.publish_frame_local(&topic, &Frame::new(m.kind, m.payload));
                    }
                    n = self.rx.recv_many(&mut batch, SUBSCRIBE_BATCH) => {
                        if n == 0 {
                            return;
                        }
                        // Topics that became active, gathered into one SUBSCRIBE until another
                        // kind of event comes (which goes after them: order is kept).
                        let mut fresh: Vec<String> = Vec::new();
                        let mut failed = false;
                        for ev in batch.drain(..) {
                            if failed {
                                // The connection is gone: the rest as when offline.
                                self.redis_offline(ev, &mut topics, &mut generation);
                                continue;
                            }
                            if let Event::Active(topic) = &ev {
                                generation += 1;
                                if topics.insert(topic.clone(), generation).is_none() {
                                    fresh.push(channel(topic));
                                }
                                continue;
                            }
                            if !fresh.is_empty() && sink.subscribe(std::mem::take(&mut fresh)).await.is_err() {
                                failed = true;
                                self.redis_offline(ev, &mut topics, &mut generation);
                                continue;
                            }
                            let r: redis::RedisResult<()> = match ev {
                                Event::Publish(topic, kind, payload) => {
                                    let r = redis::cmd("PUBLISH")
                                        .arg(channel(&topic))
                                        .arg(envelope(&node, kind, seqs.take(&topic), &payload))
                                        .query_async::<i64>(&mut pubc)
                                        .await;
                                    match r {
                                        Ok(_) => { stats.sent.fetch_add(1, Ordering::Relaxed); Ok(()) }
                                        Err(e) => {
                                            seqs.give_back(&topic);
                                            stats.lose(Lost::Disconnected);
                                            Err(e)
                                        }
                                    }
                                }
                                // (Gathered above.)
                                Event::Active(_) => Ok(()),
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
                                        gaps.remove(&topic);
                                        stats.subscribed.store(topics.len() as u64, Ordering::Relaxed);
                                        sink.unsubscribe(channel(&topic)).await
                                    } else {
                                        Ok(())
                                    }
                                }
                            };
                            failed = r.is_err();
                        }
                        if !failed && !fresh.is_empty() {
                            failed = sink.subscribe(fresh).await.is_err();
                        }
                        stats.subscribed.store(topics.len() as u64, Ordering::Relaxed);
                        if failed {
                            gaps.retain(|t, _| topics.contains_key(t));
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
        let mut gaps = Gaps::default();
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
            let seq = headers
                .and_then(|h| h.get(SEQ))
                .and_then(|v| parse_seq(v.as_str()));
            if let (Some(origin), Some((epoch, seq))) = (origin, seq) {
                let missed = gaps.arrived(origin.as_bytes(), epoch, seq);
                stats.missed.fetch_add(missed, Ordering::Relaxed);
            }
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
        let v = envelope("node-1", DataKind::Text, (7, 42), b"hello");
        assert_eq!(
            open_envelope(&v),
            Some(Opened {
                origin: b"node-1",
                kind: DataKind::Text,
                epoch: 7,
                seq: 42,
                payload: b"hello"
            })
        );
        let v = envelope("n", DataKind::Binary, (u32::MAX, u64::MAX), b"");
        let o = open_envelope(&v).unwrap();
        assert_eq!(
            (o.origin, o.kind, o.epoch, o.seq, o.payload),
            (&b"n"[..], DataKind::Binary, u32::MAX, u64::MAX, &b""[..])
        );
        assert_eq!(open_envelope(b"plain text"), None);
        // Cut anywhere short of the payload: not an envelope.
        for cut in 0..v.len() {
            assert_eq!(open_envelope(&v[..cut]), None, "{cut}");
        }
        assert_eq!(open_envelope(&[b'U', 1, b't', 1, b'x', 0, 0, 0, 0]), None);
    }

    #[test]
    fn sequence_numbers_count_exactly_the_gaps() {
        let mut out = Sequencer::new();
        let mut g = Gaps::default();
        // 1 and 2 arrive, 3 and 4 go missing, 5 arrives: 2 missed.
        let nums: Vec<_> = (0..5).map(|_| out.take("t")).collect();
        assert_eq!(
            nums.iter().map(|n| n.1).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        let missed: Vec<u64> = [0, 1, 4]
            .iter()
            .map(|&i| g.arrived(b"a", nums[i].0, nums[i].1))
            .collect();
        assert_eq!(missed, [0, 0, 2]);
        // A number given back (the send failed, the sender counts it) is used again: no gap.
        let n6 = out.take("t");
        out.give_back("t");
        assert_eq!(out.take("t"), n6);
        assert_eq!(g.arrived(b"a", n6.0, n6.1), 0);
        // Topics and origins are counted apart.
        assert_eq!(out.take("u").1, 1);
        assert_eq!(
            g.arrived(b"b", n6.0, 9),
            0,
            "first from an origin: nothing known"
        );
        // A new epoch (the origin restarted): start afresh, no gap.
        assert_eq!(g.arrived(b"a", n6.0.wrapping_add(1), 100), 0);
        assert_eq!(g.arrived(b"a", n6.0.wrapping_add(1), 101), 0);
        // A repeat or an older number counts nothing.
        assert_eq!(g.arrived(b"a", n6.0.wrapping_add(1), 101), 0);
        assert_eq!(parse_seq("1f.42"), Some((31, 42)));
        assert_eq!(parse_seq("x.1"), None);
        assert_eq!(parse_seq("12"), None);
    }

    #[test]
    fn the_sequencer_forgets_topics_past_its_bound_under_a_new_epoch() {
        let mut out = Sequencer::new();
        let e0 = out.take("t0").0;
        for i in 1..SEQ_TOPICS {
            out.take(&format!("t{i}"));
        }
        assert_eq!(out.next.len(), SEQ_TOPICS);
        let (e1, n) = out.take("one more");
        assert_eq!((e1, n), (e0.wrapping_add(1), 1));
        assert_eq!(out.next.len(), 1);
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
