//! The `uproar` binary where io_uring is denied, as in Docker's default seccomp profile
//! (since Engine 25.0), containerd 2's RuntimeDefault, Podman and gVisor: a seccomp filter
//! installed in the child before exec makes `io_uring_setup` fail with EPERM. In auto mode the
//! server falls back to epoll, says why, and serves; with `--driver io-uring` it refuses to
//! start with the error that says what to change.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use uproar_testkit::*;
use uproar_wire::DataKind;

/// `io_uring_setup` fails with EPERM; everything else is allowed.
fn deny_io_uring() -> BpfProgram {
    let filter = SeccompFilter::new(
        [(libc::SYS_io_uring_setup, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::try_from(std::env::consts::ARCH).expect("a seccomp architecture"),
    )
    .unwrap();
    filter.try_into().unwrap()
}

/// The server under the filter, with stderr captured (read it after the process ends).
fn sandboxed(args: &[&str]) -> Command {
    let prog = deny_io_uring();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uproar"));
    cmd.args(args)
        .env_remove("UPROAR_DRIVER")
        .env("RUST_LOG", "info")
        .env("UPROAR_SHUTDOWN_GRACE", "300ms")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure only installs the already-compiled filter
    // (prctl and seccomp system calls; no allocation, no lock).
    unsafe {
        cmd.pre_exec(move || {
            seccompiler::apply_filter(&prog).map_err(|e| std::io::Error::other(e.to_string()))
        });
    }
    cmd
}

fn stop(mut child: Child) -> String {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "exit status {status}; stderr:\n{err}");
    err
}

#[test]
fn auto_falls_back_to_epoll_where_io_uring_is_denied_and_serves() {
    let mut child = sandboxed(&["--listen", "127.0.0.1:0", "--threads", "2"])
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.ends_with("(epoll)\n"), "{line:?}");
    let addr: std::net::SocketAddr = line["listening on ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let (status, _, body) = http(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));
    let mut echo = Client::connect(addr, "/echo");
    for size in [1, 125, 126, 65535, 65536, 1 << 20] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        echo.send(DataKind::Binary, &payload);
        assert_eq!(echo.recv(), Got::Binary(payload));
    }
    let mut subs: Vec<Client> = (0..6)
        .map(|_| Client::connect(addr, "/ws/box?mode=sub"))
        .collect();
    let mut publisher = Client::connect(addr, "/ws/box?mode=pub");
    for i in 0..20 {
        publisher.send_text(&format!("m{i}"));
    }
    for s in &mut subs {
        for i in 0..20 {
            assert_eq!(s.recv(), Got::Text(format!("m{i}")));
        }
    }
    // Then the HTTP publisher (order holds per publisher, not across two on different workers).
    let req = b"POST /publish/box HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nlast";
    let (status, _, body) = http(addr, req);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    for s in &mut subs {
        assert_eq!(s.recv(), Got::Text("last".into()));
    }
    let (_, _, metrics) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(String::from_utf8_lossy(&metrics).contains("uproar_driver_info{driver=\"epoll\"} 1"));
    drop((echo, subs, publisher));
    let log = stop(child);
    // Said once, with the errno and what would enable io_uring.
    assert_eq!(log.matches("epoll driver runs").count(), 1, "{log}");
    assert!(log.contains("Operation not permitted"), "{log}");
    assert!(log.contains("kernel.io_uring_disabled"), "{log}");
    assert!(
        log.contains("io_uring_setup, io_uring_enter and io_uring_register"),
        "{log}"
    );
}

#[test]
fn forcing_io_uring_where_it_is_denied_fails_with_the_clear_error() {
    let out = sandboxed(&["--listen", "127.0.0.1:0", "--driver", "io-uring"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("io_uring is unavailable"), "{err}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(err.contains("kernel.io_uring_disabled"), "{err}");
    assert!(out.stdout.is_empty(), "never said it was listening");
}
