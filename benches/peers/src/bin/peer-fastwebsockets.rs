//! fastwebsockets peer: current-thread runtime; the upgrade is parsed with uproar-wire (the
//! handshake is not what is measured), then `WebSocket::after_handshake`. Echo writes every
//! frame on its own, as fastwebsockets does; broadcast copies the payload per subscriber into
//! its writer's channel (fastwebsockets frames own or borrow their payload, they cannot share).

use fastwebsockets::{
    FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload, Role, WebSocket,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use uproar_peers::{Route, serve_single_threaded};
use uproar_wire::handshake::{Request, validate_upgrade, write_response};

type Topics = uproar_peers::Topics<(OpCode, Vec<u8>)>;

fn main() {
    let topics = Topics::default();
    serve_single_threaded(move |s, id| serve(s, topics.clone(), id));
}

/// Read and answer the upgrade request; the route on success.
async fn handshake(s: &mut TcpStream) -> Option<Route> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if s.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
        let mut out = Vec::new();
        match Request::parse(&buf, 8192) {
            Ok(None) => continue,
            Ok(Some(req)) => {
                // Clients wait for the 101 before sending frames: nothing may follow the head.
                let route = Route::of(req.target()).filter(|_| req.head_len() == buf.len());
                match (validate_upgrade(&req), route) {
                    (Ok(up), Some(r)) => {
                        up.write_accept(&mut out, None);
                        s.write_all(&out).await.ok()?;
                        return Some(r);
                    }
                    (Err(e), _) => e.write_response(&mut out),
                    (Ok(_), None) => write_response(&mut out, 404, &[], b"not found\n"),
                }
                let _ = s.write_all(&out).await;
                return None;
            }
            Err(e) => {
                e.write_response(&mut out);
                let _ = s.write_all(&out).await;
                return None;
            }
        }
    }
}

async fn serve(mut s: TcpStream, topics: Topics, id: u64) {
    let _ = s.set_nodelay(true);
    let Some(route) = handshake(&mut s).await else {
        return;
    };
    match route {
        Route::Echo => {
            let mut ws = FragmentCollector::new(WebSocket::after_handshake(s, Role::Server));
            while let Ok(frame) = ws.read_frame().await {
                if frame.opcode == OpCode::Close {
                    break;
                }
                if matches!(frame.opcode, OpCode::Text | OpCode::Binary)
                    && ws.write_frame(frame).await.is_err()
                {
                    break;
                }
            }
        }
        Route::Topic { name, subscribe } => {
            let (r, w) = s.into_split();
            let (rd, mut wr) = fastwebsockets::after_handshake_split(r, w, Role::Server);
            let mut rd = FragmentCollectorRead::new(rd);
            let (tx, mut rx) = mpsc::unbounded_channel::<(OpCode, Vec<u8>)>();
            if subscribe {
                topics.subscribe(&name, id, tx);
            }
            let writer = tokio::task::spawn_local(async move {
                while let Some((op, data)) = rx.recv().await {
                    if wr
                        .write_frame(Frame::new(true, op, None, Payload::Owned(data)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
            // Control frames the reader must answer are dropped here: the load generator
            // sends none during a run.
            let mut sink = |_f: Frame<'_>| async { Ok::<(), fastwebsockets::WebSocketError>(()) };
            while let Ok(frame) = rd.read_frame(&mut sink).await {
                match frame.opcode {
                    OpCode::Close => break,
                    OpCode::Text | OpCode::Binary => {
                        // Cloned (copied) per subscriber, as before.
                        topics.publish(&name, &(frame.opcode, frame.payload.to_vec()));
                    }
                    _ => {}
                }
            }
            topics.unsubscribe(&name, id);
            writer.abort();
        }
    }
}
