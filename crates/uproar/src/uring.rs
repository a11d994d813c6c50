//! The io_uring driver: a thread's ring, its listener and its lifecycle. The loop: submit
//! everything queued and wait for completions (one `io_uring_enter`), turn each completion
//! into a lifecycle input, fire timers, then turn the lifecycle's commands into SQEs (a
//! multishot recv, one `send`/`sendmsg` of a connection's queued frames, a shutdown, a close).

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn::Sock;
use crate::error::Error;
use crate::handler::Handler;
use crate::id::ConnId;
use crate::lifecycle::{Accepted, Command, Lifecycle};
use crate::mesh::Shared;
use crate::ring::{Cqe, Op, Ring, RingConfig, UserData};
use crate::sys;

/// How long to pause accepting after running out of descriptors or memory; why 100 ms: long
/// enough for connections to close, short enough that a burst is not refused for long.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Multishot recv (the driver's receive path) arrived in Linux 6.0.
pub(crate) fn check_kernel() -> Result<(), Error> {
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

/// Whether this process can run the io_uring driver: the kernel version, ring setup, every
/// opcode, and a provided-buffer ring, tried on a small ring that is then dropped. The ring is
/// made on a thread of its own: its teardown queues task work to the thread that made it,
/// which would interrupt that thread's next blocking socket call that has a timeout (EINTR).
pub(crate) fn probe() -> Result<(), Error> {
    check_kernel()?;
    std::thread::Builder::new()
        .name("uproar-probe".into())
        .spawn(|| {
            Ring::new(RingConfig {
                entries: 8,
                recv_buffers: 2,
                recv_buffer_size: 4096,
                prefault: false,
            })
            .map(drop)
        })
        .map_err(|e| Error::Io("spawning the io_uring probe", e))?
        .join()
        .map_err(|_| Error::WorkerPanicked)?
}

pub(crate) struct Worker<H: Handler> {
    ring: Ring,
    lc: Lifecycle<H>,
    listener: Option<TcpListener>,
    shared: Arc<Shared>,
    accept_armed: bool,
    accept_retry: Option<Instant>,
    cqes: Vec<Cqe>,
    cmds: Vec<Command>,
}

impl<H: Handler> Worker<H> {
    pub(crate) fn new(
        index: usize,
        handler: H,
        listener: TcpListener,
        shared: Arc<Shared>,
    ) -> Result<Worker<H>, Error> {
        let cfg = shared.config.clone();
        let ring = Ring::new(RingConfig {
            entries: cfg.ring_entries,
            recv_buffers: cfg.recv_buffers,
            recv_buffer_size: cfg.recv_buffer_size,
            prefault: cfg.prefault_buffers,
        })?;
        tracing::debug!(worker = index, mode = ring.mode, "io_uring ready");
        Ok(Worker {
            ring,
            lc: Lifecycle::new(index, handler, shared.clone(), Instant::now(), true),
            listener: Some(listener),
            shared,
            accept_armed: false,
            accept_retry: None,
            cqes: Vec::with_capacity(1024),
            cmds: Vec::new(),
        })
    }

    fn wake_fd(&self) -> i32 {
        self.shared.wakers[self.lc.ctx.worker]
            .raw_fd()
            .expect("the io_uring driver is woken through an eventfd")
    }

    pub(crate) fn run(mut self) -> Result<(), Error> {
        self.arm_accept();
        self.ring.read_wake(self.wake_fd());
        loop {
            let timeout = [self.lc.next_wake(), self.accept_retry]
                .into_iter()
                .flatten()
                .min()
                .map(|t| t.saturating_duration_since(Instant::now()));
            self.ring
                .submit_and_wait(timeout)
                .map_err(|e| Error::Io("io_uring_enter", e))?;
            let now = Instant::now();
            self.lc.begin_turn(now);
            self.cqes.clear();
            self.ring.reap(&mut self.cqes);
            for i in 0..self.cqes.len() {
                let c = self.cqes[i];
                self.dispatch(c);
            }
            self.lc.tick();
            if self.lc.stopping() && self.listener.is_some() {
                // Stop listening at once, so new connections go to another process (or are
                // refused).
                if self.accept_armed {
                    self.ring.cancel(UserData::bare(Op::Accept));
                }
                self.listener = None;
            }
            if self.accept_retry.is_some_and(|t| now >= t) {
                self.accept_retry = None;
                self.arm_accept();
            }
            self.flush();
            self.lc.publish_stats();
            // The ownership rule of design/0004: no receive buffer outlives its turn.
            debug_assert_eq!(
                self.ring.buffers_held(),
                0,
                "a receive buffer was not recycled"
            );
            if self.lc.finished() && self.ring.sends_in_flight() == 0 {
                self.ring.submit();
                return Ok(());
            }
        }
    }

    fn arm_accept(&mut self) {
        if self.accept_armed || self.lc.stopping() {
            return;
        }
        if let Some(l) = &self.listener {
            self.ring
                .accept_multi(l.as_raw_fd(), UserData::bare(Op::Accept));
            self.accept_armed = true;
        }
    }

    fn dispatch(&mut self, cqe: Cqe) {
        let Some(ud) = UserData::decode(cqe.user_data) else {
            return;
        };
        match ud.op {
            Op::Accept => self.on_accept(cqe),
            Op::Recv => self.on_recv(ud.id, cqe),
            Op::Send => self.on_send(ud.id.index, cqe),
            Op::Wake => {
                // Publishes from other workers and from `Publisher`s.
                self.lc.inbox();
                if !self.lc.stopping() {
                    self.ring.read_wake(self.wake_fd());
                }
            }
            Op::Cancel => {}
        }
    }

    fn on_accept(&mut self, cqe: Cqe) {
        if !cqe.more() {
            self.accept_armed = false;
        }
        if cqe.result >= 0 {
            let fd = cqe.result;
            match self.lc.accept(fd) {
                Accepted::Open(_) => {}
                Accepted::Refuse(answer) => {
                    if !answer.is_empty() {
                        let _ = sys::send_now(fd, answer);
                    }
                    sys::close(fd);
                }
            }
        } else {
            match -cqe.result {
                libc::ECANCELED => {}
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                    tracing::warn!(
                        error = %std::io::Error::from_raw_os_error(-cqe.result),
                        "accept failed; pausing accepts for {ACCEPT_BACKOFF:?} (raise ulimit -n?)"
                    );
                    self.accept_retry = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
                e => tracing::debug!(error = %std::io::Error::from_raw_os_error(e), "accept"),
            }
        }
        if !self.accept_armed && self.accept_retry.is_none() {
            self.arm_accept();
        }
    }

    fn on_recv(&mut self, id: ConnId, cqe: Cqe) {
        if !cqe.more() {
            self.lc.read_ended(id);
        }
        match cqe.result {
            n if n > 0 => {
                if let Some(bid) = cqe.buffer() {
                    if let Some(buf) = self.ring.take_buf(bid, n as usize) {
                        self.lc.received(id, buf);
                    }
                    self.ring.recycle_buf(bid);
                }
            }
            0 => self.lc.eof(id),
            // The pool ran dry this turn; buffers are all back by the end of it, and the
            // ended read is re-armed by the flush.
            e if -e == libc::ENOBUFS => {}
            _ => self.lc.reset(id),
        }
    }

    fn on_send(&mut self, slot: u32, cqe: Cqe) {
        let Some(mut sb) = self.ring.complete_send(slot) else {
            return;
        };
        if cqe.result <= 0 {
            // EPIPE, ECONNRESET, or a socket shut down under the send.
            self.lc.send_failed(sb.conn, &mut sb.chunks);
        } else {
            self.lc
                .sent(sb.conn, &mut sb.chunks, cqe.result as usize, false);
        }
        self.ring.recycle_send_buf(sb);
    }

    /// Carry out the lifecycle's commands.
    fn flush(&mut self) {
        loop {
            self.cmds.clear();
            self.lc.flush(&mut self.cmds);
            if self.cmds.is_empty() {
                return;
            }
            for i in 0..self.cmds.len() {
                match self.cmds[i] {
                    Command::Read(id, sock) => {
                        self.ring.recv_multi(sock, UserData::new(Op::Recv, id));
                    }
                    Command::Transmit(id, sock) => self.transmit(id, sock),
                    Command::ShutdownWrite(_, sock) => sys::shutdown(sock, libc::SHUT_WR),
                    Command::Abort(_, sock) => sys::shutdown(sock, libc::SHUT_RDWR),
                    Command::Free(_, sock) => sys::close(sock),
                }
            }
        }
    }

    fn transmit(&mut self, id: ConnId, sock: Sock) {
        let mut sb = self.ring.send_buf();
        if self.lc.take_batch(id, &mut sb.chunks) {
            sb.conn = id;
            self.ring.send(sock, sb);
        } else {
            self.ring.recycle_send_buf(sb);
        }
    }
}
