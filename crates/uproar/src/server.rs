//! Starting and stopping a server: listeners, worker threads, the [`Handle`].

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::app::{Frame, Handler};
use crate::config::{BackpressurePolicy, Config};
use crate::error::Error;
use crate::sys;
use crate::worker::Worker;
use uproar_wire::DataKind;

/// State shared by the workers and every [`Handle`].
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) stop: AtomicBool,
    pub(crate) grace_nanos: AtomicU64,
    /// One eventfd per worker, to wake it.
    pub(crate) wakers: Vec<OwnedFd>,
    /// Open connections over all workers, against `max_connections`.
    open: AtomicUsize,
    /// Per worker, messages published elsewhere for its subscribers.
    pub(crate) inboxes: Vec<Mutex<Vec<Remote>>>,
    /// Per worker, its counters as of its last loop turn.
    pub(crate) published_stats: Vec<crate::stats::Published>,
}

/// Most messages waiting in one worker's inbox; why 65,536: a worker drains its whole inbox
/// every loop turn, so a full inbox means it is far behind, and this bounds what a publisher
/// can make it hold (65,536 shared frames).
pub(crate) const MAX_INBOX: usize = 1 << 16;

/// A publish from another worker (or a [`Publisher`]): the topic and the frame, shared.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    pub(crate) topic: std::sync::Arc<str>,
    pub(crate) frame: Frame,
}

impl Shared {
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
    /// (false) once the server is stopping, or when the inbox already holds [`MAX_INBOX`]
    /// messages (that worker is not keeping up; memory stays bounded).
    pub(crate) fn post(&self, worker: usize, remote: Remote) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        let was_empty = {
            let mut q = self.inboxes[worker]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if q.len() >= MAX_INBOX {
                return false;
            }
            q.push(remote);
            q.len() == 1
        };
        if was_empty {
            sys::eventfd_signal(self.wakers[worker].as_raw_fd());
        }
        true
    }

    /// Every worker's counters as of its last loop turn.
    pub(crate) fn stats(&self) -> Vec<crate::stats::WorkerStats> {
        self.published_stats.iter().map(|p| p.load()).collect()
    }

    /// Take everything in `worker`'s inbox.
    pub(crate) fn drain(&self, worker: usize) -> Vec<Remote> {
        std::mem::take(
            &mut *self.inboxes[worker]
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }
}

/// Builds a [`Server`]: the address, the limits, then [`start`](Builder::start) with the
/// handler factory.
#[derive(Debug, Clone)]
pub struct Builder {
    addr: SocketAddr,
    config: Config,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty,)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, v: $ty) -> Builder {
                self.config.$name = v;
                self
            }
        )*
    };
}

impl Builder {
    /// Listen on `addr` (default `127.0.0.1:9001`). Port 0 picks a free port, the same for
    /// every worker; [`Server::local_addr`] tells which.
    pub fn listen(mut self, addr: SocketAddr) -> Builder {
        self.addr = addr;
        self
    }

    /// Replace the whole configuration.
    pub fn config(mut self, config: Config) -> Builder {
        self.config = config;
        self
    }

    setters! {
        /// See [`Config::threads`].
        threads: usize,
        /// See [`Config::pin_threads`].
        pin_threads: bool,
        /// See [`Config::max_frame_size`].
        max_frame_size: u64,
        /// See [`Config::max_message_size`].
        max_message_size: u64,
        /// See [`Config::max_header_bytes`].
        max_header_bytes: usize,
        /// See [`Config::max_body_bytes`].
        max_body_bytes: usize,
        /// See [`Config::handshake_timeout`].
        handshake_timeout: Duration,
        /// See [`Config::idle_timeout`].
        idle_timeout: Option<Duration>,
        /// See [`Config::close_timeout`].
        close_timeout: Duration,
        /// See [`Config::max_connections`].
        max_connections: usize,
        /// See [`Config::max_buffered_bytes`].
        max_buffered_bytes: usize,
        /// See [`Config::backpressure`].
        backpressure: BackpressurePolicy,
        /// See [`Config::recv_buffer_size`].
        recv_buffer_size: u32,
        /// See [`Config::recv_buffers`].
        recv_buffers: u16,
        /// See [`Config::prefault_buffers`].
        prefault_buffers: bool,
        /// See [`Config::ring_entries`].
        ring_entries: u32,
    }

    /// Start the workers. `factory(worker_index)` runs on each worker's thread and makes its
    /// handler. Returns once every worker is listening, or with the first error.
    pub fn start<H, F>(self, factory: F) -> Result<Server, Error>
    where
        H: Handler,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        let cfg = self.config;
        cfg.validate()?;
        check_kernel()?;
        let (_, hard) = sys::raise_nofile().map_err(|e| Error::Io("getrlimit", e))?;
        // Per worker: the listener, the ring, the eventfd; plus stdio and slack.
        let needed = cfg.max_connections as u64 + 4 * cfg.threads as u64 + 16;
        if needed > hard {
            return Err(Error::FdLimit { needed, hard });
        }
        let listeners = bind_all(self.addr, cfg.threads, cfg.backlog)?;
        let local_addr = listeners[0]
            .local_addr()
            .map_err(|e| Error::Io("getsockname", e))?;
        let wakers = (0..cfg.threads)
            .map(|_| sys::eventfd())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Io("eventfd", e))?;
        let shared = Arc::new(Shared {
            config: Arc::new(cfg.clone()),
            stop: AtomicBool::new(false),
            grace_nanos: AtomicU64::new(0),
            inboxes: (0..cfg.threads).map(|_| Mutex::new(Vec::new())).collect(),
            published_stats: (0..cfg.threads).map(|_| Default::default()).collect(),
            wakers,
            open: AtomicUsize::new(0),
        });
        let handle = Handle {
            shared: shared.clone(),
            local_addr,
        };
        let cores = if cfg.pin_threads {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let factory = Arc::new(factory);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), Error>>();
        let mut threads = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let shared = shared.clone();
            let factory = factory.clone();
            let ready = ready_tx.clone();
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            let t = std::thread::Builder::new()
                .name(format!("uproar-{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let worker = match Worker::new(i, factory(i), listener, shared) {
                        Ok(w) => {
                            let _ = ready.send(Ok(()));
                            w
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return Ok(());
                        }
                    };
                    drop(ready);
                    worker.run()
                })
                .map_err(|e| Error::Io("spawning a worker thread", e))?;
            threads.push(t);
        }
        drop(ready_tx);
        let server = Server { handle, threads };
        for _ in 0..cfg.threads {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    server.handle.shutdown(Duration::ZERO);
                    let _ = server.join();
                    return Err(e);
                }
                Err(_) => {
                    server.handle.shutdown(Duration::ZERO);
                    let _ = server.join();
                    return Err(Error::WorkerPanicked);
                }
            }
        }
        Ok(server)
    }
}

/// Multishot recv (the engine's receive path) arrived in Linux 6.0.
fn check_kernel() -> Result<(), Error> {
    const NEEDED: (u32, u32) = (6, 0);
    match sys::kernel_version() {
        Some(found) if found < NEEDED => Err(Error::KernelTooOld {
            feature: "multishot recv (IORING_RECV_MULTISHOT)",
            found,
            needed: NEEDED,
        }),
        _ => Ok(()),
    }
}

/// One `SO_REUSEPORT` listener per worker, all on the same port (the first one's, when the
/// address asks for port 0).
fn bind_all(addr: SocketAddr, n: usize, backlog: i32) -> Result<Vec<TcpListener>, Error> {
    let bind = |a: SocketAddr| {
        sys::reuseport_listener(a, backlog).map_err(|source| Error::Bind { addr: a, source })
    };
    let first = bind(addr)?;
    let port = first
        .local_addr()
        .map_err(|e| Error::Io("getsockname", e))?
        .port();
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind(SocketAddr::new(addr.ip(), port))?);
    }
    Ok(all)
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    handle: Handle,
    threads: Vec<JoinHandle<Result<(), Error>>>,
}

impl Server {
    /// A builder with the default [`Config`], listening on 127.0.0.1:9001.
    pub fn builder() -> Builder {
        Builder {
            addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
            config: Config::default(),
        }
    }

    /// A handle to stop the server from any thread.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// A handle that publishes to topics from any thread.
    pub fn publisher(&self) -> Publisher {
        self.handle.publisher()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr
    }

    /// Wait until every worker has stopped (after [`Handle::shutdown`]).
    pub fn join(self) -> Result<(), Error> {
        let mut result = Ok(());
        for t in self.threads {
            let r = t.join().unwrap_or(Err(Error::WorkerPanicked));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

/// Controls a running server from any thread.
#[derive(Debug, Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl Handle {
    /// Stop accepting, close every WebSocket with 1001 "server shutting down", and give the
    /// close handshakes up to `grace` before dropping what is left. Returns at once;
    /// [`Server::join`] waits for the end.
    pub fn shutdown(&self, grace: Duration) {
        self.shared.grace_nanos.store(
            grace.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Release,
        );
        self.shared.stop.store(true, Ordering::Release);
        for w in &self.shared.wakers {
            sys::eventfd_signal(w.as_raw_fd());
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Open connections over all workers.
    pub fn connections(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// A handle that publishes to topics from any thread.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            shared: self.shared.clone(),
        }
    }

    /// Every worker's counters, as of its last loop turn.
    pub fn stats(&self) -> Vec<crate::stats::WorkerStats> {
        self.shared.stats()
    }
}

/// Publishes to topics from any thread (a tokio service that embeds uproar, say): the message
/// is encoded once and the same buffer goes to every worker's inbox; each worker queues it to
/// its subscribers. Messages from one `Publisher` to one topic arrive in order.
#[derive(Debug, Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

impl Publisher {
    /// Publish a whole message to `topic`. Returns false if some worker refused it: the
    /// server is stopping, or that worker's inbox is full (it is far behind).
    pub fn publish(&self, topic: &str, kind: DataKind, payload: &[u8]) -> bool {
        self.publish_frame(topic, &Frame::new(kind, payload))
    }

    /// Publish a frame already encoded (see [`publish`](Self::publish)).
    pub fn publish_frame(&self, topic: &str, frame: &Frame) -> bool {
        let remote = Remote {
            topic: topic.into(),
            frame: frame.clone(),
        };
        let mut all = true;
        for w in 0..self.shared.inboxes.len() {
            all &= self.shared.post(w, remote.clone());
        }
        all
    }
}
