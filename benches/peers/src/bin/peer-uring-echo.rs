//! Raw TCP echo on io_uring, no WebSocket: the kernel's ceiling for an echo pattern on this
//! machine. One ring, multishot accept, per connection one recv then one send of what arrived
//! (short sends resumed), one `io_uring_enter` per loop turn for all queued SQEs. A WebSocket
//! server doing more work per message can at most approach it.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use uproar_peers::listen_addr;

const ACCEPT: u64 = u64::MAX;
const BUF: usize = 64 << 10;

struct Conn {
    fd: RawFd,
    buf: Box<[u8]>,
    len: usize,
    sent: usize,
}

fn push(ring: &mut IoUring, sqe: squeue::Entry) {
    loop {
        // SAFETY: every buffer an SQE points at is a `Conn::buf` that stays allocated (the
        // slot is only freed after the operation's completion) and is not touched meanwhile.
        if unsafe { ring.submission().push(&sqe) }.is_ok() {
            return;
        }
        ring.submit().expect("io_uring_enter");
    }
}

fn recv(ring: &mut IoUring, i: usize, c: &mut Conn) {
    let e = opcode::Recv::new(types::Fd(c.fd), c.buf.as_mut_ptr(), BUF as u32)
        .build()
        .user_data((i as u64) << 1);
    push(ring, e);
}

fn send(ring: &mut IoUring, i: usize, c: &Conn) {
    let rest = &c.buf[c.sent..c.len];
    let e = opcode::Send::new(types::Fd(c.fd), rest.as_ptr(), rest.len() as u32)
        .build()
        .user_data(((i as u64) << 1) | 1);
    push(ring, e);
}

fn close(fd: RawFd) {
    // SAFETY: `fd` was returned by accept, is owned by exactly one `Conn`, and no operation on
    // it is in flight (its last completion just arrived).
    unsafe { libc::close(fd) };
}

fn main() {
    let listener = TcpListener::bind(listen_addr()).expect("bind");
    let mut ring = IoUring::new(4096).expect("io_uring_setup (is io_uring enabled?)");
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    push(
        &mut ring,
        opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
            .build()
            .user_data(ACCEPT),
    );
    let mut done = Vec::with_capacity(1024);
    loop {
        ring.submit_and_wait(1).expect("io_uring_enter");
        done.clear();
        done.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(ud, res, flags) in &done {
            if ud == ACCEPT {
                if res >= 0 {
                    let fd = res;
                    let _ = set_nodelay(fd);
                    let i = free.pop().unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    let c = conns[i].insert(Conn {
                        fd,
                        buf: vec![0; BUF].into_boxed_slice(),
                        len: 0,
                        sent: 0,
                    });
                    recv(&mut ring, i, c);
                }
                if !cqueue::more(flags) {
                    push(
                        &mut ring,
                        opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
                            .build()
                            .user_data(ACCEPT),
                    );
                }
                continue;
            }
            let i = (ud >> 1) as usize;
            let Some(c) = conns[i].as_mut() else { continue };
            if res <= 0 {
                close(c.fd);
                conns[i] = None;
                free.push(i);
                continue;
            }
            if ud & 1 == 0 {
                c.len = res as usize;
                c.sent = 0;
                send(&mut ring, i, c);
            } else {
                c.sent += res as usize;
                if c.sent < c.len {
                    send(&mut ring, i, c);
                } else {
                    recv(&mut ring, i, c);
                }
            }
        }
    }
}

fn set_nodelay(fd: RawFd) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and its size is passed; `fd` is a socket just accepted.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
