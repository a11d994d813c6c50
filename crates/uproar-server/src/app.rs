//! The broadcast server's handler: routes, origin and token checks, and what each kind of
//! connection may do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use uproar::{
    CloseCode, Ctx, DataKind, Handler, HttpRequest, Message, Response, Upgrade, UpgradeRequest,
    WebSocket,
};

use crate::auth::{self, Auth, Denied};
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
    /// JWT verification, when required.
    pub(crate) auth: Option<Auth>,
    /// Per-connection limits on what clients publish, when set.
    pub(crate) rate: Option<RateLimit>,
    pub(crate) counters: Counters,
    /// The demo page, with its token field shown when auth is on.
    pub(crate) demo_page: String,
    /// The broker bridge's state, in a cluster.
    pub(crate) cluster: Option<Arc<uproar_cluster::ClusterStats>>,
}

/// Token buckets for each client connection: sustained rates, with a burst of one second's
/// worth.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateLimit {
    /// Messages per second (0: no limit).
    pub(crate) messages: f64,
    /// Payload bytes per second (0: no limit).
    pub(crate) bytes: f64,
    /// Over the limit: close with 1008 "rate limit" (true), or drop the message and count it.
    pub(crate) close: bool,
}

/// What the server counts beyond the engine's counters (rare events: relaxed atomics).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Upgrades and publishes refused for their token, by [`Denied`] reason.
    pub(crate) auth_denied: [AtomicU64; 4],
    /// Upgrades or publishes a valid token did not allow (the topic is not in its claims).
    pub(crate) auth_forbidden: AtomicU64,
    /// Connections closed for going over the rate limit.
    pub(crate) rate_limit_closes: AtomicU64,
    /// Messages dropped for going over the rate limit.
    pub(crate) rate_limit_drops: AtomicU64,
    /// Connections closed when their token expired.
    pub(crate) token_expired_closes: AtomicU64,
    /// SIGHUP reloads of the TLS certificates: done, and failed (the previous ones kept).
    pub(crate) tls_reloads: AtomicU64,
    pub(crate) tls_reload_failures: AtomicU64,
}

impl Counters {
    fn deny(&self, d: Denied) {
        self.auth_denied[d.index()].fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) struct App {
    pub(crate) settings: Arc<Settings>,
}

/// A connection: its route, and what only some connections need, boxed so an idle
/// subscriber's slot stays small.
pub(crate) struct Conn {
    pub(crate) route: Route,
    extra: Option<Box<Extra>>,
}

struct Extra {
    /// Seconds the token has left at the upgrade.
    expires_in: Option<u64>,
    /// When it expires (set at open).
    expires_at: Option<Instant>,
    bucket: Option<Bucket>,
    /// Closed for the rate limit (what the peer still sends is not counted again).
    limited: bool,
}

/// A connection's token buckets.
struct Bucket {
    messages: f64,
    bytes: f64,
    last: Instant,
}

impl Bucket {
    fn new(r: &RateLimit, now: Instant) -> Bucket {
        Bucket {
            messages: r.messages,
            bytes: r.bytes,
            last: now,
        }
    }

    /// Take one message of `len` bytes if the buckets allow it. The byte bucket may go into
    /// debt by one message (a message larger than a second's worth passes when the bucket is
    /// full, and the next waits until the debt is paid), so no size is refused for ever.
    fn take(&mut self, r: &RateLimit, now: Instant, len: usize) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        if r.messages > 0.0 {
            self.messages = (self.messages + dt * r.messages).min(r.messages);
            if self.messages < 1.0 {
                return false;
            }
        }
        if r.bytes > 0.0 {
            self.bytes = (self.bytes + dt * r.bytes).min(r.bytes);
            if self.bytes <= 0.0 {
                return false;
            }
            self.bytes -= len as f64;
        }
        if r.messages > 0.0 {
            self.messages -= 1.0;
        }
        true
    }
}

/// A connection's route.
pub(crate) enum Route {
    Echo,
    Topic {
        /// A `Box<str>`, two words where a `String` is three: it sits in every slot.
        name: Box<str>,
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
    type Conn = Conn;

    fn on_upgrade<'r>(
        &mut self,
        ctx: &mut Ctx<Conn>,
        req: &UpgradeRequest<'r>,
    ) -> Upgrade<'r, Conn> {
        let s = &self.settings;
        let grant = match &s.auth {
            None => None,
            Some(a) => {
                let token = auth::token_of(req.query(), req.header("authorization"));
                match token.ok_or(Denied::Missing).and_then(|t| a.verify(t)) {
                    Ok(g) => Some(g),
                    Err(d) => {
                        s.counters.deny(d);
                        return Upgrade::reject(401, d.reason());
                    }
                }
            }
        };
        let route = match self.route(req, grant.as_ref()) {
            Ok(r) => r,
            Err(rejected) => return rejected,
        };
        let bucket = s.rate.as_ref().map(|r| Bucket::new(r, ctx.now()));
        let expires_in = grant.map(|g| g.remaining_secs());
        let extra = (bucket.is_some() || expires_in.is_some()).then(|| {
            Box::new(Extra {
                expires_in,
                expires_at: None,
                bucket,
                limited: false,
            })
        });
        Upgrade::accept(Conn { route, extra })
    }

    fn on_open(&mut self, ws: &mut WebSocket<'_, Conn>) {
        if let Some(secs) = ws.data().extra.as_ref().and_then(|e| e.expires_in) {
            // The token's expiry is enforced while connected, too.
            let at = ws.ctx().now() + Duration::from_secs(secs);
            if let Some(e) = ws.data_mut().extra.as_mut() {
                e.expires_at = Some(at);
            }
            ws.close_at(at, CloseCode::POLICY_VIOLATION, "token expired");
        }
        if let Route::Topic {
            name,
            subscribe: true,
            ..
        } = &ws.data().route
        {
            let name = name.clone();
            ws.subscribe(&name);
        }
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, Conn>, msg: Message<'_>) {
        if let Some(r) = &self.settings.rate {
            let now = ws.ctx().now();
            let len = msg.data().len();
            let (ok, already) = match ws.data_mut().extra.as_deref_mut() {
                Some(Extra {
                    bucket: Some(b),
                    limited,
                    ..
                }) => {
                    let ok = !(*limited && r.close) && b.take(r, now, len);
                    (ok, std::mem::replace(limited, !ok || *limited))
                }
                _ => (true, false),
            };
            if !ok {
                if already && r.close {
                    // Closing for the limit already: what the peer still sends is dropped.
                    return;
                }
                if r.close {
                    self.settings
                        .counters
                        .rate_limit_closes
                        .fetch_add(1, Ordering::Relaxed);
                    ws.close(CloseCode::POLICY_VIOLATION, "rate limit");
                } else {
                    self.settings
                        .counters
                        .rate_limit_drops
                        .fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
        match &ws.data().route {
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
            Route::Topic { .. } if self.settings.auth.is_some() => {
                self.settings
                    .counters
                    .auth_forbidden
                    .fetch_add(1, Ordering::Relaxed);
                ws.close(
                    CloseCode::POLICY_VIOLATION,
                    "not allowed to publish to this topic",
                );
            }
            Route::Topic { .. } => ws.close(CloseCode::POLICY_VIOLATION, "receive-only connection"),
        }
    }

    fn on_close(
        &mut self,
        ctx: &mut Ctx<Conn>,
        _: uproar::ConnId,
        conn: Conn,
        ev: uproar::CloseEvent<'_>,
    ) {
        let expired = conn
            .extra
            .and_then(|e| e.expires_at)
            .is_some_and(|at| ctx.now() >= at);
        if expired
            && ev.initiator == uproar::Initiator::Local
            && ev.code == CloseCode::POLICY_VIOLATION
        {
            self.settings
                .counters
                .token_expired_closes
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_http(&mut self, ctx: &mut Ctx<Conn>, req: &HttpRequest<'_>) -> Response {
        let path = req.path();
        match (req.method(), path) {
            ("GET", "/") => Response::new(200)
                .header("Content-Type", "text/html; charset=utf-8")
                .body(self.settings.demo_page.as_bytes().to_vec()),
            // In a cluster, a node cut off from the broker is unhealthy (503), so a load
            // balancer can prefer the others; it still serves its own subscribers.
            ("GET", "/healthz") => match &self.settings.cluster {
                Some(c) if !c.connected() => Response::text(
                    503,
                    "broker disconnected: local delivery only, messages to other nodes are lost\n",
                ),
                _ => Response::text(200, "ok\n"),
            },
            ("GET", "/metrics") => Response::new(200)
                .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                .body(
                    metrics::render(
                        ctx.driver(),
                        &ctx.all_stats(),
                        &self.settings.counters,
                        self.settings.cluster.as_deref(),
                    )
                    .into_bytes(),
                ),
            ("POST", p) if p.starts_with("/publish/") => self.publish(ctx, req),
            (_, "/" | "/healthz" | "/metrics") => Response::text(405, "method not allowed\n"),
            (_, p) if p.starts_with("/publish/") => Response::text(405, "use POST\n"),
            _ => Response::text(404, "not found\n"),
        }
    }
}

impl App {
    /// The route of an upgrade, as its token (if auth is on) allows.
    fn route<'r>(
        &self,
        req: &UpgradeRequest<'r>,
        grant: Option<&auth::Grant>,
    ) -> Result<Route, Upgrade<'r, Conn>> {
        let s = &self.settings;
        if !s.allowed_origins.is_empty() {
            let origin = req.origin().and_then(|o| std::str::from_utf8(o).ok());
            if !origin.is_some_and(|o| s.allowed_origins.iter().any(|a| a == o)) {
                return Err(Upgrade::reject(403, "origin not allowed"));
            }
        }
        if req.path() == "/echo" {
            return Ok(Route::Echo);
        }
        let Some(name) = req.path().strip_prefix("/ws/") else {
            return Err(Upgrade::reject(
                404,
                "no such route: use /ws/{topic} or /echo",
            ));
        };
        if !valid_topic(name) {
            return Err(Upgrade::reject(
                400,
                "topic names are 1-128 characters of A-Z a-z 0-9 _ - . :",
            ));
        }
        // With auth, the token's claims say what this connection may do on the topic.
        let may_sub = grant.is_none_or(|g| g.may_subscribe(name));
        let may_pub = s.clients_can_publish && grant.is_none_or(|g| g.may_publish(name));
        let forbidden = |why| {
            s.counters.auth_forbidden.fetch_add(1, Ordering::Relaxed);
            Err(Upgrade::reject(403, why))
        };
        let (subscribe, publish) = match mode(req.query()) {
            None if may_sub => (true, may_pub),
            Some("sub") if may_sub => (true, false),
            None | Some("sub") => {
                return forbidden("the token does not allow subscribing to this topic");
            }
            Some("pub") if may_pub => (false, true),
            Some("pub") if !s.clients_can_publish => {
                return Err(Upgrade::reject(
                    403,
                    "clients may not publish on this server",
                ));
            }
            Some("pub") => return forbidden("the token does not allow publishing to this topic"),
            Some(_) => return Err(Upgrade::reject(400, "mode is sub or pub")),
        };
        Ok(Route::Topic {
            name: name.into(),
            subscribe,
            publish,
        })
    }
}

impl App {
    /// `POST /publish/{topic}`: the body to every subscriber of the topic, on every worker.
    fn publish(&self, ctx: &mut Ctx<Conn>, req: &HttpRequest<'_>) -> Response {
        let topic = &req.path()["/publish/".len()..];
        let s = &self.settings;
        if s.publish_token.is_some() || s.auth.is_some() {
            // The static token, or a JWT whose publish claim covers the topic.
            let given = auth::token_of(None, req.header("authorization"));
            let is_static = given
                .zip(s.publish_token.as_ref())
                .is_some_and(|(g, t)| constant_time_eq(g.as_bytes(), t.as_bytes()));
            if !is_static {
                let jwt = s
                    .auth
                    .as_ref()
                    .map(|a| given.ok_or(Denied::Missing).and_then(|t| a.verify(t)));
                match jwt {
                    Some(Ok(g)) if g.may_publish(topic) => {}
                    Some(Ok(_)) => {
                        s.counters.auth_forbidden.fetch_add(1, Ordering::Relaxed);
                        return Response::text(
                            403,
                            "the token does not allow publishing to this topic\n",
                        );
                    }
                    Some(Err(d)) => {
                        s.counters.deny(d);
                        return Response::text(401, format!("{}\n", d.reason()))
                            .header("WWW-Authenticate", "Bearer");
                    }
                    None => {
                        return Response::text(
                            401,
                            "publishing needs Authorization: Bearer TOKEN\n",
                        )
                        .header("WWW-Authenticate", "Bearer");
                    }
                }
            }
        }
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

    /// The server's part of every connection's slot (the engine's is tested in the engine):
    /// 32 bytes, a route and one pointer.
    #[test]
    fn a_connection_adds_32_bytes_to_its_slot() {
        assert!(
            size_of::<super::Conn>() <= 32,
            "{}",
            size_of::<super::Conn>()
        );
    }

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
