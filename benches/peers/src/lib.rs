//! Peer servers for side-by-side measurements. Each runs on one thread (a current-thread
//! runtime or one io_uring loop), so per-core figures compare fairly with uproar pinned to
//! one core. Routes follow uproar's server: `/echo` echoes; `/ws/{topic}` subscribes to the
//! topic and publishes what the client sends (`?mode=pub`: publish only).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::sync::mpsc::UnboundedSender;

/// A topic's subscribers: ids and the channels feeding their writer tasks.
type Subscribers<M> = Vec<(u64, UnboundedSender<M>)>;

/// The broadcast peers' topics, shared by the tasks of one current-thread runtime.
#[derive(Debug)]
pub struct Topics<M>(Rc<RefCell<HashMap<String, Subscribers<M>>>>);

impl<M> Clone for Topics<M> {
    fn clone(&self) -> Self {
        Topics(self.0.clone())
    }
}

impl<M> Default for Topics<M> {
    fn default() -> Self {
        Topics(Rc::default())
    }
}

impl<M: Clone> Topics<M> {
    /// Add subscriber `id` to `topic`.
    pub fn subscribe(&self, topic: &str, id: u64, tx: UnboundedSender<M>) {
        self.0
            .borrow_mut()
            .entry(topic.to_owned())
            .or_default()
            .push((id, tx));
    }

    /// Queue `msg` to every subscriber of `topic` (each gets a clone).
    pub fn publish(&self, topic: &str, msg: &M) {
        if let Some(subs) = self.0.borrow().get(topic) {
            for (_, tx) in subs {
                let _ = tx.send(msg.clone());
            }
        }
    }

    /// Remove subscriber `id` from `topic`.
    pub fn unsubscribe(&self, topic: &str, id: u64) {
        if let Some(subs) = self.0.borrow_mut().get_mut(topic) {
            subs.retain(|(i, _)| *i != id);
        }
    }
}

/// Route of a request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Echo every message.
    Echo,
    /// A topic; `subscribe` false for `?mode=pub`.
    Topic { name: String, subscribe: bool },
}

impl Route {
    /// Route for a request target, `None` for anything else (404).
    pub fn of(target: &str) -> Option<Route> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if path == "/echo" {
            return Some(Route::Echo);
        }
        let name = path.strip_prefix("/ws/").filter(|n| !n.is_empty())?;
        let subscribe = !query.split('&').any(|kv| kv == "mode=pub");
        Some(Route::Topic {
            name: name.to_owned(),
            subscribe,
        })
    }
}

/// `--listen ADDR` from the command line (default 127.0.0.1:9001).
pub fn listen_addr() -> SocketAddr {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:9001".to_owned();
    while let Some(a) = args.next() {
        if a == "--listen" {
            addr = args.next().expect("--listen ADDR");
        }
    }
    addr.parse().expect("--listen takes IP:PORT")
}

/// Run `on_conn(stream, id)` as a task for every accepted connection, all on one thread
/// (a current-thread runtime with a `LocalSet`, so handlers may share `Rc` state).
pub fn serve_single_threaded<F, Fut>(mut on_conn: F)
where
    F: FnMut(tokio::net::TcpStream, u64) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let listener = tokio::net::TcpListener::bind(listen_addr())
            .await
            .expect("bind");
        let mut id = 0u64;
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    id += 1;
                    tokio::task::spawn_local(on_conn(s, id));
                }
                // Out of file descriptors, say: back off instead of spinning or dying.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::of("/echo"), Some(Route::Echo));
        assert_eq!(
            Route::of("/ws/news"),
            Some(Route::Topic {
                name: "news".into(),
                subscribe: true
            })
        );
        assert_eq!(
            Route::of("/ws/news?mode=pub"),
            Some(Route::Topic {
                name: "news".into(),
                subscribe: false
            })
        );
        assert_eq!(Route::of("/ws/"), None);
        assert_eq!(Route::of("/"), None);
    }
}
