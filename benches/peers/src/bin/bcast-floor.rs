//! The kernel's floor for fan-out in each driver's pattern, with no WebSocket: one thread (on
//! CPU 0) sends a small message to N loopback TCP sockets, either with one system call per
//! socket (the epoll driver's pattern: Linux has no call that sends to many sockets), as
//! `sendmsg(2)` or as `send(2)`, or with N SEND operations in one io_uring submission (the
//! io-uring driver's). The three patterns take turns round by round on the same sockets, and
//! each round's CPU time of the sending thread is divided by its deliveries; a reader thread
//! (on CPU 1) drains the other ends.
//!
//!   target/release/bcast-floor [SUBSCRIBERS] [ROUNDS] [INTERVAL_MS] [SIZE]
//!   target/release/bcast-floor 1000 200 20 22     (the broadcast scenario: 1000 subscribers,
//!                                                   50 messages a second, 22-byte frames)

use std::io::{ErrorKind, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use io_uring::{IoUring, opcode, types};
use mio::{Events, Interest, Poll, Token};

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .map_or(default, |a| a.parse().expect("a number"))
}

fn pin(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below the set's 1024 bits on any machine this runs on.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is an initialised cpu_set_t and its size is passed; 0 is this thread.
    let r = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(r, 0, "pinning to CPU {cpu}");
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One `sendmsg(2)` per socket, as the epoll driver sends.
fn send_each(fds: &[i32], msg: &[u8]) {
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr() as *mut libc::c_void,
        iov_len: msg.len(),
    };
    for &fd in fds {
        // SAFETY: an all-zero msghdr is valid; its one iovec points at `msg`, which outlives
        // the call.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        // SAFETY: `fd` is an open socket owned by `main`'s streams; `hdr` is valid for the call.
        let n = unsafe { libc::sendmsg(fd, &hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        assert_eq!(n, msg.len() as isize, "a short or failed send");
    }
}

/// One `send(2)` per socket: no message header or iovec to copy in.
fn send_plain(fds: &[i32], msg: &[u8]) {
    for &fd in fds {
        // SAFETY: `fd` is an open socket owned by `main`'s streams; `msg` is valid for reads of
        // its length for the call.
        let n = unsafe {
            libc::send(
                fd,
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        assert_eq!(n, msg.len() as isize, "a short or failed send");
    }
}

/// N SEND operations in one submission, as the io-uring driver sends a turn's frames.
fn send_ring(ring: &mut IoUring, fds: &[i32], msg: &[u8]) {
    for chunk in fds.chunks(ring.params().sq_entries() as usize) {
        for (i, &fd) in chunk.iter().enumerate() {
            let sqe = opcode::Send::new(types::Fd(fd), msg.as_ptr(), msg.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(i as u64);
            // SAFETY: `msg` outlives the submission: this function waits for every completion
            // before returning; `fd` is an open socket.
            unsafe { ring.submission().push(&sqe) }.expect("the submission queue has room");
        }
        ring.submit_and_wait(chunk.len()).expect("io_uring_enter");
        let mut done = 0;
        while done < chunk.len() {
            for cqe in ring.completion() {
                assert_eq!(cqe.result(), msg.len() as i32, "a short or failed send");
                done += 1;
            }
            if done < chunk.len() {
                ring.submit_and_wait(chunk.len() - done)
                    .expect("io_uring_enter");
            }
        }
    }
}

fn main() {
    let subscribers = arg(1, 1000);
    let rounds = arg(2, 200);
    let interval = Duration::from_millis(arg(3, 20) as u64);
    let size = arg(4, 22);

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let mut readers = Vec::with_capacity(subscribers);
    let mut senders = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        readers.push(TcpStream::connect(addr).expect("connect"));
        let (s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        senders.push(s);
    }
    let expected = subscribers * rounds * size;
    let reader = std::thread::spawn(move || {
        pin(1);
        let mut poll = Poll::new().expect("epoll");
        let mut socks: Vec<mio::net::TcpStream> = readers
            .into_iter()
            .map(|s| {
                s.set_nonblocking(true).expect("nonblocking");
                mio::net::TcpStream::from_std(s)
            })
            .collect();
        for (i, s) in socks.iter_mut().enumerate() {
            poll.registry()
                .register(s, Token(i), Interest::READABLE)
                .expect("register");
        }
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < expected {
            poll.poll(&mut events, Some(Duration::from_secs(10)))
                .expect("epoll_wait");
            assert!(!events.is_empty(), "nothing arrived for 10 s");
            for ev in &events {
                loop {
                    match socks[ev.token().0].read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("read: {e}"),
                    }
                }
            }
        }
        got
    });

    pin(0);
    let fds: Vec<i32> = senders.iter().map(|s| s.as_raw_fd()).collect();
    let mut ring = IoUring::new(4096).expect("io_uring_setup");
    let msg = vec![b'x'; size];
    let (mut each, mut plain, mut batched) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        std::thread::sleep(interval);
        let t0 = thread_cpu_ns();
        let out = match r % 3 {
            0 => {
                send_each(&fds, &msg);
                &mut each
            }
            1 => {
                send_plain(&fds, &msg);
                &mut plain
            }
            _ => {
                send_ring(&mut ring, &fds, &msg);
                &mut batched
            }
        };
        out.push((thread_cpu_ns() - t0) as f64 / subscribers as f64);
    }
    let got = reader.join().expect("reader");
    assert_eq!(got, expected, "every byte delivered");
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (e, p, b) = (median(&mut each), median(&mut plain), median(&mut batched));
    println!(
        "{subscribers} subscribers, {rounds} rounds every {interval:?}, {size} B: sender CPU per \
         delivery, median over rounds: sendmsg each {:.2} µs ({:.2}x io_uring), send each \
         {:.2} µs ({:.2}x), io_uring batch {:.2} µs",
        e / 1000.0,
        e / b,
        p / 1000.0,
        p / b,
        b / 1000.0,
    );
}
