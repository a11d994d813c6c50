//! The HTTP side of a connection: the upgrade request and its answer, plain requests on the
//! same port and their responses.

use std::borrow::Cow;

use uproar_wire::handshake::{self, Request};

/// A validated upgrade request, for [`Handler::on_upgrade`].
#[derive(Debug)]
pub struct UpgradeRequest<'r> {
    pub(crate) inner: &'r handshake::Upgrade<'r>,
}

impl<'r> UpgradeRequest<'r> {
    /// The path of the request target.
    pub fn path(&self) -> &'r str {
        self.inner.request().path()
    }

    /// The query of the request target, without `?`.
    pub fn query(&self) -> Option<&'r str> {
        self.inner.request().query()
    }

    /// The `Origin` header (browsers always send it).
    pub fn origin(&self) -> Option<&'r [u8]> {
        self.inner.origin()
    }

    /// Subprotocols offered, in the client's order of preference.
    pub fn protocols(&self) -> impl Iterator<Item = &'r str> + '_ {
        self.inner.protocols()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &'static str) -> Option<&'r [u8]> {
        self.inner.request().header(name)
    }
}

/// The answer to an upgrade request.
#[derive(Debug)]
pub enum Upgrade<'r, C> {
    /// Open the WebSocket with this per-connection state, and optionally a subprotocol (one of
    /// those offered).
    Accept {
        /// The connection's state, given to every callback.
        conn: C,
        /// The chosen subprotocol.
        protocol: Option<&'r str>,
    },
    /// Refuse with an HTTP status and a short reason (sent as the body).
    Reject {
        /// The status, e.g. 403 or 404.
        status: u16,
        /// Why.
        reason: Cow<'static, str>,
    },
}

impl<'r, C> Upgrade<'r, C> {
    /// Accept with `conn` as the connection's state.
    pub fn accept(conn: C) -> Upgrade<'r, C> {
        Upgrade::Accept {
            conn,
            protocol: None,
        }
    }

    /// Refuse with `status` and `reason`.
    pub fn reject(status: u16, reason: impl Into<Cow<'static, str>>) -> Upgrade<'r, C> {
        Upgrade::Reject {
            status,
            reason: reason.into(),
        }
    }
}

/// A plain HTTP request (not an upgrade), with its whole body.
#[derive(Debug)]
pub struct HttpRequest<'r> {
    pub(crate) head: &'r Request<'r>,
    pub(crate) body: &'r [u8],
}

impl<'r> HttpRequest<'r> {
    /// `GET`, `POST`, ...
    pub fn method(&self) -> &'r str {
        self.head.method()
    }

    /// The path of the request target.
    pub fn path(&self) -> &'r str {
        self.head.path()
    }

    /// The query of the request target, without `?`.
    pub fn query(&self) -> Option<&'r str> {
        self.head.query()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &'static str) -> Option<&'r [u8]> {
        self.head.header(name)
    }

    /// The body (`Content-Length` bytes).
    pub fn body(&self) -> &'r [u8] {
        self.body
    }
}

/// A plain HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    headers: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    body: Cow<'static, [u8]>,
}

impl Response {
    /// A response with `status` and an empty body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Cow::Borrowed(&[]),
        }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<Cow<'static, str>>) -> Response {
        let body = match body.into() {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        };
        Response::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body)
    }

    /// Add a header.
    pub fn header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Cow<'static, [u8]>>) -> Response {
        self.body = body.into();
        self
    }

    /// The status.
    pub fn status(&self) -> u16 {
        self.status
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>, close: bool) {
        let mut headers: Vec<(&str, &[u8])> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_ref(), v.as_bytes()))
            .collect();
        if close && self.status < 400 {
            headers.push(("Connection", b"close"));
        }
        handshake::write_response(out, self.status, &headers, &self.body);
    }
}
