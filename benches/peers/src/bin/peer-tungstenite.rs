//! tokio-tungstenite peer: current-thread runtime, one task per connection, a writer task per
//! subscriber fed by an unbounded channel (tungstenite's `Message` shares its bytes on clone).

use std::cell::RefCell;
use std::rc::Rc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use uproar_peers::{Route, serve_single_threaded};

type Topics = uproar_peers::Topics<Message>;

fn main() {
    let topics = Topics::default();
    serve_single_threaded(move |s, id| serve(s, topics.clone(), id));
}

async fn serve(s: TcpStream, topics: Topics, id: u64) {
    let _ = s.set_nodelay(true);
    let route = Rc::new(RefCell::new(None));
    let r2 = route.clone();
    // The callback's signature is tungstenite's; its error type is large by design.
    #[allow(clippy::result_large_err)]
    let cb = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        match Route::of(target) {
            Some(r) => {
                *r2.borrow_mut() = Some(r);
                Ok(resp)
            }
            None => {
                let mut e = ErrorResponse::new(Some("not found".into()));
                *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
                Err(e)
            }
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(s, cb).await else {
        return;
    };
    let route = route.borrow_mut().take();
    let (mut sink, mut stream) = ws.split();
    match route {
        Some(Route::Echo) => {
            while let Some(Ok(m)) = stream.next().await {
                if (m.is_text() || m.is_binary()) && sink.send(m).await.is_err() {
                    break;
                }
            }
        }
        Some(Route::Topic { name, subscribe }) => {
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
                if m.is_text() || m.is_binary() {
                    topics.publish(&name, &m);
                }
            }
            topics.unsubscribe(&name, id);
            writer.abort();
        }
        None => {}
    }
}
