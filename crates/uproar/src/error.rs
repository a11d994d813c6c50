//! Engine errors. Each one's message says what to change to fix it.

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// Why the server could not start (or a worker could not run).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The kernel refused to create an io_uring.
    IoUringUnavailable(io::Error),
    /// Creating the ring ran out of locked memory (kernels before 5.12 charge rings to
    /// `RLIMIT_MEMLOCK`).
    MemLock {
        /// The current soft limit in bytes.
        limit: u64,
        /// The kernel's error.
        source: io::Error,
    },
    /// The kernel lacks an io_uring operation or feature the engine needs.
    MissingOpcode {
        /// The operation.
        name: &'static str,
        /// The first kernel version that has it.
        kernel: &'static str,
    },
    /// The running kernel is older than a feature needs.
    KernelTooOld {
        /// The feature.
        feature: &'static str,
        /// The running kernel (major, minor).
        found: (u32, u32),
        /// The first kernel version that has it.
        needed: (u32, u32),
    },
    /// `RLIMIT_NOFILE` cannot hold `max_connections`.
    FdLimit {
        /// Descriptors needed: connections plus the engine's own.
        needed: u64,
        /// The hard limit.
        hard: u64,
    },
    /// The listen address could not be bound.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The kernel's error.
        source: io::Error,
    },
    /// Another socket, most likely another server, already listens on the address. (Sharing
    /// it on purpose, for a handover, needs [`Config::reuse_port`](crate::Config::reuse_port).)
    AddressInUse {
        /// The address.
        addr: SocketAddr,
    },
    /// A configuration value is out of range.
    Config(&'static str),
    /// Another system call failed, during the named step.
    Io(&'static str, io::Error),
    /// A worker thread panicked (the panic message was logged).
    WorkerPanicked,
}

impl Error {
    /// Map an `io_uring_setup` failure to what the operator should do.
    pub(crate) fn from_setup(e: io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::ENOMEM) => Error::MemLock {
                limit: crate::sys::memlock_limit(),
                source: e,
            },
            _ => Error::IoUringUnavailable(e),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::IoUringUnavailable(e) => write!(
                f,
                "io_uring is unavailable ({e}). Check the sysctl kernel.io_uring_disabled (0 allows \
                 it for everyone; 2 forbids it), and whether a container seccomp profile blocks \
                 io_uring_setup (Docker's default profile does since 25.0: run with a profile \
                 that allows io_uring_setup, io_uring_enter and io_uring_register)"
            ),
            Error::MemLock { limit, source } => write!(
                f,
                "io_uring setup ran out of locked memory ({source}; RLIMIT_MEMLOCK is {limit} \
                 bytes). Raise it (`ulimit -l unlimited`, or LimitMEMLOCK= in a systemd unit), \
                 lower ring_entries, or use Linux 5.12 or later, which does not charge rings to \
                 RLIMIT_MEMLOCK"
            ),
            Error::MissingOpcode { name, kernel } => write!(
                f,
                "the kernel does not support {name}, which the engine needs (added in Linux \
                 {kernel}); run on Linux 6.1 or later"
            ),
            Error::KernelTooOld {
                feature,
                found,
                needed,
            } => write!(
                f,
                "{feature} needs Linux {}.{} or later; this kernel is {}.{}",
                needed.0, needed.1, found.0, found.1
            ),
            Error::FdLimit { needed, hard } => write!(
                f,
                "max_connections needs {needed} file descriptors but RLIMIT_NOFILE's hard limit \
                 is {hard}: raise it (`ulimit -Hn`, LimitNOFILE= in a systemd unit, or \
                 /etc/security/limits.conf) or lower max_connections"
            ),
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::AddressInUse { addr } => write!(
                f,
                "cannot listen on {addr}: the address is in use by another process (another \
                 server on the same port would split clients between two unrelated sets of \
                 topics); stop it, pick another port, or share the port on purpose for a \
                 handover with reuse_port (the server's --reuse-port)"
            ),
            Error::Config(what) => write!(f, "invalid configuration: {what}"),
            Error::Io(step, e) => write!(f, "{step}: {e}"),
            Error::WorkerPanicked => f.write_str("a worker thread panicked"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::IoUringUnavailable(e)
            | Error::MemLock { source: e, .. }
            | Error::Bind { source: e, .. }
            | Error::Io(_, e) => Some(e),
            _ => None,
        }
    }
}
