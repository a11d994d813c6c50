//! The io_uring layer: ring setup with feature fallbacks, SQE submission, completion reaping,
//! and ownership of every buffer the kernel may read or write: the provided receive buffers
//! ([`bufring`]), the frames of each send in flight, and the wake counter. Nothing outside
//! this module hands a pointer to the kernel, so no caller can free memory under it.
//!
//! `user_data` encodes (operation, generation, slot index) ([`UserData`]): a completion for a
//! connection slot that has since been reused carries an old generation and is ignored.

pub(crate) mod bufring;

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use bytes::Bytes;
use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, Probe, cqueue, opcode, squeue};

use crate::error::Error;
use crate::id::ConnId;
use crate::tx::MAX_IOV;
use bufring::{BGID, BufRing};

/// What an operation was, in the top byte of its `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Wake = 4,
    Cancel = 5,
}

/// A decoded `user_data`: the operation and a [`ConnId`] (24-bit generation, 32-bit index).
/// For a send, the index is the send's slot in the ring's table (the connection is in its
/// [`SendBuf`]); accept, wake and cancel carry no connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UserData {
    pub(crate) op: Op,
    pub(crate) id: ConnId,
}

impl UserData {
    pub(crate) fn new(op: Op, id: ConnId) -> UserData {
        UserData { op, id }
    }

    /// An operation that concerns no connection.
    pub(crate) fn bare(op: Op) -> UserData {
        UserData::new(op, ConnId::new(0, 0))
    }

    pub(crate) fn encode(self) -> u64 {
        (self.op as u64) << 56 | self.id.to_u64()
    }

    pub(crate) fn decode(v: u64) -> Option<UserData> {
        let op = match (v >> 56) as u8 {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Wake,
            5 => Op::Cancel,
            _ => return None,
        };
        Some(UserData {
            op,
            id: ConnId::from_u64(v & ((1 << 56) - 1)),
        })
    }
}

/// A completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cqe {
    pub(crate) user_data: u64,
    pub(crate) result: i32,
    pub(crate) flags: u32,
}

impl Cqe {
    /// The operation stays armed (multishot) and will complete again.
    pub(crate) fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer this completion filled.
    pub(crate) fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// Sizes of a worker's ring and receive pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingConfig {
    pub(crate) entries: u32,
    pub(crate) recv_buffers: u16,
    pub(crate) recv_buffer_size: u32,
    pub(crate) prefault: bool,
}

/// Frames of one send in flight, owned here until the kernel completes it.
#[derive(Debug)]
pub(crate) struct SendBuf {
    /// The connection the send belongs to.
    pub(crate) conn: ConnId,
    /// The frames, in order. The kernel reads them through `iov`.
    pub(crate) chunks: Vec<Bytes>,
    iov: Vec<libc::iovec>,
}

impl Default for SendBuf {
    fn default() -> SendBuf {
        SendBuf {
            conn: ConnId::new(0, 0),
            chunks: Vec::new(),
            iov: Vec::new(),
        }
    }
}

/// Spare send buffers kept for reuse; why 256: more sends than that in flight at once means
/// many busy connections, whose allocations are then not worth pooling.
const SPARE: usize = 256;

/// One worker's io_uring with its receive pool. Field order matters for drop: the ring is
/// torn down (cancelling everything in flight) before the memory it pointed at is freed.
pub(crate) struct Ring {
    uring: IoUring,
    bufs: BufRing,
    /// Sends in flight by slot; their memory must outlive the kernel's use of it.
    sends: Vec<Option<Box<SendMsgBuf>>>,
    free_sends: Vec<u32>,
    /// Spare send buffers and boxes, so a busy connection does not allocate per send.
    spare_bufs: Vec<SendBuf>,
    // Boxed: a send's msghdr must keep its address while the kernel reads it, and a spare is
    // reused whole, box and all.
    #[allow(clippy::vec_box)]
    spare_boxes: Vec<Box<SendMsgBuf>>,
    /// Target of the pending eventfd read.
    wake: Box<u64>,
    /// The setup flags the kernel accepted, for logs.
    pub(crate) mode: &'static str,
}

/// A [`SendBuf`] plus the `msghdr` pointing at its iovecs.
struct SendMsgBuf {
    buf: SendBuf,
    msg: libc::msghdr,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("mode", &self.mode)
            .field(
                "sends_in_flight",
                &(self.sends.len() - self.free_sends.len()),
            )
            .finish()
    }
}

/// Opcodes the engine needs, with the kernel version that added each.
const NEEDED: [(u8, &str, &str); 6] = [
    (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT", "5.5"),
    (opcode::RecvMulti::CODE, "IORING_OP_RECV", "5.6"),
    (opcode::Send::CODE, "IORING_OP_SEND", "5.6"),
    (opcode::SendMsg::CODE, "IORING_OP_SENDMSG", "5.3"),
    (opcode::Read::CODE, "IORING_OP_READ", "5.6"),
    (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL", "5.5"),
];

impl Ring {
    /// Set up a ring on the calling thread (the only thread that will submit to it), trying
    /// the cheapest task-running mode first and falling back for older kernels.
    pub(crate) fn new(cfg: RingConfig) -> Result<Ring, Error> {
        let cq = cfg.entries.saturating_mul(4);
        type Setup = fn(&mut io_uring::Builder, u32);
        let attempts: [(&'static str, Setup); 3] = [
            ("single_issuer+defer_taskrun", |b, cq| {
                b.setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_cqsize(cq)
                    .setup_clamp();
            }),
            ("coop_taskrun", |b, cq| {
                b.setup_coop_taskrun().setup_cqsize(cq).setup_clamp();
            }),
            ("basic", |b, cq| {
                b.setup_cqsize(cq).setup_clamp();
            }),
        ];
        let mut last = None;
        let mut uring = None;
        for (mode, configure) in attempts {
            let mut b = IoUring::builder();
            configure(&mut b, cq);
            match b.build(cfg.entries) {
                Ok(r) => {
                    uring = Some((r, mode));
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
                Err(e) => return Err(Error::from_setup(e)),
            }
        }
        let Some((uring, mode)) = uring else {
            return Err(Error::from_setup(last.expect("an attempt failed")));
        };
        let mut probe = Probe::new();
        uring
            .submitter()
            .register_probe(&mut probe)
            .map_err(|e| Error::Io("io_uring probe", e))?;
        for (code, name, kernel) in NEEDED {
            if !probe.is_supported(code) {
                return Err(Error::MissingOpcode { name, kernel });
            }
        }
        let bufs = BufRing::new(cfg.recv_buffers, cfg.recv_buffer_size, cfg.prefault)
            .map_err(|e| Error::Io("mapping the receive buffers", e))?;
        let (addr, entries) = bufs.ring_addr();
        // SAFETY: the ring of entries lives in `bufs`, which this struct owns and drops after
        // `uring` (declaration order), so it stays valid as long as the registration.
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(addr, entries, BGID, 0)
        }
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                Error::MissingOpcode {
                    name: "IORING_REGISTER_PBUF_RING",
                    kernel: "5.19",
                }
            } else {
                Error::Io("registering the receive buffer ring", e)
            }
        })?;
        Ok(Ring {
            uring,
            bufs,
            sends: Vec::new(),
            free_sends: Vec::new(),
            spare_bufs: Vec::new(),
            spare_boxes: Vec::new(),
            wake: Box::new(0),
            mode,
        })
    }

    /// Queue an SQE, submitting first if the queue is full.
    ///
    /// # Safety
    /// Every pointer in `sqe` must stay valid until the operation completes.
    unsafe fn push(&mut self, sqe: squeue::Entry) {
        loop {
            // SAFETY: forwarded from the caller.
            if unsafe { self.uring.submission().push(&sqe) }.is_ok() {
                return;
            }
            // Full: hand what is queued to the kernel. Errors (EBUSY when completions are
            // backed up) leave the entries queued; completions are reaped by the caller's
            // next wait, and the retry succeeds once the kernel has taken some.
            if self.uring.submit().is_err() {
                std::thread::yield_now();
            }
        }
    }

    /// Arm a multishot accept on `fd`.
    pub(crate) fn accept_multi(&mut self, fd: RawFd, ud: UserData) {
        let sqe = opcode::AcceptMulti::new(Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud.encode());
        // SAFETY: the SQE carries no pointer.
        unsafe { self.push(sqe) }
    }

    /// Arm a multishot recv on `fd` that picks buffers from the pool.
    pub(crate) fn recv_multi(&mut self, fd: RawFd, ud: UserData) {
        let sqe = opcode::RecvMulti::new(Fd(fd), BGID)
            .build()
            .user_data(ud.encode());
        // SAFETY: the SQE carries no pointer; the buffers it selects are registered memory
        // owned by `self.bufs`.
        unsafe { self.push(sqe) }
    }

    /// Cancel the operation with `target` user data.
    pub(crate) fn cancel(&mut self, target: UserData) {
        let sqe = opcode::AsyncCancel::new(target.encode())
            .build()
            .user_data(UserData::bare(Op::Cancel).encode());
        // SAFETY: the SQE carries no pointer.
        unsafe { self.push(sqe) }
    }

    /// Read the eventfd `fd` (8 bytes) into a buffer owned here.
    pub(crate) fn read_wake(&mut self, fd: RawFd) {
        let ptr: *mut u64 = &mut *self.wake;
        let sqe = opcode::Read::new(Fd(fd), ptr.cast(), 8)
            .build()
            .user_data(UserData::bare(Op::Wake).encode());
        // SAFETY: `self.wake` is boxed (a stable address), never moved or freed before the
        // ring (see field order), and only written by the kernel.
        unsafe { self.push(sqe) }
    }

    /// A buffer for [`send`](Self::send), reusing a completed one's allocations.
    pub(crate) fn send_buf(&mut self) -> SendBuf {
        self.spare_bufs.pop().unwrap_or_default()
    }

    /// Send `buf.chunks` in order on `fd` (at most [`MAX_IOV`] of them), as one `send` or one
    /// `sendmsg`. The frames are held here until [`complete_send`](Self::complete_send).
    pub(crate) fn send(&mut self, fd: RawFd, mut buf: SendBuf) {
        debug_assert!(!buf.chunks.is_empty() && buf.chunks.len() <= MAX_IOV);
        let slot = self.free_sends.pop().unwrap_or_else(|| {
            self.sends.push(None);
            (self.sends.len() - 1) as u32
        });
        let ud = UserData::new(Op::Send, ConnId::new(slot, 0)).encode();
        buf.iov.clear();
        buf.iov.extend(buf.chunks.iter().map(|c| libc::iovec {
            iov_base: c.as_ptr().cast_mut().cast(),
            iov_len: c.len(),
        }));
        let mut m = self.spare_boxes.pop().unwrap_or_else(|| {
            Box::new(SendMsgBuf {
                buf: SendBuf::default(),
                // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control data).
                msg: unsafe { std::mem::zeroed() },
            })
        });
        m.buf = buf;
        let sqe = if m.buf.chunks.len() == 1 {
            let c = &m.buf.chunks[0];
            opcode::Send::new(Fd(fd), c.as_ptr(), c.len().min(u32::MAX as usize) as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            m.msg.msg_iov = m.buf.iov.as_mut_ptr();
            m.msg.msg_iovlen = m.buf.iov.len();
            opcode::SendMsg::new(Fd(fd), &m.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        };
        self.sends[slot as usize] = Some(m);
        // SAFETY: the frames (`Bytes`, heap memory that does not move), the iovecs and the
        // msghdr all live in the boxed `SendMsgBuf` now stored in `self.sends[slot]`, which is
        // only removed by `complete_send` when this operation's completion arrives (or freed
        // with the ring, after the ring is torn down).
        unsafe { self.push(sqe.user_data(ud)) }
    }

    /// The completion of send `slot`: the frames come back to the caller.
    pub(crate) fn complete_send(&mut self, slot: u32) -> Option<SendBuf> {
        let mut m = self.sends.get_mut(slot as usize)?.take()?;
        self.free_sends.push(slot);
        let buf = std::mem::take(&mut m.buf);
        m.msg.msg_iov = std::ptr::null_mut();
        m.msg.msg_iovlen = 0;
        if self.spare_boxes.len() < SPARE {
            self.spare_boxes.push(m);
        }
        Some(buf)
    }

    /// Return a finished send buffer's allocations for reuse.
    pub(crate) fn recycle_send_buf(&mut self, mut buf: SendBuf) {
        buf.chunks.clear();
        if self.spare_bufs.len() < SPARE {
            self.spare_bufs.push(buf);
        }
    }

    /// Number of sends the kernel has not completed.
    pub(crate) fn sends_in_flight(&self) -> usize {
        self.sends.len() - self.free_sends.len()
    }

    /// Submit everything queued and wait for at least one completion, or until `timeout`.
    pub(crate) fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let r = match timeout {
            None => self.uring.submit_and_wait(1),
            Some(t) => {
                let ts = Timespec::from(t);
                let args = SubmitArgs::new().timespec(&ts);
                self.uring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                // Timed out, interrupted, or completions backed up (reaping them is the cure).
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// Submit what is queued without waiting.
    pub(crate) fn submit(&mut self) {
        let _ = self.uring.submit();
    }

    /// Move every available completion into `out`.
    pub(crate) fn reap(&mut self, out: &mut Vec<Cqe>) {
        out.extend(self.uring.completion().map(|c| Cqe {
            user_data: c.user_data(),
            result: c.result(),
            flags: c.flags(),
        }));
    }

    /// The data of provided buffer `bid` that a recv completion filled with `len` bytes.
    pub(crate) fn take_buf(&mut self, bid: u16, len: usize) -> Option<&mut [u8]> {
        self.bufs.take(bid, len)
    }

    /// Receive buffers we hold: every one goes back within the turn that received it.
    pub(crate) fn buffers_held(&self) -> usize {
        self.bufs.held()
    }

    /// Give provided buffer `bid` back to the kernel.
    pub(crate) fn recycle_buf(&mut self, bid: u16) {
        self.bufs.recycle(bid);
    }
}
