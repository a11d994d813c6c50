//! sockudo-ws peer: current-thread runtime, one task per connection, a writer task per
//! subscriber fed by an unbounded channel (sockudo's `Message` shares its `Bytes` on clone).
//! The handshake uses sockudo-ws's own request parser, deflate negotiation and response
//! builder.
//!
//! `--deflate shared|dedicated` turns permessage-deflate on with sockudo's own modes:
//! `shared` (its compressor pool, no context takeover, 32 KiB window) and `dedicated` (a
//! compressor per connection with context takeover). sockudo compresses every message for
//! every subscriber: it has no compress-once fan-out.

use bytes::BytesMut;
use sockudo_ws::deflate::{DeflateConfig, negotiate_server_deflate};
use sockudo_ws::handshake::{build_response, generate_accept_key, parse_request};
use sockudo_ws::protocol::Message;
use sockudo_ws::{CompressedWebSocketStream, Compression, Config, WebSocketStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use uproar_peers::{Route, serve_single_threaded};

type Topics = uproar_peers::Topics<Message>;

fn main() {
    let topics = Topics::default();
    let policy = deflate_policy();
    serve_single_threaded(move |s, id| serve(s, topics.clone(), id, policy.clone()));
}

/// `--deflate MODE` from the command line: sockudo's server policy for that mode.
fn deflate_policy() -> Option<DeflateConfig> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--deflate" {
            let mode = match args.next().as_deref() {
                Some("shared") => Compression::Shared,
                Some("dedicated") => Compression::Dedicated,
                Some("off") => return None,
                other => panic!("--deflate takes off|shared|dedicated, not {other:?}"),
            };
            return mode.to_deflate_config();
        }
    }
    None
}

/// Read the upgrade request and answer it; the route and the negotiated deflate parameters,
/// or `None` after a 404 or an error.
async fn handshake(
    s: &mut TcpStream,
    policy: Option<&DeflateConfig>,
) -> Option<(Route, Option<DeflateConfig>)> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if s.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
        let Ok(parsed) = parse_request(&buf) else {
            return None;
        };
        let Some((req, _)) = parsed else { continue };
        let Some(route) = Route::of(req.path.as_ref()) else {
            let _ = s
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return None;
        };
        let agreed = policy
            .zip(req.extensions)
            .and_then(|(p, offers)| negotiate_server_deflate(offers, p));
        let header = agreed.as_ref().map(|a| a.to_response_header());
        let accept = generate_accept_key(req.key);
        s.write_all(&build_response(&accept, None, header.as_deref()))
            .await
            .ok()?;
        return Some((route, agreed.map(|a| a.config)));
    }
}

async fn serve(mut s: TcpStream, topics: Topics, id: u64, policy: Option<DeflateConfig>) {
    let _ = s.set_nodelay(true);
    let Some((route, agreed)) = handshake(&mut s, policy.as_ref()).await else {
        return;
    };
    // sockudo-ws's own split: a reader and a writer that do not block each other. The plain
    // and compressed streams are different types with the same methods.
    macro_rules! run {
        ($ws:expr) => {{
            let (mut stream, mut sink) = $ws.split();
            let is_data = |m: &Message| matches!(m, Message::Text(_) | Message::Binary(_));
            match route {
                Route::Echo => {
                    while let Some(Ok(m)) = stream.next().await {
                        if is_data(&m) && sink.send(m).await.is_err() {
                            break;
                        }
                    }
                }
                Route::Topic { name, subscribe } => {
                    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
                    if subscribe {
                        topics.subscribe(&name, id, tx);
                    }
                    let writer = tokio::task::spawn_local(async move {
                        while let Some(m) = rx.recv().await {
                            if sink.send(m).await.is_err() {
                                break;
                            }
                        }
                    });
                    while let Some(Ok(m)) = stream.next().await {
                        if is_data(&m) {
                            topics.publish(&name, &m);
                        }
                    }
                    topics.unsubscribe(&name, id);
                    writer.abort();
                }
            }
        }};
    }
    match agreed {
        Some(z) => run!(CompressedWebSocketStream::server(s, Config::default(), z)),
        None => run!(WebSocketStream::server(s, Config::default())),
    }
}
