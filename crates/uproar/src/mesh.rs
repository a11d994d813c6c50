//! The mesh between workers: what every worker and every [`Publisher`](crate::Publisher)
//! shares. Each worker has an inbox of publishes made elsewhere (another worker's callback, a
//! `POST /publish` answered by another worker, a `Publisher` on some thread) and a waker its
//! driver listens to; the node keeps one table of how many subscribers each topic has over all
//! workers. Nothing here is on the per-delivery path: a publish takes each other worker's
//! inbox lock once, a subscribe or unsubscribe takes the topic table's lock once.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Config, Driver};
use crate::message::Frame;
use crate::stats::Published;

/// Most messages waiting in one worker's inbox; why 65,536: a worker drains its whole inbox
/// every loop turn, so a full inbox means it is far behind, and this bounds what a publisher
/// can make it hold (65,536 shared frames).
pub(crate) const MAX_INBOX: usize = 1 << 16;

/// A publish from another worker (or a [`Publisher`](crate::Publisher)): the topic and the
/// frame, shared.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    pub(crate) topic: Arc<str>,
    pub(crate) frame: Frame,
}

/// Why a worker's inbox refused a message: that worker's subscribers miss it, so every
/// refusal is counted (per refusing worker, by reason) and shows in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The inbox already holds [`MAX_INBOX`] messages: the worker is far behind.
    InboxFull = 0,
    /// The server is shutting down.
    Stopping = 1,
}

/// How a driver is woken from another thread.
#[derive(Debug)]
pub(crate) enum Waker {
    /// An eventfd the io_uring driver keeps a read armed on.
    EventFd(OwnedFd),
    /// mio's waker (an eventfd registered with the worker's epoll on Linux, a kqueue user
    /// event elsewhere).
    Mio(mio::Waker),
    /// Nothing to wake: the lifecycle simulator drains inboxes itself.
    #[cfg(any(test, fuzzing))]
    Null,
}

impl Waker {
    pub(crate) fn wake(&self) {
        match self {
            Waker::EventFd(fd) => crate::sys::eventfd_signal(fd.as_raw_fd()),
            Waker::Mio(w) => {
                // Fails only if the poll is gone, i.e. the worker has exited.
                let _ = w.wake();
            }
            #[cfg(any(test, fuzzing))]
            Waker::Null => {}
        }
    }

    /// The eventfd, for the io_uring driver's read.
    pub(crate) fn raw_fd(&self) -> Option<RawFd> {
        match self {
            Waker::EventFd(fd) => Some(fd.as_raw_fd()),
            _ => None,
        }
    }
}

/// State shared by the workers and every [`Handle`](crate::Handle).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    /// The driver the workers run (never `Auto`).
    pub(crate) driver: Driver,
    pub(crate) stop: AtomicBool,
    pub(crate) grace_nanos: AtomicU64,
    /// One per worker, to wake it.
    pub(crate) wakers: Vec<Waker>,
    /// Open connections over all workers, against `max_connections`.
    pub(crate) open: AtomicUsize,
    /// Per worker, messages published elsewhere for its subscribers.
    inboxes: Vec<Mutex<Vec<Remote>>>,
    /// Per worker, messages its inbox refused, by [`Refused`] reason.
    refused: Vec<[AtomicU64; 2]>,
    /// Per worker, its counters as of its last loop turn.
    pub(crate) published_stats: Vec<Published>,
    /// Subscribers per topic over all workers of this node.
    topics: Mutex<HashMap<Box<str>, usize>>,
    /// The TLS configuration new connections get, on a TLS listener.
    pub(crate) tls: Option<crate::tls::TlsSource>,
    /// Told of topics becoming active or idle on this node, and of publishes made here.
    pub(crate) observer: Option<Arc<dyn NodeObserver>>,
}

/// What a node-level component (a broker bridge: `uproar-cluster`) is told, from the workers'
/// threads and from [`Publisher`](crate::Publisher)s' threads. Calls must be quick (hand the
/// event to another thread): they run on the hot path of the thread that caused them.
pub trait NodeObserver: Send + Sync + 'static {
    /// `topic` got its first subscriber on this node (over all workers).
    fn topic_active(&self, topic: &str);
    /// The last subscriber of `topic` on this node left.
    fn topic_idle(&self, topic: &str);
    /// A message was published on this node (by a handler, or a `Publisher`), once, on the
    /// thread that published it; not for [`Publisher::publish_frame_local`] (messages that
    /// came from elsewhere).
    ///
    /// [`Publisher::publish_frame_local`]: crate::Publisher::publish_frame_local
    fn published(&self, topic: &str, frame: &crate::Frame);
}

impl std::fmt::Debug for dyn NodeObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeObserver")
    }
}

impl Shared {
    pub(crate) fn new(config: Arc<Config>, driver: Driver, wakers: Vec<Waker>) -> Shared {
        let n = wakers.len();
        let tls = config.tls.clone().map(crate::tls::TlsSource::new);
        let observer = config.observer.clone();
        Shared {
            config,
            driver,
            stop: AtomicBool::new(false),
            grace_nanos: AtomicU64::new(0),
            wakers,
            open: AtomicUsize::new(0),
            inboxes: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
            refused: (0..n).map(|_| Default::default()).collect(),
            published_stats: (0..n).map(|_| Default::default()).collect(),
            topics: Mutex::new(HashMap::new()),
            tls,
            observer,
        }
    }

    /// Workers.
    pub(crate) fn workers(&self) -> usize {
        self.inboxes.len()
    }

    /// Count a new connection, unless that would pass `max_connections`.
    pub(crate) fn acquire_conn(&self) -> bool {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.config.max_connections).then_some(n + 1)
            })
            .is_ok()
    }

    pub(crate) fn release_conn(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Hand `remote` to `worker`'s inbox, waking it if the inbox was empty (a non-empty inbox
    /// has a wake-up pending already). Order per sender is kept: the inbox is FIFO. Refused
    /// once the server is stopping, or when the inbox already holds [`MAX_INBOX`] messages
    /// (that worker is not keeping up; memory stays bounded); a refusal is counted here, and
    /// the caller must still say so to its own caller.
    #[must_use = "a refused post means that worker's subscribers miss the message"]
    pub(crate) fn post(&self, worker: usize, remote: Remote) -> Result<(), Refused> {
        let refused = if self.stop.load(Ordering::Relaxed) {
            Refused::Stopping
        } else {
            let was_empty = {
                let mut q = lock(&self.inboxes[worker]);
                if q.len() < MAX_INBOX {
                    q.push(remote);
                    Some(q.len() == 1)
                } else {
                    None
                }
            };
            match was_empty {
                Some(was_empty) => {
                    if was_empty {
                        self.wakers[worker].wake();
                    }
                    return Ok(());
                }
                None => Refused::InboxFull,
            }
        };
        self.refused[worker][refused as usize].fetch_add(1, Ordering::Relaxed);
        Err(refused)
    }

    /// Take everything in `worker`'s inbox.
    pub(crate) fn drain(&self, worker: usize) -> Vec<Remote> {
        std::mem::take(&mut *lock(&self.inboxes[worker]))
    }

    /// Messages `worker`'s inbox refused: (inbox full, stopping).
    pub(crate) fn refused(&self, worker: usize) -> (u64, u64) {
        let r = &self.refused[worker];
        (
            r[Refused::InboxFull as usize].load(Ordering::Relaxed),
            r[Refused::Stopping as usize].load(Ordering::Relaxed),
        )
    }

    /// Every worker's counters as of its last loop turn.
    pub(crate) fn stats(&self) -> Vec<crate::stats::WorkerStats> {
        (0..self.workers()).map(|w| self.stats_of(w)).collect()
    }

    pub(crate) fn stats_of(&self, worker: usize) -> crate::stats::WorkerStats {
        let mut s = self.published_stats[worker].load();
        (s.refused_inbox_full, s.refused_stopping) = self.refused(worker);
        s
    }

    /// A subscriber joined `topic` on some worker.
    pub(crate) fn topic_joined(&self, topic: &str) {
        let mut t = lock(&self.topics);
        match t.get_mut(topic) {
            Some(n) => *n += 1,
            None => {
                t.insert(topic.into(), 1);
                // Under the lock: the observer sees active and idle in the order they
                // happened, whatever the workers.
                if let Some(o) = &self.observer {
                    o.topic_active(topic);
                }
            }
        }
    }

    /// Subscribers left `topics` on some worker (one each).
    pub(crate) fn topics_left<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        let mut t = lock(&self.topics);
        for topic in topics {
            if let Some(n) = t.get_mut(topic) {
                *n -= 1;
                if *n == 0 {
                    t.remove(topic);
                    if let Some(o) = &self.observer {
                        o.topic_idle(topic);
                    }
                }
            }
        }
    }

    /// Subscribers of `topic` over all workers of this node.
    pub(crate) fn node_subscribers(&self, topic: &str) -> usize {
        lock(&self.topics).get(topic).copied().unwrap_or(0)
    }
}

/// A poisoned lock (a worker panicked while holding it) still guards consistent data: every
/// critical section here is a push, a take or a counter update.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
