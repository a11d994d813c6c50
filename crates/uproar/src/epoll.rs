//! The epoll driver, on mio (epoll on Linux; kqueue on macOS and the BSDs): for sandboxes
//! where io_uring is blocked. Sockets are registered edge-triggered for reading and writing
//! once, at accept. Every socket is read into one buffer per worker, so an idle connection
//! holds no read buffer; a connection's queued frames go out with one system call (`send` for
//! one chunk, a gathering `sendmsg` for several), straight from the lifecycle's queue (shared
//! fan-out frames by reference). The lifecycle, the timing wheel and the mesh are the io_uring
//! driver's.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::error::Error;
use crate::handler::Handler;
use crate::id::ConnId;
use crate::lifecycle::{Accepted, Command, Lifecycle};
use crate::mesh::Shared;
use crate::sys;
use crate::tx::MAX_IOV;
use crate::uring::ACCEPT_BACKOFF;

/// Tokens above every connection's (connection tokens are [`ConnId::to_u64`], below 2^56).
const LISTENER: Token = Token(usize::MAX);
pub(crate) const WAKE: Token = Token(usize::MAX - 1);

/// Connections accepted per turn before the loop serves the others; why 256: a connection
/// storm does not starve established connections, and the rest are accepted next turn.
const ACCEPT_BUDGET: usize = 256;

/// Reads per connection per turn before the loop serves the others; why 4: a connection that
/// floods us gets 4 buffers (128 KiB by default) a turn, the same as under io_uring's
/// one-completion-per-turn bound in spirit, and is read again next turn.
const READ_BUDGET: usize = 4;

pub(crate) struct Worker<H: Handler> {
    poll: Poll,
    events: Events,
    lc: Lifecycle<H>,
    listener: Option<TcpListener>,
    /// Sockets by slot index, with the generation of the connection that owns them.
    socks: Vec<Option<(u32, TcpStream)>>,
    /// The one read buffer.
    buf: Vec<u8>,
    /// Connections with more to read than one turn's budget.
    again: Vec<ConnId>,
    /// Accepting stopped mid-burst (budget) and goes on next turn.
    accept_again: bool,
    accept_retry: Option<Instant>,
    cmds: Vec<Command>,
    chunks: Vec<Bytes>,
}

impl<H: Handler> Worker<H> {
    pub(crate) fn new(
        index: usize,
        handler: H,
        poll: Poll,
        listener: std::net::TcpListener,
        shared: Arc<Shared>,
    ) -> Result<Worker<H>, Error> {
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::Io("making the listener non-blocking", e))?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| Error::Io("registering the listener with epoll", e))?;
        let buf = vec![0; shared.config.recv_buffer_size as usize];
        Ok(Worker {
            poll,
            events: Events::with_capacity(1024),
            lc: Lifecycle::new(index, handler, shared, Instant::now(), false),
            listener: Some(listener),
            socks: Vec::new(),
            buf,
            again: Vec::new(),
            accept_again: false,
            accept_retry: None,
            cmds: Vec::new(),
            chunks: Vec::with_capacity(MAX_IOV),
        })
    }

    pub(crate) fn run(mut self) -> Result<(), Error> {
        loop {
            let busy = !self.again.is_empty() || self.accept_again;
            let timeout = if busy {
                Some(std::time::Duration::ZERO)
            } else {
                [self.lc.next_wake(), self.accept_retry]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|t| t.saturating_duration_since(Instant::now()))
            };
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io("epoll_wait", e)),
            }
            let now = Instant::now();
            self.lc.begin_turn(now);
            let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKE => self.lc.inbox(),
                    Token(t) => {
                        let id = ConnId::from_u64(t as u64);
                        if ev.is_writable() {
                            self.lc.writable(id);
                        }
                        let closing = ev.is_read_closed() || ev.is_error();
                        if ev.is_readable() || closing {
                            self.read(id, closing);
                        }
                    }
                }
            }
            events.clear();
            self.events = events;
            for id in std::mem::take(&mut self.again) {
                self.read(id, true);
            }
            if self.accept_again {
                self.accept_again = false;
                self.accept();
            }
            if self.accept_retry.is_some_and(|t| now >= t) {
                self.accept_retry = None;
                self.accept();
            }
            self.lc.tick();
            if self.lc.stopping() && self.listener.is_some() {
                // Stop listening at once, so new connections go to another process (or are
                // refused).
                self.listener = None;
                self.accept_again = false;
            }
            self.flush();
            self.lc.publish_stats();
            if self.lc.finished() {
                return Ok(());
            }
        }
    }

    fn accept(&mut self) {
        if self.accept_retry.is_some() {
            return;
        }
        for _ in 0..ACCEPT_BUDGET {
            let Some(listener) = &self.listener else {
                return;
            };
            let mut stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) {
                        tracing::warn!(error = %e,
                            "accept failed; pausing accepts for {ACCEPT_BACKOFF:?} (raise ulimit -n?)");
                        self.accept_retry = Some(Instant::now() + ACCEPT_BACKOFF);
                        return;
                    }
                    tracing::debug!(error = %e, "accept");
                    continue;
                }
            };
            match self.lc.accept(stream.as_raw_fd()) {
                Accepted::Refuse(answer) => {
                    if !answer.is_empty() {
                        let _ = stream.write(answer);
                    }
                }
                Accepted::Open(id) => {
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    let token = Token(id.to_u64() as usize);
                    if let Err(e) = self.poll.registry().register(&mut stream, token, interest) {
                        tracing::warn!(error = %e, "registering a connection with epoll");
                        self.lc.reset(id);
                    }
                    let i = id.index as usize;
                    if self.socks.len() <= i {
                        self.socks.resize_with(i + 1, || None);
                    }
                    self.socks[i] = Some((id.generation, stream));
                }
            }
        }
        self.accept_again = true;
    }

    fn stream(&mut self, id: ConnId) -> Option<&mut TcpStream> {
        match self.socks.get_mut(id.index as usize) {
            Some(Some((g, s))) if *g == id.generation => Some(s),
            _ => None,
        }
    }

    /// Read what `id` has, up to the turn's budget. A short read is taken to mean the socket
    /// is drained (the next edge says when more comes), unless `to_the_end`: the event also
    /// said the peer closed or failed, which no later edge would repeat, so read on until
    /// `WouldBlock`, end of file or the error.
    fn read(&mut self, id: ConnId, to_the_end: bool) {
        for _ in 0..READ_BUDGET {
            if !self.lc.wants_read(id) {
                return;
            }
            let mut buf = std::mem::take(&mut self.buf);
            let r = match self.stream(id) {
                Some(s) => s.read(&mut buf),
                None => return,
            };
            match r {
                Ok(0) => {
                    self.buf = buf;
                    self.lc.eof(id);
                    return;
                }
                Ok(n) => {
                    self.lc.received(id, &mut buf[..n]);
                    self.buf = buf;
                    if n < self.buf.len() && !to_the_end {
                        return;
                    }
                }
                Err(e) => {
                    self.buf = buf;
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return,
                        io::ErrorKind::Interrupted => continue,
                        _ => {
                            self.lc.reset(id);
                            return;
                        }
                    }
                }
            }
        }
        self.again.push(id);
    }

    /// Carry out the lifecycle's commands until it has none.
    fn flush(&mut self) {
        loop {
            self.cmds.clear();
            self.lc.flush(&mut self.cmds);
            if self.cmds.is_empty() {
                return;
            }
            for i in 0..self.cmds.len() {
                match self.cmds[i] {
                    // Reads are readiness-driven here: nothing to arm.
                    Command::Read(..) => {}
                    Command::Transmit(id, _) => self.transmit(id),
                    Command::ShutdownWrite(id, _) => {
                        if let Some(s) = self.stream(id) {
                            let _ = s.shutdown(Shutdown::Write);
                        }
                    }
                    Command::Abort(id, _) => {
                        if let Some(s) = self.stream(id) {
                            let _ = s.shutdown(Shutdown::Both);
                        }
                    }
                    Command::Free(id, _) => {
                        if let Some(slot) = self.socks.get_mut(id.index as usize)
                            && slot.as_ref().is_some_and(|(g, _)| *g == id.generation)
                            && let Some((_, mut s)) = slot.take()
                        {
                            let _ = self.poll.registry().deregister(&mut s);
                        }
                    }
                }
            }
        }
    }

    /// One `send` (one chunk) or gathering `sendmsg` (several) of `id`'s next batch.
    fn transmit(&mut self, id: ConnId) {
        let mut chunks = std::mem::take(&mut self.chunks);
        if !self.lc.take_batch(id, &mut chunks) {
            self.chunks = chunks;
            return;
        }
        let total: usize = chunks.iter().map(Bytes::len).sum();
        let r = match self.stream(id) {
            Some(s) => loop {
                let r = match &chunks[..] {
                    [one] => sys::send(s.as_raw_fd(), one),
                    _ => {
                        let mut iov = [IoSlice::new(&[]); MAX_IOV];
                        for (slot, c) in iov.iter_mut().zip(&chunks) {
                            *slot = IoSlice::new(c);
                        }
                        sys::send_vectored(s.as_raw_fd(), &iov[..chunks.len()])
                    }
                };
                match r {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            },
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        match r {
            // A short write may leave room (the socket said nothing yet): the flush loop tries
            // again, and only `WouldBlock` waits for the writable edge.
            Ok(n) => self.lc.sent(id, &mut chunks, n, n == 0 && total > 0),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.lc.sent(id, &mut chunks, 0, true)
            }
            Err(_) => self.lc.send_failed(id, &mut chunks),
        }
        self.chunks = chunks;
    }
}
