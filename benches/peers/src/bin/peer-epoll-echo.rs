//! Raw TCP echo on epoll (mio, edge-triggered), no WebSocket: the kernel's floor for the
//! epoll driver's pattern on this machine. One thread, one read buffer shared by every
//! connection; per readable edge, reads until a short read, each read's
//! bytes written back at once with one `send`; what a full socket refuses waits for the
//! writable edge. A WebSocket server on epoll doing more work per message can at most
//! approach it.

use std::collections::HashMap;
use std::io::{self, Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use uproar_peers::listen_addr;

const LISTENER: Token = Token(usize::MAX);
const BUF: usize = 32 << 10;

struct Conn {
    stream: TcpStream,
    /// Bytes a full socket refused, sent first when it is writable again.
    pending: Vec<u8>,
}

impl Conn {
    /// Write `data` after anything pending; keep what the socket refuses. Err: drop it.
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.pending.extend_from_slice(data);
            return self.flush();
        }
        let n = write_some(&mut self.stream, data)?;
        self.pending.extend_from_slice(&data[n..]);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let n = write_some(&mut self.stream, &self.pending)?;
        self.pending.drain(..n);
        Ok(())
    }
}

/// Write as much of `data` as the socket takes now; how much that was.
fn write_some(stream: &mut TcpStream, data: &[u8]) -> io::Result<usize> {
    let mut at = 0;
    while at < data.len() {
        match stream.write(&data[at..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

fn main() {
    let std_listener = std::net::TcpListener::bind(listen_addr()).expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let mut listener = TcpListener::from_std(std_listener);
    let mut poll = Poll::new().expect("epoll_create");
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .expect("register listener");
    let mut events = Events::with_capacity(1024);
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 0usize;
    let mut buf = vec![0u8; BUF];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            assert_eq!(e.kind(), io::ErrorKind::Interrupted, "epoll_wait: {e}");
            continue;
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    let _ = stream.set_nodelay(true);
                    let t = Token(next);
                    next += 1;
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if poll.registry().register(&mut stream, t, interest).is_ok() {
                        conns.insert(
                            t.0,
                            Conn {
                                stream,
                                pending: Vec::new(),
                            },
                        );
                    }
                }
                continue;
            }
            let id = ev.token().0;
            let Some(c) = conns.get_mut(&id) else {
                continue;
            };
            let mut alive = !ev.is_writable() || c.flush().is_ok();
            if alive && (ev.is_readable() || ev.is_read_closed()) {
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => alive = false,
                        Ok(n) => {
                            alive = c.send(&buf[..n]).is_ok();
                            // A short read: drained until the next edge.
                            if alive && n == BUF {
                                continue;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => alive = false,
                    }
                    break;
                }
            }
            if !alive && let Some(mut c) = conns.remove(&id) {
                let _ = poll.registry().deregister(&mut c.stream);
            }
        }
    }
}
