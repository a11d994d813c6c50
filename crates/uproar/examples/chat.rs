//! A chat room: `ws://HOST:PORT/chat?name=NAME` joins; every text message is sent to everyone
//! in the room as `NAME: TEXT`, joins and leaves are announced. Each message is encoded once
//! ([`Frame`]) and queued to every member by reference.
//!
//! ```sh
//! cargo run --release -p uproar --example chat -- --listen 127.0.0.1:9002
//! ```
//!
//! The room lives on a worker thread, so this example runs one worker; a room across cores
//! is what the pub/sub layer is for.

use std::io::Read as _;
use std::time::Duration;

use uproar::{
    CloseEvent, ConnId, Ctx, DataKind, Frame, Handler, Message, Server, Upgrade, UpgradeRequest,
    WebSocket,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A member's name.
struct Member {
    name: String,
}

/// The room: its members in join order.
#[derive(Default)]
struct Chat {
    members: Vec<ConnId>,
}

impl Chat {
    /// Encode `text` once and queue it to every member.
    fn broadcast(&self, ctx: &mut Ctx<Member>, text: &str) {
        let frame = Frame::new(DataKind::Text, text.as_bytes());
        for &id in &self.members {
            let _ = ctx.send_frame(id, &frame);
        }
    }
}

impl Handler for Chat {
    type Conn = Member;

    fn on_upgrade<'r>(
        &mut self,
        _: &mut Ctx<Member>,
        req: &UpgradeRequest<'r>,
    ) -> Upgrade<'r, Member> {
        if req.path() != "/chat" {
            return Upgrade::reject(404, "the room is at /chat?name=NAME");
        }
        let name = req
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("name=")))
            .filter(|n| {
                !n.is_empty() && n.len() <= 32 && n.bytes().all(|b| b.is_ascii_alphanumeric())
            });
        match name {
            Some(n) => Upgrade::accept(Member { name: n.to_owned() }),
            None => Upgrade::reject(400, "pick a name: letters and digits, at most 32"),
        }
    }

    fn on_open(&mut self, ws: &mut WebSocket<'_, Member>) {
        self.members.push(ws.id());
        let line = format!("* {} joined ({} here)", ws.data().name, self.members.len());
        self.broadcast(ws.ctx(), &line);
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, Member>, msg: Message<'_>) {
        if let Some(text) = msg.as_text() {
            let line = format!("{}: {text}", ws.data().name);
            self.broadcast(ws.ctx(), &line);
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<Member>, id: ConnId, m: Member, _: CloseEvent<'_>) {
        self.members.retain(|&x| x != id);
        self.broadcast(ctx, &format!("* {} left", m.name));
    }
}

fn main() {
    let mut addr = "127.0.0.1:9002".to_owned();
    let mut driver = std::env::var("UPROAR_DRIVER").unwrap_or_else(|_| "auto".into());
    let mut stop_on_eof = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => addr = args.next().expect("--listen IP:PORT"),
            "--driver" => driver = args.next().expect("--driver auto|io-uring|epoll"),
            "--stop-on-eof" => stop_on_eof = true,
            other => panic!("unknown option {other}"),
        }
    }
    let server = Server::builder()
        .listen(addr.parse().expect("--listen IP:PORT"))
        .driver(driver.parse().unwrap_or_else(|e| panic!("--driver: {e}")))
        .threads(1)
        .start(|_| Chat::default())
        .unwrap_or_else(|e| {
            eprintln!("chat: {e}");
            std::process::exit(1)
        });
    println!("listening on {} ({})", server.local_addr(), server.driver());
    if stop_on_eof {
        let handle = server.handle();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            handle.shutdown(Duration::from_secs(2));
        });
    }
    server.join().expect("chat server");
}
