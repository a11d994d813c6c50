//! The opening handshake (RFC 6455 §4): HTTP/1.1 request parsing with `httparse`, server-side
//! validation and responses, and the client side.

use core::fmt;
use std::hash::{BuildHasher, Hasher};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha1::{Digest, Sha1};

/// The GUID of RFC 6455 §1.3, appended to the key before hashing.
pub const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Most headers a request may carry; more is answered with 431. Why 64: browsers send about
/// 15, and a fixed array keeps parsing allocation-free.
pub const MAX_HEADERS: usize = 64;

/// Default cap on the request head (request line and headers), else 431. Why 8 KiB: the
/// common limit of HTTP servers (nginx's default buffer); cookies rarely exceed it.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8 << 10;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key ++ GUID)).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    let digest = h.finalize();
    let mut out = [0u8; 28];
    let n = B64
        .encode_slice(digest, &mut out)
        .expect("20 bytes encode to 28");
    debug_assert_eq!(n, 28);
    out
}

/// Why a handshake was refused; each maps to an HTTP status and a short reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Not parseable as HTTP/1.x (400).
    Malformed,
    /// The request head is over the size limit or has too many headers (431).
    HeadersTooLarge,
    /// An upgrade request whose method is not GET (400).
    MethodNotGet,
    /// An upgrade over HTTP/1.0 (400).
    NotHttp11,
    /// No `Host` header (400).
    MissingHost,
    /// `Connection` lacks the `upgrade` token (400).
    ConnectionNotUpgrade,
    /// `Upgrade` lacks the `websocket` token (400).
    UpgradeNotWebSocket,
    /// `Sec-WebSocket-Version` is missing or not 13 (426, with `Sec-WebSocket-Version: 13`).
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is missing, repeated, or not base64 of 16 bytes (400).
    BadKey,
}

impl HandshakeError {
    /// The HTTP status to answer with.
    pub const fn status(self) -> u16 {
        match self {
            HandshakeError::HeadersTooLarge => 431,
            HandshakeError::UnsupportedVersion => 426,
            _ => 400,
        }
    }

    /// A short reason, sent as the response body.
    pub const fn reason(self) -> &'static str {
        match self {
            HandshakeError::Malformed => "malformed HTTP request",
            HandshakeError::HeadersTooLarge => "request header fields too large",
            HandshakeError::MethodNotGet => "WebSocket upgrade must use GET",
            HandshakeError::NotHttp11 => "WebSocket upgrade needs HTTP/1.1",
            HandshakeError::MissingHost => "missing Host header",
            HandshakeError::ConnectionNotUpgrade => "Connection header must contain \"upgrade\"",
            HandshakeError::UpgradeNotWebSocket => "Upgrade header must contain \"websocket\"",
            HandshakeError::UnsupportedVersion => "unsupported WebSocket version (need 13)",
            HandshakeError::BadKey => "Sec-WebSocket-Key must be base64 of 16 bytes, sent once",
        }
    }

    /// Append the whole error response (status line, headers, reason as body) to `out`.
    pub fn write_response(self, out: &mut Vec<u8>) {
        let extra: &[(&str, &[u8])] = if self == HandshakeError::UnsupportedVersion {
            &[("Sec-WebSocket-Version", b"13")]
        } else {
            &[]
        };
        write_response(
            out,
            self.status(),
            extra,
            format!("{}\n", self.reason()).as_bytes(),
        );
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.reason())
    }
}

impl std::error::Error for HandshakeError {}

/// The standard reason phrase of the statuses this project sends.
pub fn status_text(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Append a complete HTTP/1.1 response with `Content-Length` and `Connection: close` when
/// the status is an error (4xx/5xx).
pub fn write_response(out: &mut Vec<u8>, status: u16, headers: &[(&str, &[u8])], body: &[u8]) {
    use std::io::Write as _;
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", status_text(status));
    if status >= 400 {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    let has_type = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    if !has_type && !body.is_empty() {
        out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
    }
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
    out.extend_from_slice(body);
}

/// A parsed HTTP/1.x request head, borrowing the receive buffer.
#[derive(Clone)]
pub struct Request<'b> {
    method: &'b str,
    target: &'b str,
    minor_version: u8,
    headers: [httparse::Header<'b>; MAX_HEADERS],
    count: usize,
    head_len: usize,
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("headers", &self.count)
            .finish()
    }
}

/// Case-insensitive search for `token` in a comma-separated header value.
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

impl<'b> Request<'b> {
    /// Parse a request head from the start of `buf`. `Ok(None)`: incomplete, read more. A head
    /// longer than `max_header_bytes` (complete or not) or with more than [`MAX_HEADERS`]
    /// headers is [`HandshakeError::HeadersTooLarge`].
    pub fn parse(
        buf: &'b [u8],
        max_header_bytes: usize,
    ) -> Result<Option<Request<'b>>, HandshakeError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let status = match req.parse(buf) {
            Ok(s) => s,
            Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeadersTooLarge),
            Err(_) => return Err(HandshakeError::Malformed),
        };
        let head_len = match status {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial if buf.len() >= max_header_bytes => {
                return Err(HandshakeError::HeadersTooLarge);
            }
            httparse::Status::Partial => return Ok(None),
        };
        if head_len > max_header_bytes {
            return Err(HandshakeError::HeadersTooLarge);
        }
        let method = req.method.ok_or(HandshakeError::Malformed)?;
        let target = req.path.ok_or(HandshakeError::Malformed)?;
        let minor_version = req.version.ok_or(HandshakeError::Malformed)?;
        let count = req.headers.len();
        let mut out = [httparse::EMPTY_HEADER; MAX_HEADERS];
        out[..count].copy_from_slice(req.headers);
        Ok(Some(Request {
            method,
            target,
            minor_version,
            headers: out,
            count,
            head_len,
        }))
    }

    /// The method (`GET`, `POST`, ...).
    pub fn method(&self) -> &'b str {
        self.method
    }

    /// The request target as sent: path and query.
    pub fn target(&self) -> &'b str {
        self.target
    }

    /// The path part of the target.
    pub fn path(&self) -> &'b str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    /// The query part of the target, without `?`.
    pub fn query(&self) -> Option<&'b str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub fn minor_version(&self) -> u8 {
        self.minor_version
    }

    /// Length of the head in bytes; a body (if any) starts there.
    pub fn head_len(&self) -> usize {
        self.head_len
    }

    /// Every header, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'b str, &'b [u8])> + '_ {
        self.headers[..self.count].iter().map(|h| (h.name, h.value))
    }

    /// Every value of the header `name` (case-insensitive).
    pub fn header_all(&self, name: &'static str) -> impl Iterator<Item = &'b [u8]> + '_ {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first value of the header `name` (case-insensitive).
    pub fn header(&self, name: &'static str) -> Option<&'b [u8]> {
        self.header_all(name).next()
    }

    /// Whether the request asks for a WebSocket (an `Upgrade: websocket` header or a
    /// `Sec-WebSocket-Key`). Such a request is validated with [`validate_upgrade`]; anything
    /// else is plain HTTP.
    pub fn wants_websocket(&self) -> bool {
        self.header_all("upgrade")
            .any(|v| has_token(v, "websocket"))
            || self.header("sec-websocket-key").is_some()
    }
}

/// A validated WebSocket upgrade request.
#[derive(Debug, Clone)]
pub struct Upgrade<'b> {
    key: &'b [u8],
    origin: Option<&'b [u8]>,
    request: Request<'b>,
}

impl<'b> Upgrade<'b> {
    /// The `Sec-WebSocket-Key` (24 base64 characters).
    pub fn key(&self) -> &'b [u8] {
        self.key
    }

    /// The `Origin` header, if any (browsers always send it).
    pub fn origin(&self) -> Option<&'b [u8]> {
        self.origin
    }

    /// The subprotocols offered in `Sec-WebSocket-Protocol`, in the client's order of
    /// preference, across all instances of the header.
    pub fn protocols(&self) -> impl Iterator<Item = &'b str> + '_ {
        self.request
            .header_all("sec-websocket-protocol")
            .flat_map(|v| v.split(|b| *b == b','))
            .filter_map(|t| core::str::from_utf8(t.trim_ascii()).ok())
            .filter(|t| !t.is_empty())
    }

    /// The extensions offered in `Sec-WebSocket-Extensions`, one entry per offer with its
    /// parameters (`permessage-deflate; client_max_window_bits`).
    pub fn extensions(&self) -> impl Iterator<Item = &'b str> + '_ {
        self.request
            .header_all("sec-websocket-extensions")
            .flat_map(|v| v.split(|b| *b == b','))
            .filter_map(|t| core::str::from_utf8(t.trim_ascii()).ok())
            .filter(|t| !t.is_empty())
    }

    /// The request it came from (path, query, other headers).
    pub fn request(&self) -> &Request<'b> {
        &self.request
    }

    /// Append the `101 Switching Protocols` response, with `protocol` as the chosen
    /// subprotocol (it should be one of [`protocols`](Self::protocols)).
    pub fn write_accept(&self, out: &mut Vec<u8>, protocol: Option<&str>) {
        write_accept(out, self.key, protocol);
    }

    /// [`write_accept`](Self::write_accept) with a `Sec-WebSocket-Extensions` response value
    /// (the negotiated extension, e.g. from [`crate::deflate::Agreed::response_value`]).
    pub fn write_accept_with_extensions(
        &self,
        out: &mut Vec<u8>,
        protocol: Option<&str>,
        extensions: Option<&str>,
    ) {
        write_accept(out, self.key, protocol);
        if let Some(e) = extensions {
            // Insert before the blank line that ends the head.
            out.truncate(out.len() - 2);
            out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
            out.extend_from_slice(e.as_bytes());
            out.extend_from_slice(b"\r\n\r\n");
        }
    }

    /// The raw `Sec-WebSocket-Extensions` header values, one per header line.
    pub fn extension_headers(&self) -> impl Iterator<Item = &'b [u8]> + '_ {
        self.request.header_all("sec-websocket-extensions")
    }
}

/// Validate a request that [`Request::wants_websocket`] as an RFC 6455 upgrade.
pub fn validate_upgrade<'b>(req: &Request<'b>) -> Result<Upgrade<'b>, HandshakeError> {
    if req.method != "GET" {
        return Err(HandshakeError::MethodNotGet);
    }
    if req.minor_version < 1 {
        return Err(HandshakeError::NotHttp11);
    }
    if req.header("host").is_none_or(|h| h.trim_ascii().is_empty()) {
        return Err(HandshakeError::MissingHost);
    }
    if !req
        .header_all("connection")
        .any(|v| has_token(v, "upgrade"))
    {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    if !req.header_all("upgrade").any(|v| has_token(v, "websocket")) {
        return Err(HandshakeError::UpgradeNotWebSocket);
    }
    let mut versions = req.header_all("sec-websocket-version");
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.trim_ascii() == b"13" => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }
    let mut keys = req.header_all("sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k.trim_ascii(),
        _ => return Err(HandshakeError::BadKey),
    };
    let mut raw = [0u8; 18];
    match B64.decode_slice(key, &mut raw) {
        Ok(16) if key.len() == 24 => {}
        _ => return Err(HandshakeError::BadKey),
    }
    Ok(Upgrade {
        key,
        origin: req.header("origin"),
        request: req.clone(),
    })
}

/// Append a `101 Switching Protocols` response for `key`.
pub fn write_accept(out: &mut Vec<u8>, key: &[u8], protocol: Option<&str>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&accept_key(key));
    if let Some(p) = protocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// 16 random bytes from the standard library's per-process random hash keys; good enough for
/// a handshake nonce or a masking seed, which need to be unpredictable to scripts, not secret.
pub fn random_bytes() -> [u8; 16] {
    let a = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(a);
    let b = h.finish();
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_le_bytes());
    out[8..].copy_from_slice(&b.to_le_bytes());
    out
}

/// Why a client handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientHandshakeError {
    /// The response is not parseable HTTP, or too large.
    Malformed,
    /// The server answered with this status instead of 101.
    Rejected(u16),
    /// 101 without `Upgrade: websocket` and `Connection: upgrade`.
    NotUpgraded,
    /// `Sec-WebSocket-Accept` missing or wrong.
    BadAccept,
    /// The server chose a subprotocol that was not offered.
    UnexpectedProtocol,
}

impl fmt::Display for ClientHandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientHandshakeError::Malformed => f.write_str("malformed handshake response"),
            ClientHandshakeError::Rejected(s) => {
                write!(f, "upgrade refused with HTTP {s} {}", status_text(*s))
            }
            ClientHandshakeError::NotUpgraded => {
                f.write_str("101 response without Upgrade/Connection headers")
            }
            ClientHandshakeError::BadAccept => f.write_str("wrong Sec-WebSocket-Accept"),
            ClientHandshakeError::UnexpectedProtocol => {
                f.write_str("server chose a subprotocol not offered")
            }
        }
    }
}

impl std::error::Error for ClientHandshakeError {}

/// The client side of the opening handshake.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    key: [u8; 24],
}

/// What the server's 101 response said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse<'b> {
    /// The chosen subprotocol, if any.
    pub protocol: Option<&'b str>,
    /// Length of the response head; WebSocket frames start there.
    pub head_len: usize,
    /// The `Sec-WebSocket-Extensions` value, if the server sent one (check it with
    /// [`crate::deflate::client_accepts`]).
    pub extensions: Option<&'b [u8]>,
}

impl ClientHandshake {
    /// A handshake whose key is base64 of `nonce` (16 random bytes, see [`random_bytes`]).
    pub fn new(nonce: [u8; 16]) -> ClientHandshake {
        let mut key = [0u8; 24];
        B64.encode_slice(nonce, &mut key)
            .expect("16 bytes encode to 24");
        ClientHandshake { key }
    }

    /// The `Sec-WebSocket-Key` sent.
    pub fn key(&self) -> &str {
        core::str::from_utf8(&self.key).expect("base64 is ASCII")
    }

    /// Append the upgrade request for `host` (with port, if not the default) and `target`
    /// (path and query).
    pub fn write_request(
        &self,
        out: &mut Vec<u8>,
        host: &str,
        target: &str,
        protocols: &[&str],
        extra_headers: &[(&str, &str)],
    ) {
        use std::io::Write as _;
        let _ = write!(
            out,
            "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n",
            self.key()
        );
        if !protocols.is_empty() {
            let _ = write!(out, "Sec-WebSocket-Protocol: {}\r\n", protocols.join(", "));
        }
        for (n, v) in extra_headers {
            let _ = write!(out, "{n}: {v}\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Check the server's response at the start of `buf`. `Ok(None)`: incomplete.
    pub fn parse_response<'b>(
        &self,
        buf: &'b [u8],
        offered: &[&str],
    ) -> Result<Option<ClientResponse<'b>>, ClientHandshakeError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() < DEFAULT_MAX_HEADER_BYTES * 8 => {
                return Ok(None);
            }
            _ => return Err(ClientHandshakeError::Malformed),
        };
        let code = resp.code.ok_or(ClientHandshakeError::Malformed)?;
        if code != 101 {
            return Err(ClientHandshakeError::Rejected(code));
        }
        let find = |name: &'static str| {
            resp.headers
                .iter()
                .filter(move |h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        if !find("upgrade").any(|v| has_token(v, "websocket"))
            || !find("connection").any(|v| has_token(v, "upgrade"))
        {
            return Err(ClientHandshakeError::NotUpgraded);
        }
        if find("sec-websocket-accept").next().map(|v| v.trim_ascii())
            != Some(&accept_key(&self.key)[..])
        {
            return Err(ClientHandshakeError::BadAccept);
        }
        let protocol = match find("sec-websocket-protocol").next() {
            None => None,
            Some(p) => {
                let p = core::str::from_utf8(p.trim_ascii())
                    .map_err(|_| ClientHandshakeError::UnexpectedProtocol)?;
                if !offered.contains(&p) {
                    return Err(ClientHandshakeError::UnexpectedProtocol);
                }
                Some(p)
            }
        };
        let extensions = find("sec-websocket-extensions").next();
        Ok(Some(ClientResponse {
            protocol,
            head_len,
            extensions,
        }))
    }
}
