//! Test helpers shared by the engine's and the server's tests: a blocking WebSocket client
//! over std's `TcpStream` driven by uproar-wire's client role (a codec tested on its own
//! against the RFC's examples), HTTP helpers, and running a server binary as a process.

#![allow(missing_docs, missing_debug_implementations)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use uproar_wire::conn::{Config as WireConfig, Connection, Event};
use uproar_wire::handshake::{ClientHandshake, random_bytes};
use uproar_wire::{CloseCode, DataKind, OpCode};

/// What a client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(u16, String),
    /// The server closed the TCP connection.
    Eof,
}

#[derive(Debug)]
pub struct Client<S = TcpStream> {
    pub stream: S,
    pub conn: Connection,
    buf: Vec<u8>,
    got: std::collections::VecDeque<Got>,
}

/// Read an HTTP response head (and its body by Content-Length); returns (status, head, body).
pub fn read_response(stream: &mut impl Read) -> (u16, String, Vec<u8>) {
    let (status, head, body, _) = read_response_and_rest(stream);
    (status, head, body)
}

/// Like [`read_response`], also returning the bytes that arrived after the response (frames
/// that followed a 101 in the same read).
pub fn read_response_and_rest(stream: &mut impl Read) -> (u16, String, Vec<u8>, Vec<u8>) {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).expect("read response");
        assert!(n > 0, "connection closed before a response: {data:?}");
        data.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let status: u16 = head[9..12].parse().expect("status code");
    let len = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    while data.len() < head_end + len {
        let n = stream.read(&mut chunk).expect("read body");
        assert!(n > 0, "connection closed inside the body");
        data.extend_from_slice(&chunk[..n]);
    }
    let body = data[head_end..head_end + len].to_vec();
    let rest = data[head_end + len..].to_vec();
    (status, head, body, rest)
}

/// Send `request` on a fresh connection and read the response.
pub fn http(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    read_response(&mut s)
}

/// Whether the peer closed the connection (EOF or reset) within `within`.
pub fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 4096];
    let end = Instant::now() + within;
    loop {
        match stream.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
        if Instant::now() > end {
            return false;
        }
    }
}

pub mod tls;

impl Client {
    pub fn connect(addr: SocketAddr, path: &str) -> Client {
        Self::connect_with(addr, path, &[]).expect("upgrade")
    }

    /// Connect and upgrade; `Err((status, body))` if the server refused.
    pub fn connect_with(
        addr: SocketAddr,
        path: &str,
        protocols: &[&str],
    ) -> Result<Client, (u16, String)> {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client::upgrade(stream, &addr.to_string(), path, protocols)
    }
}

impl<S: Read + Write> Client<S> {
    /// Upgrade over a connected stream (plain TCP, or TLS: [`tls::connect`]).
    pub fn upgrade(
        mut stream: S,
        host: &str,
        path: &str,
        protocols: &[&str],
    ) -> Result<Client<S>, (u16, String)> {
        let hs = ClientHandshake::new(random_bytes());
        let mut req = Vec::new();
        hs.write_request(&mut req, host, path, protocols, &[]);
        stream.write_all(&req).unwrap();
        let (status, head, body, rest) = read_response_and_rest(&mut stream);
        if status != 101 {
            return Err((status, String::from_utf8_lossy(&body).into()));
        }
        hs.parse_response(head.as_bytes(), protocols)
            .expect("valid 101")
            .expect("complete 101");
        Ok(Client {
            stream,
            conn: Connection::client(WireConfig::default(), 42),
            buf: rest,
            got: Default::default(),
        })
    }

    pub fn send(&mut self, kind: DataKind, payload: &[u8]) {
        let mut out = Vec::new();
        let (head, key) = self
            .conn
            .data_head(kind.opcode(), true, payload.len() as u64)
            .unwrap();
        out.extend_from_slice(head.as_bytes());
        let start = out.len();
        out.extend_from_slice(payload);
        if let Some(k) = key {
            uproar_wire::mask::unmask(&mut out[start..], k, 0);
        }
        self.stream.write_all(&out).unwrap();
    }

    pub fn send_text(&mut self, s: &str) {
        self.send(DataKind::Text, s.as_bytes())
    }

    /// Write a frame exactly as given (`mask` None for an unmasked, invalid client frame).
    pub fn send_raw(&mut self, fin: bool, op: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
        let mut out = Vec::new();
        uproar_wire::frame::encode_frame(&mut out, fin, op, payload, mask);
        self.stream.write_all(&out).unwrap();
    }

    /// Start the close handshake (a no-op if the codec already answered the server's close).
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        let _ = self.conn.queue_close(code, reason);
        self.flush_control();
    }

    fn flush_control(&mut self) {
        while let Some(f) = self.conn.poll_transmit() {
            let _ = self.stream.write_all(f.as_bytes());
        }
    }

    /// The next thing the server sent (Eof if it closed the connection).
    pub fn recv(&mut self) -> Got {
        loop {
            if let Some(g) = self.got.pop_front() {
                return g;
            }
            let mut pos = 0;
            let mut data = std::mem::take(&mut self.buf);
            loop {
                match self.conn.handle_read(&mut data, &mut pos) {
                    Ok(Some(ev)) => self.got.push_back(match ev {
                        Event::Message {
                            kind: DataKind::Text,
                            data,
                        } => Got::Text(String::from_utf8(data.to_vec()).unwrap()),
                        Event::Message { data, .. } => Got::Binary(data.to_vec()),
                        Event::Ping(p) => Got::Ping(p.to_vec()),
                        Event::Pong(p) => Got::Pong(p.to_vec()),
                        Event::Close { code, reason } => Got::Close(code.0, reason.to_owned()),
                        Event::Fragment { .. } => unreachable!("whole delivery"),
                        Event::Compressed { .. } => unreachable!("no extension negotiated"),
                    }),
                    Ok(None) => break,
                    Err(e) => panic!("server sent an invalid frame: {e}"),
                }
            }
            self.flush_control();
            if !self.got.is_empty() {
                continue;
            }
            let mut chunk = vec![0u8; 64 << 10];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Got::Eof,
                Ok(n) => self.buf = chunk[..n].to_vec(),
                // A TLS peer that closed without close_notify reads as UnexpectedEof.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return Got::Eof;
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Receive until a close frame; returns its code and reason (asserting EOF follows).
    pub fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.recv() {
                Got::Close(c, r) => {
                    assert_eq!(
                        self.recv(),
                        Got::Eof,
                        "the server closes TCP after the close"
                    );
                    return (c, r);
                }
                Got::Eof => panic!("EOF without a close frame"),
                _ => {}
            }
        }
    }
}

/// Wait until `cond` holds, up to `within`.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Close with a reset (SO_LINGER 0) instead of a FIN.
pub fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid linger struct, its size, on a socket we own.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// A running server process; for the examples, dropping `stdin` asks for a graceful shutdown.
pub struct Example {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub addr: SocketAddr,
}

pub fn example_path(name: &str) -> PathBuf {
    // Integration tests run from target/<profile>/deps; cargo builds examples beside it.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} not built (cargo test builds examples)",
        path.display()
    );
    path
}

pub fn run_example(name: &str, args: &[&str]) -> Example {
    let mut all = vec!["--stop-on-eof"];
    all.extend_from_slice(args);
    run_binary(&example_path(name), &all)
}

/// Run a server binary on 127.0.0.1:0 (it must print `listening on ADDR` first, maybe followed
/// by more words).
pub fn run_binary(path: &std::path::Path, args: &[&str]) -> Example {
    run_command(Command::new(path), args)
}

/// [`run_binary`] with a command prepared by the caller (environment, say).
pub fn run_command(mut cmd: Command, args: &[&str]) -> Example {
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    Example {
        stdin: child.stdin.take(),
        child,
        addr,
    }
}

impl Example {
    /// Shut down gracefully and check the process exits 0.
    pub fn stop(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "exit status {status}");
    }

    /// Send SIGTERM and check the process exits 0.
    pub fn stop_with_sigterm(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "exit status {status}");
    }

    pub fn proc_status(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(field))
            .map(|v| v.trim().trim_end_matches(" kB").parse().unwrap())
            .unwrap()
    }

    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
