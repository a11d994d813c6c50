//! sockudo-ws peer: current-thread runtime, one task per connection, a writer task per
//! subscriber fed by an unbounded channel (sockudo's `Message` shares its `Bytes` on clone).
//! The handshake uses sockudo-ws's own request parser and response builder.

use bytes::BytesMut;
use sockudo_ws::handshake::{build_response, generate_accept_key, parse_request};
use sockudo_ws::protocol::Message;
use sockudo_ws::{Config, WebSocketStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use uproar_peers::{Route, serve_single_threaded};

type Topics = uproar_peers::Topics<Message>;

fn main() {
    let topics = Topics::default();
    serve_single_threaded(move |s, id| serve(s, topics.clone(), id));
}

/// Read the upgrade request and answer it; the route, or `None` after a 404 or an error.
async fn handshake(s: &mut TcpStream) -> Option<Route> {
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
        let accept = generate_accept_key(req.key);
        s.write_all(&build_response(&accept, None, None))
            .await
            .ok()?;
        return Some(route);
    }
}

async fn serve(mut s: TcpStream, topics: Topics, id: u64) {
    let _ = s.set_nodelay(true);
    let Some(route) = handshake(&mut s).await else {
        return;
    };
    let ws = WebSocketStream::server(s, Config::default());
    // sockudo-ws's own split: a reader and a writer that do not block each other.
    let (mut stream, mut sink) = ws.split();
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
}
