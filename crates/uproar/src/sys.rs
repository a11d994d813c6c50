//! Every libc call the engine makes outside the ring: sockets, resource limits, anonymous
//! memory, eventfd, and the kernel version. Each `unsafe` block is one syscall on arguments
//! that are checked or owned here.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn set_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` lives across the call and its exact size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A listening TCP socket with `SO_REUSEPORT` (each worker binds its own; the kernel spreads
/// connections between them) and `TCP_NODELAY` (inherited by accepted sockets on Linux, so
/// small frames are not held back by Nagle's algorithm).
pub(crate) fn reuseport_listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let fd = bound_socket(addr, true)?;
    // SAFETY: listen(2) on a bound socket we own.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(TcpListener::from(fd))
}

/// A socket bound to `addr` without `SO_REUSEPORT`, not listening: binding fails with
/// `EADDRINUSE` if any other socket holds the address, whatever its options. Returned as a
/// `TcpListener` only so its address can be read; drop it to free the address.
pub(crate) fn exclusive_bind(addr: SocketAddr) -> io::Result<TcpListener> {
    bound_socket(addr, false).map(TcpListener::from)
}

/// A TCP socket bound to `addr` with `SO_REUSEADDR` (a restart is not refused over old
/// connections in TIME_WAIT), `TCP_NODELAY`, and `SO_REUSEPORT` if `reuseport`.
fn bound_socket(addr: SocketAddr, reuseport: bool) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    set_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if reuseport {
        set_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    set_opt(raw, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    if addr.is_ipv6() {
        set_opt(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    // SAFETY: zeroed sockaddr_storage is a valid (empty) address; filled in below.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: `storage` holds a valid address of `len` bytes for this socket's family.
    cvt(unsafe {
        libc::bind(
            raw,
            (&storage as *const libc::sockaddr_storage).cast(),
            len as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// `shutdown(2)`: wakes every operation pending on the socket (recv gets EOF, send gets EPIPE).
pub(crate) fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutdown(2) on a descriptor the caller owns; errors (ENOTCONN) are harmless.
    unsafe { libc::shutdown(fd, how) };
}

/// Close a descriptor the caller owns and will not use again.
pub(crate) fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd`, no operation on it is in flight, and it is not used after.
    unsafe { libc::close(fd) };
}

/// Non-blocking send of a short message on a socket with nothing else queued (a 101 response,
/// an HTTP error to a connection we will not keep). Returns how many bytes were written.
pub(crate) fn send_now(fd: RawFd, data: &[u8]) -> usize {
    send(fd, data).unwrap_or(0)
}

/// Non-blocking send of one buffer (`send(2)` with `MSG_DONTWAIT | MSG_NOSIGNAL`): the epoll
/// driver's call when a connection has one chunk to send (a broadcast delivery). Why not
/// `sendmsg` with one iovec: the kernel then copies in a message header and imports an iovec
/// array, and `bcast-floor` measured `send` 4-6% cheaper per delivery.
pub(crate) fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for reads of its length for the duration of the call.
    let n = unsafe {
        libc::send(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Non-blocking gathering send (`sendmsg(2)` with `MSG_DONTWAIT | MSG_NOSIGNAL`): the epoll
/// driver's one call per connection and turn. Why not `writev`: on a socket, `writev` goes
/// through the file layer first (file position lock, `rw_verify_area`, fsnotify), which
/// `sendmsg` skips; a peer that is gone answers `EPIPE` rather than raising `SIGPIPE`.
pub(crate) fn send_vectored(fd: RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: a zeroed msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` on Unix (std guarantees it), and the kernel
    // only reads through the pointer.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    // SAFETY: `msg` points at `bufs.len()` valid iovecs that outlive the call.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns (soft, hard) after.
pub(crate) fn raise_nofile() -> io::Result<(u64, u64)> {
    // SAFETY: zeroed rlimit is valid; getrlimit fills it.
    let mut lim: libc::rlimit = unsafe { zeroed() };
    // SAFETY: `lim` is a valid rlimit to write to.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit to the hard one is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Ok((lim.rlim_cur as u64, lim.rlim_max as u64))
}

/// The soft `RLIMIT_MEMLOCK` in bytes (`u64::MAX` for unlimited).
pub(crate) fn memlock_limit() -> u64 {
    // SAFETY: zeroed rlimit is valid; getrlimit fills it.
    let mut lim: libc::rlimit = unsafe { zeroed() };
    // SAFETY: `lim` is a valid rlimit to write to.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return 0;
    }
    lim.rlim_cur as u64
}

/// The running kernel's version as (major, minor), from uname(2).
pub(crate) fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: zeroed utsname is valid; uname fills it with NUL-terminated strings.
    let mut uts: libc::utsname = unsafe { zeroed() };
    // SAFETY: `uts` is a valid utsname to write to.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    let release: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let release = String::from_utf8_lossy(&release);
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// An anonymous private mapping, unmapped on drop. Page-aligned, zero-filled.
#[derive(Debug)]
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    /// Map `len` bytes; `populate` faults every page in now (so the hot path never takes a
    /// page fault and the memory shows in RSS from the start, as the fixed cost it is).
    pub(crate) fn anon(len: usize, populate: bool) -> io::Result<Mmap> {
        let flags =
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: an anonymous mapping at an address of the kernel's choosing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmap {
            ptr: NonNull::new(p.cast()).expect("mmap returned a null address"),
            len,
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping made in `anon`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A non-blocking eventfd, used to wake a worker from other threads.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd(2); the result is checked and owned at once.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: `fd` was just returned by eventfd(2) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add 1 to an eventfd's counter, waking its reader.
pub(crate) fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes the 8 bytes of `one`, which lives across the call.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}
