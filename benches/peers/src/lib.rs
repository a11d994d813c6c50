//! Peer servers for side-by-side measurements. Each runs on one thread (a current-thread
//! runtime or one io_uring loop), so per-core figures compare fairly with uproar pinned to
//! one core. Routes follow uproar's server: `/echo` echoes; `/ws/{topic}` subscribes to the
//! topic and publishes what the client sends (`?mode=pub`: publish only).

use std::net::SocketAddr;

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
