//! Starting and stopping a server: listeners, worker threads, the [`Handle`].

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use uproar_wire::DataKind;

use crate::config::{BackpressurePolicy, Config, Driver};
use crate::error::Error;
use crate::handler::Handler;
use crate::mesh::{Remote, Shared, Waker};
use crate::message::Frame;
use crate::{epoll, sys, uring};

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

    /// Serve TLS (`https://`, `wss://`) with this configuration; see [`Config::tls`].
    pub fn tls(mut self, tls: crate::TlsConfig) -> Builder {
        self.config.tls = Some(tls);
        self
    }

    /// Tell `observer` of topics becoming active or idle on this node and of publishes made
    /// here; see [`NodeObserver`](crate::NodeObserver).
    pub fn observer(mut self, observer: Arc<dyn crate::NodeObserver>) -> Builder {
        self.config.observer = Some(observer);
        self
    }

    /// Replace the whole configuration.
    pub fn config(mut self, config: Config) -> Builder {
        self.config = config;
        self
    }

    setters! {
        /// See [`Config::driver`].
        driver: Driver,
        /// See [`Config::reuse_port`].
        reuse_port: bool,
        /// See [`Config::deflate`].
        deflate: crate::Deflate,
        /// See [`Config::deflate_min_size`].
        deflate_min_size: usize,
        /// See [`Config::deflate_window_bits`].
        deflate_window_bits: u8,
        /// See [`Config::deflate_level`].
        deflate_level: u8,
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
        let driver = choose_driver(cfg.driver)?;
        let (_, hard) = sys::raise_nofile().map_err(|e| Error::Io("getrlimit", e))?;
        // Per worker: the listener, the ring or epoll, the waker; plus stdio and slack.
        let needed = cfg.max_connections as u64 + 4 * cfg.threads as u64 + 16;
        if needed > hard {
            return Err(Error::FdLimit { needed, hard });
        }
        let listeners = bind_all(self.addr, cfg.threads, cfg.backlog, cfg.reuse_port)?;
        let local_addr = listeners[0]
            .local_addr()
            .map_err(|e| Error::Io("getsockname", e))?;
        let mut polls = Vec::new();
        let wakers = (0..cfg.threads)
            .map(|_| match driver {
                Driver::Epoll => {
                    let poll = mio::Poll::new().map_err(|e| Error::Io("epoll_create", e))?;
                    let waker = mio::Waker::new(poll.registry(), epoll::WAKE)
                        .map_err(|e| Error::Io("creating the epoll waker", e))?;
                    polls.push(Some(poll));
                    Ok(Waker::Mio(waker))
                }
                _ => sys::eventfd()
                    .map(Waker::EventFd)
                    .map_err(|e| Error::Io("eventfd", e)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shared = Arc::new(Shared::new(Arc::new(cfg.clone()), driver, wakers));
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
            let poll = polls.get_mut(i).and_then(Option::take);
            let t = std::thread::Builder::new()
                .name(format!("uproar-{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let handler = factory(i);
                    let worker = match poll {
                        Some(poll) => epoll::Worker::new(i, handler, poll, listener, shared)
                            .map(|w| Box::new(move || w.run()) as Box<dyn FnOnce() -> _>),
                        None => uring::Worker::new(i, handler, listener, shared)
                            .map(|w| Box::new(move || w.run()) as Box<dyn FnOnce() -> _>),
                    };
                    let run = match worker {
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
                    run()
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
        tracing::info!(driver = %driver, workers = cfg.threads, addr = %local_addr, "uproar engine started");
        Ok(server)
    }
}

/// The driver to run: `Auto` probes io_uring and falls back to epoll, saying why once.
fn choose_driver(wanted: Driver) -> Result<Driver, Error> {
    match wanted {
        Driver::Epoll => Ok(Driver::Epoll),
        Driver::IoUring => uring::probe().map(|()| Driver::IoUring),
        Driver::Auto => match uring::probe() {
            Ok(()) => Ok(Driver::IoUring),
            Err(e) => {
                tracing::warn!(
                    reason = %e,
                    "io_uring is not available to this process, so the epoll driver runs \
                     (same behaviour, more CPU per message: docs/operations.md)"
                );
                Ok(Driver::Epoll)
            }
        },
    }
}

/// One `SO_REUSEPORT` listener per worker, all on the same port (the first one's, when the
/// address asks for port 0). Unless `share` is set, the address is first bound without
/// `SO_REUSEPORT`: that fails if any other socket holds it (another process's `SO_REUSEPORT`
/// listeners included), so a second server is refused instead of silently splitting clients.
fn bind_all(
    addr: SocketAddr,
    n: usize,
    backlog: i32,
    share: bool,
) -> Result<Vec<TcpListener>, Error> {
    let bind = |a: SocketAddr| {
        sys::reuseport_listener(a, backlog).map_err(|source| Error::Bind { addr: a, source })
    };
    let addr = if share {
        addr
    } else {
        let probe = sys::exclusive_bind(addr).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                Error::AddressInUse { addr }
            } else {
                Error::Bind { addr, source }
            }
        })?;
        // Port 0 asks for a free port: keep the one the probe got.
        probe
            .local_addr()
            .map_err(|e| Error::Io("getsockname", e))?
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

    /// The driver the workers run (`IoUring` or `Epoll`, never `Auto`).
    pub fn driver(&self) -> Driver {
        self.handle.driver()
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
            w.wake();
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

    /// Subscribers of `topic` over all workers.
    pub fn node_subscribers(&self, topic: &str) -> usize {
        self.shared.node_subscribers(topic)
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

    /// The driver the workers run (`IoUring` or `Epoll`, never `Auto`).
    pub fn driver(&self) -> Driver {
        self.shared.driver
    }

    /// Replace the TLS configuration (a renewed certificate): handshakes from now on use the
    /// new one; open connections keep theirs. Fails with [`Error::Config`] if the server was
    /// started without TLS.
    pub fn reload_tls(&self, tls: crate::TlsConfig) -> Result<(), Error> {
        match &self.shared.tls {
            Some(src) => {
                src.set(tls);
                Ok(())
            }
            None => Err(Error::Config("the server was started without TLS")),
        }
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
    /// server is stopping, or that worker's inbox is full (it is far behind). Every refusal
    /// is counted against the refusing worker ([`WorkerStats::refused_inbox_full`]).
    ///
    /// [`WorkerStats::refused_inbox_full`]: crate::WorkerStats::refused_inbox_full
    pub fn publish(&self, topic: &str, kind: DataKind, payload: &[u8]) -> bool {
        self.publish_frame(topic, &Frame::new(kind, payload))
    }

    /// Publish a frame already encoded (see [`publish`](Self::publish)).
    pub fn publish_frame(&self, topic: &str, frame: &Frame) -> bool {
        if let Some(o) = &self.shared.observer {
            o.published(topic, frame);
        }
        self.publish_frame_local(topic, frame)
    }

    /// Publish to this node's subscribers only, without telling the
    /// [`NodeObserver`](crate::NodeObserver): for messages that came from another node
    /// through a broker.
    pub fn publish_frame_local(&self, topic: &str, frame: &Frame) -> bool {
        let remote = Remote {
            topic: topic.into(),
            frame: frame.clone(),
        };
        let mut all = true;
        for w in 0..self.shared.workers() {
            all &= self.shared.post(w, remote.clone()).is_ok();
        }
        all
    }
}
