//! Echo server: every message comes back as it was sent (text stays text). Used by the
//! Autobahn run, the real-client tests and the benchmarks.
//!
//! ```sh
//! cargo run --release -p uproar --example echo -- --listen 127.0.0.1:9001 [--threads N]
//! ```
//!
//! Options: `--listen ADDR`, `--threads N`, `--max-message-size BYTES`,
//! `--max-buffered-bytes BYTES`, `--max-connections N`, `--recv-buffer-size BYTES`,
//! `--recv-buffers N`, `--idle-timeout-ms MS`, `--handshake-timeout-ms MS`,
//! `--close-timeout-ms MS`, `--driver auto|io-uring|epoll` (default: `UPROAR_DRIVER`, else
//! auto), `--deflate off|shared|dedicated` (permessage-deflate; default off), `--tls-cert PEM --tls-key PEM` (serve wss://). It prints `listening on ADDR` once ready, and stops gracefully
//! when its standard input reaches end of file if started with `--stop-on-eof`.

use std::io::Read as _;
use std::time::Duration;

use uproar::{Ctx, Handler, Message, Server, Upgrade, UpgradeRequest, WebSocket};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Echo;

impl Handler for Echo {
    type Conn = ();

    fn on_upgrade<'r>(&mut self, _: &mut Ctx<()>, _: &UpgradeRequest<'r>) -> Upgrade<'r, ()> {
        Upgrade::accept(())
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, ()>, msg: Message<'_>) {
        let _ = ws.send(msg.kind(), msg.data());
    }
}

fn main() {
    let mut b = Server::builder();
    if let Ok(d) = std::env::var("UPROAR_DRIVER") {
        b = b.driver(d.parse().unwrap_or_else(|e| panic!("UPROAR_DRIVER: {e}")));
    }
    let mut stop_on_eof = false;
    let (mut cert, mut key) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        let num = |v: String| -> u64 { v.parse().unwrap_or_else(|_| panic!("bad number {v}")) };
        b = match a.as_str() {
            "--listen" => b.listen(val().parse().expect("--listen IP:PORT")),
            "--threads" => b.threads(num(val()) as usize),
            "--driver" => b.driver(val().parse().unwrap_or_else(|e| panic!("--driver: {e}"))),
            "--deflate" => b.deflate(val().parse().unwrap_or_else(|e| panic!("--deflate: {e}"))),
            "--max-message-size" => b.max_message_size(num(val())),
            "--max-buffered-bytes" => b.max_buffered_bytes(num(val()) as usize),
            "--max-connections" => b.max_connections(num(val()) as usize),
            "--recv-buffer-size" => b.recv_buffer_size(num(val()) as u32),
            "--recv-buffers" => b.recv_buffers(num(val()) as u16),
            "--idle-timeout-ms" => b.idle_timeout(Some(Duration::from_millis(num(val())))),
            "--handshake-timeout-ms" => b.handshake_timeout(Duration::from_millis(num(val()))),
            "--close-timeout-ms" => b.close_timeout(Duration::from_millis(num(val()))),
            "--tls-cert" => {
                cert = Some(val());
                b
            }
            "--tls-key" => {
                key = Some(val());
                b
            }
            "--stop-on-eof" => {
                stop_on_eof = true;
                b
            }
            other => panic!("unknown option {other}"),
        };
    }
    if let (Some(c), Some(k)) = (&cert, &key) {
        let tls = uproar::TlsConfig::from_pem_files(c.as_ref(), k.as_ref())
            .unwrap_or_else(|e| panic!("TLS: {e}"));
        b = b.tls(tls);
    }
    let server = match b.start(|_| Echo) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("echo: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {} ({})", server.local_addr(), server.driver());
    if stop_on_eof {
        let handle = server.handle();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            handle.shutdown(Duration::from_secs(2));
        });
    }
    if let Err(e) = server.join() {
        eprintln!("echo: {e}");
        std::process::exit(1);
    }
}
