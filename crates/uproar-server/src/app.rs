//! The broadcast server's handler: routes, origin and token checks, and what each kind of
//! connection may do.

use std::sync::Arc;

use uproar::{
    CloseCode, Ctx, DataKind, Handler, HttpRequest, Message, Response, Upgrade, UpgradeRequest,
    WebSocket,
};

use crate::metrics;

/// What the routes need to know, shared by every worker's handler.
#[derive(Debug)]
pub(crate) struct Settings {
    /// Origins allowed to open WebSockets; empty: any (and requests without `Origin`).
    pub(crate) allowed_origins: Vec<String>,
    /// Bearer token `POST /publish` needs, if set.
    pub(crate) publish_token: Option<String>,
    /// Whether WebSocket clients may publish to their topic.
    pub(crate) clients_can_publish: bool,
}

pub(crate) struct App {
    pub(crate) settings: Arc<Settings>,
}

/// A connection's route.
pub(crate) enum Route {
    Echo,
    Topic {
        name: String,
        subscribe: bool,
        publish: bool,
    },
}

/// Topic names: 1 to 128 characters from `A-Z a-z 0-9 _ - . :`; why: they appear in URLs
/// and metrics, and a bound keeps the registry's keys small.
fn valid_topic(t: &str) -> bool {
    (1..=128).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

fn mode(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|kv| kv.strip_prefix("mode="))
}

impl Handler for App {
    type Conn = Route;

    fn on_upgrade<'r>(
        &mut self,
        _: &mut Ctx<Route>,
        req: &UpgradeRequest<'r>,
    ) -> Upgrade<'r, Route> {
        let s = &self.settings;
        if !s.allowed_origins.is_empty() {
            let origin = req.origin().and_then(|o| std::str::from_utf8(o).ok());
            if !origin.is_some_and(|o| s.allowed_origins.iter().any(|a| a == o)) {
                return Upgrade::reject(403, "origin not allowed");
            }
        }
        if req.path() == "/echo" {
            return Upgrade::accept(Route::Echo);
        }
        let Some(name) = req.path().strip_prefix("/ws/") else {
            return Upgrade::reject(404, "no such route: use /ws/{topic} or /echo");
        };
        if !valid_topic(name) {
            return Upgrade::reject(
                400,
                "topic names are 1-128 characters of A-Z a-z 0-9 _ - . :",
            );
        }
        let (subscribe, publish) = match mode(req.query()) {
            None => (true, s.clients_can_publish),
            Some("sub") => (true, false),
            Some("pub") if s.clients_can_publish => (false, true),
            Some("pub") => return Upgrade::reject(403, "clients may not publish on this server"),
            Some(_) => return Upgrade::reject(400, "mode is sub or pub"),
        };
        Upgrade::accept(Route::Topic {
            name: name.to_owned(),
            subscribe,
            publish,
        })
    }

    fn on_open(&mut self, ws: &mut WebSocket<'_, Route>) {
        if let Route::Topic {
            name,
            subscribe: true,
            ..
        } = ws.data()
        {
            let name = name.clone();
            ws.subscribe(&name);
        }
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, Route>, msg: Message<'_>) {
        match ws.data() {
            Route::Echo => {
                let _ = ws.send(msg.kind(), msg.data());
            }
            Route::Topic {
                name,
                publish: true,
                ..
            } => {
                let name = name.clone();
                ws.publish(&name, msg.kind(), msg.data());
            }
            Route::Topic { .. } => ws.close(CloseCode::POLICY_VIOLATION, "receive-only connection"),
        }
    }

    fn on_http(&mut self, ctx: &mut Ctx<Route>, req: &HttpRequest<'_>) -> Response {
        let path = req.path();
        match (req.method(), path) {
            ("GET", "/") => Response::new(200)
                .header("Content-Type", "text/html; charset=utf-8")
                .body(crate::DEMO_PAGE.as_bytes()),
            ("GET", "/healthz") => Response::text(200, "ok\n"),
            ("GET", "/metrics") => Response::new(200)
                .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                .body(metrics::render(ctx.driver(), &ctx.all_stats()).into_bytes()),
            ("POST", p) if p.starts_with("/publish/") => self.publish(ctx, req),
            (_, "/" | "/healthz" | "/metrics") => Response::text(405, "method not allowed\n"),
            (_, p) if p.starts_with("/publish/") => Response::text(405, "use POST\n"),
            _ => Response::text(404, "not found\n"),
        }
    }
}

impl App {
    /// `POST /publish/{topic}`: the body to every subscriber of the topic, on every worker.
    fn publish(&self, ctx: &mut Ctx<Route>, req: &HttpRequest<'_>) -> Response {
        if let Some(token) = &self.settings.publish_token {
            let given = req
                .header("authorization")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| constant_time_eq(g.trim().as_bytes(), token.as_bytes())) {
                return Response::text(401, "publishing needs Authorization: Bearer TOKEN\n")
                    .header("WWW-Authenticate", "Bearer");
            }
        }
        let topic = &req.path()["/publish/".len()..];
        if !valid_topic(topic) {
            return Response::text(
                400,
                "topic names are 1-128 characters of A-Z a-z 0-9 _ - . :\n",
            );
        }
        let is_text = req
            .header("content-type")
            .is_some_and(|v| v.len() >= 5 && v[..5].eq_ignore_ascii_case(b"text/"));
        let kind = if is_text {
            if simdutf8::basic::from_utf8(req.body()).is_err() {
                return Response::text(400, "a text/* body must be UTF-8\n");
            }
            DataKind::Text
        } else {
            DataKind::Binary
        };
        ctx.publish(topic, kind, req.body());
        // Subscribers on every worker of this node, from the node's topic table (no round
        // trip to the other workers); "node" stays true once several nodes share topics.
        let node = ctx.node_subscribers(topic);
        Response::new(200)
            .header("Content-Type", "application/json")
            .body(format!("{{\"topic\":\"{topic}\",\"node_subscribers\":{node}}}\n").into_bytes())
    }
}

/// Compare secrets in time that depends on their lengths only, never on where they differ,
/// so response times do not reveal a token byte by byte.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_compares_whole_secrets() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"X3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
