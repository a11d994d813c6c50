//! Every system call the load generator makes beyond sockets: file-descriptor limits, CPU and
//! memory figures from /proc. The only `unsafe` of this crate.

use std::io;

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns `(soft, hard)` after.
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit; raising the soft limit up to the hard one is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim = want;
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds (user + system) of a `/proc/.../stat` file.
fn stat_cpu(path: &str) -> io::Result<f64> {
    let s = std::fs::read_to_string(path)?;
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("bad stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| io::Error::other("bad stat"))
    };
    // After the name: state is field 3, utime 14, stime 15.
    Ok((ticks(11)? + ticks(12)?) as f64 / clock_ticks())
}

/// CPU seconds used so far by process `pid` (all its threads).
pub fn process_cpu(pid: u32) -> io::Result<f64> {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// CPU seconds used so far by one thread of this process.
pub fn thread_cpu(tid: i32) -> io::Result<f64> {
    stat_cpu(&format!("/proc/self/task/{tid}/stat"))
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Resident set size of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// The anonymous part of `pid`'s resident set (heap, stacks, anonymous maps), KiB: what its
/// connections cost. The rest is file-backed (the binary's code, first touched when a code
/// path first runs) and shared memory.
pub fn rss_anon_kib(pid: u32) -> io::Result<u64> {
    status_kib(pid, "RssAnon:")
}

fn status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

/// The local port range for outgoing connections (each connection to one server address needs
/// its own port).
pub fn ephemeral_ports() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().filter_map(|v| v.parse::<u64>().ok());
    let (lo, hi) = (it.next()?, it.next()?);
    Some(hi.saturating_sub(lo) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_figures_of_this_process() {
        let pid = std::process::id();
        let before = process_cpu(pid).unwrap();
        // Spin until 0.1 s of CPU shows, for at most 30 s of wall time: on a loaded machine
        // this thread may get a small share of a core.
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while process_cpu(pid).unwrap() - before < 0.1 && t0.elapsed().as_secs() < 30 {
            for _ in 0..100_000 {
                x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(7));
            }
        }
        std::hint::black_box(x);
        assert!(
            process_cpu(pid).unwrap() - before >= 0.1,
            "busy loop shows as CPU time"
        );
        assert!(thread_cpu(gettid()).unwrap() > 0.0);
        assert!(rss_kib(pid).unwrap() > 100);
        let anon = rss_anon_kib(pid).unwrap();
        assert!(anon > 0 && anon <= rss_kib(pid).unwrap());
        // 8 MiB touched on the heap shows in the anonymous part.
        let touched = std::hint::black_box(vec![1u8; 8 << 20]);
        assert!(rss_anon_kib(pid).unwrap() >= anon + 7 * 1024);
        drop(touched);
        let (soft, hard) = raise_nofile().unwrap();
        assert_eq!(soft, hard);
    }
}
