//! Negotiating permessage-deflate (RFC 7692 sections 5 and 7.1) for both roles.
//!
//! `Sec-WebSocket-Extensions` is a comma-separated list of extension offers, in the client's
//! order of preference, possibly spread over several header lines; each offer is a name and
//! `;`-separated parameters, each a token with an optional `=value`, where the value may be a
//! token or a quoted string (RFC 6455 section 9.1). An offer with an unknown or duplicate
//! parameter, a window outside 8-15, a value on a flag or no value where one is required is
//! declined (that offer, not the handshake); the first acceptable one wins.

use std::fmt::Write as _;

/// The extension's name.
pub const NAME: &str = "permessage-deflate";

/// A client's `client_max_window_bits` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBits {
    /// Not offered: the server may not limit the client's window.
    Absent,
    /// Offered without a value: the client accepts any limit the server picks.
    Any,
    /// Offered with a value: the client compresses with at most this window.
    Max(u8),
}

/// One valid permessage-deflate offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// `server_no_context_takeover`: the client asks the server to reset its compressor after
    /// every message.
    pub server_no_context_takeover: bool,
    /// `client_no_context_takeover`: the client will reset its compressor after every message.
    pub client_no_context_takeover: bool,
    /// `server_max_window_bits=N`: the server must compress with at most this window.
    pub server_max_window_bits: Option<u8>,
    /// `client_max_window_bits[=N]`.
    pub client_max_window_bits: ClientBits,
}

/// Why an offer was declined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declined {
    /// The header is not a valid extension list (this and every later offer in it are lost).
    Syntax,
    /// A parameter this implementation does not know.
    UnknownParameter,
    /// A parameter given twice.
    DuplicateParameter,
    /// A window size outside 8-15, not in its canonical form, or missing where required.
    BadWindowBits,
    /// A value on a parameter that takes none.
    ValueOnFlag,
}

/// What both sides agreed, from either side's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The server resets its compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message.
    pub client_no_context_takeover: bool,
    /// The window the server compresses with, at most (8-15; 15 when not negotiated).
    pub server_max_window_bits: u8,
    /// The window the client compresses with, at most (8-15; 15 when not negotiated).
    pub client_max_window_bits: u8,
    /// Whether the response carries `client_max_window_bits` (it may only if offered).
    pub(crate) announce_client_bits: bool,
    /// Whether the response carries `server_max_window_bits`.
    pub(crate) announce_server_bits: bool,
}

/// How a server answers offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerPolicy {
    /// Always reset both directions after every message: the response carries
    /// `server_no_context_takeover` and `client_no_context_takeover` whether or not offered
    /// (RFC 7692 7.1.1.1 and 7.1.1.2 allow it), so no window outlives a message and one
    /// compressor per thread can serve every connection.
    pub no_context_takeover: bool,
    /// The largest window the server compresses with (9-15). A smaller one costs less memory
    /// per compressor; an offer asking for less is honoured.
    pub server_max_window_bits: u8,
    /// Ask clients that allow it (`client_max_window_bits` offered) to compress with at most
    /// this window (8-15), so a per-connection inflater's window can be this small; 15: no
    /// limit asked.
    pub client_max_window_bits: u8,
}

impl ServerPolicy {
    /// The policy for broadcast: no context takeover either way, full windows.
    pub const SHARED: ServerPolicy = ServerPolicy {
        no_context_takeover: true,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
}

/// A parameter: its name and, if given, its value (unquoted).
type Param<'a> = (&'a str, Option<String>);

/// Split a header value into the extension list's elements, each as (name, parameters),
/// honouring quoted strings. `None` if the value is not a valid list.
fn elements(value: &[u8]) -> Option<Vec<(&str, Vec<Param<'_>>)>> {
    let s = std::str::from_utf8(value).ok()?;
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let ows = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| -> Option<&str> {
        let start = *i;
        while *i < b.len() && is_tchar(b[*i]) {
            *i += 1;
        }
        (*i > start).then(|| &s[start..*i])
    };
    loop {
        ows(&mut i);
        if i == b.len() {
            break;
        }
        if b[i] == b',' {
            // Empty list elements are allowed by the `#` rule.
            i += 1;
            continue;
        }
        let name = token(&mut i)?;
        let mut params = Vec::new();
        loop {
            ows(&mut i);
            if i == b.len() || b[i] == b',' {
                break;
            }
            if b[i] != b';' {
                return None;
            }
            i += 1;
            ows(&mut i);
            let pname = token(&mut i)?;
            ows(&mut i);
            let mut value = None;
            if i < b.len() && b[i] == b'=' {
                i += 1;
                ows(&mut i);
                if i < b.len() && b[i] == b'"' {
                    i += 1;
                    let mut v = String::new();
                    loop {
                        match b.get(i)? {
                            b'"' => {
                                i += 1;
                                break;
                            }
                            b'\\' => {
                                v.push(*b.get(i + 1)? as char);
                                i += 2;
                            }
                            &c => {
                                v.push(c as char);
                                i += 1;
                            }
                        }
                    }
                    // After unescaping, the value must still be a token (RFC 6455 9.1).
                    if v.is_empty() || !v.bytes().all(is_tchar) {
                        return None;
                    }
                    value = Some(v);
                } else {
                    value = Some(token(&mut i)?.to_owned());
                }
            }
            params.push((pname, value));
        }
        out.push((name, params));
    }
    Some(out)
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// A window size in its canonical form: "8" to "15".
fn window_bits(v: &str) -> Option<u8> {
    match v.parse::<u8>() {
        Ok(n @ 8..=15) if !v.starts_with('0') => Some(n),
        _ => None,
    }
}

fn parse_offer(params: &[Param<'_>]) -> Result<Offer, Declined> {
    let mut o = Offer {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: None,
        client_max_window_bits: ClientBits::Absent,
    };
    let mut seen = [false; 4];
    for (name, value) in params {
        let k = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return Err(Declined::UnknownParameter),
        };
        if std::mem::replace(&mut seen[k], true) {
            return Err(Declined::DuplicateParameter);
        }
        match (k, value.as_deref()) {
            (0 | 1, Some(_)) => return Err(Declined::ValueOnFlag),
            (0, None) => o.server_no_context_takeover = true,
            (1, None) => o.client_no_context_takeover = true,
            (2, v) => {
                o.server_max_window_bits =
                    Some(v.and_then(window_bits).ok_or(Declined::BadWindowBits)?);
            }
            (_, None) => o.client_max_window_bits = ClientBits::Any,
            (_, Some(v)) => {
                o.client_max_window_bits =
                    ClientBits::Max(window_bits(v).ok_or(Declined::BadWindowBits)?);
            }
        }
    }
    Ok(o)
}

/// Every permessage-deflate offer in `headers` (the values of each `Sec-WebSocket-Extensions`
/// line, in order), parsed or declined, in the client's order of preference. Offers of other
/// extensions are skipped.
pub fn offers<'a>(headers: impl IntoIterator<Item = &'a [u8]>) -> Vec<Result<Offer, Declined>> {
    let mut out = Vec::new();
    for h in headers {
        match elements(h) {
            None => out.push(Err(Declined::Syntax)),
            Some(list) => out.extend(
                list.iter()
                    .filter(|(name, _)| name.eq_ignore_ascii_case(NAME))
                    .map(|(_, params)| parse_offer(params)),
            ),
        }
    }
    out
}

impl ServerPolicy {
    /// Answer one valid offer under this policy.
    pub fn accept(&self, o: &Offer) -> Agreed {
        let own = self.server_max_window_bits.clamp(9, 15);
        let server_bits = o.server_max_window_bits.map_or(own, |n| n.min(own));
        let (client_bits, announce_client_bits) = match o.client_max_window_bits {
            ClientBits::Absent => (15, false),
            ClientBits::Any => (
                self.client_max_window_bits,
                self.client_max_window_bits < 15,
            ),
            ClientBits::Max(n) => {
                let m = n.min(self.client_max_window_bits);
                (m, m < n)
            }
        };
        Agreed {
            server_no_context_takeover: self.no_context_takeover || o.server_no_context_takeover,
            client_no_context_takeover: self.no_context_takeover || o.client_no_context_takeover,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits,
            announce_client_bits,
            announce_server_bits: o.server_max_window_bits.is_some() || server_bits < 15,
        }
    }

    /// The first acceptable offer in `headers`, answered: `None` if there is none (the
    /// connection then runs without compression).
    pub fn negotiate<'a>(&self, headers: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreed> {
        offers(headers)
            .iter()
            .find_map(|o| o.as_ref().ok().map(|o| self.accept(o)))
    }
}

impl Agreed {
    /// The response header's value, e.g. `permessage-deflate; server_no_context_takeover`.
    pub fn response_value(&self) -> String {
        let mut v = String::from(NAME);
        if self.server_no_context_takeover {
            v.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            v.push_str("; client_no_context_takeover");
        }
        if self.announce_server_bits {
            let _ = write!(
                v,
                "; server_max_window_bits={}",
                self.server_max_window_bits
            );
        }
        if self.announce_client_bits {
            let _ = write!(
                v,
                "; client_max_window_bits={}",
                self.client_max_window_bits
            );
        }
        v
    }

    /// Append the whole response header line (`Sec-WebSocket-Extensions: ...\r\n`).
    pub fn write_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
        out.extend_from_slice(self.response_value().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Why a client refuses a server's extension response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// Not a valid extension list, or more than one extension.
    Malformed,
    /// An extension the client did not offer.
    NotOffered,
    /// A parameter the offer did not allow (unknown, duplicate, a window over what was
    /// offered, `client_max_window_bits` when the offer had none).
    BadParameter,
}

/// A client's offer (the value of its `Sec-WebSocket-Extensions` header).
pub fn client_offer(o: &Offer) -> String {
    let mut v = String::from(NAME);
    if o.server_no_context_takeover {
        v.push_str("; server_no_context_takeover");
    }
    if o.client_no_context_takeover {
        v.push_str("; client_no_context_takeover");
    }
    if let Some(n) = o.server_max_window_bits {
        let _ = write!(v, "; server_max_window_bits={n}");
    }
    match o.client_max_window_bits {
        ClientBits::Absent => {}
        ClientBits::Any => v.push_str("; client_max_window_bits"),
        ClientBits::Max(n) => {
            let _ = write!(v, "; client_max_window_bits={n}");
        }
    }
    v
}

/// Check a server's `Sec-WebSocket-Extensions` response lines against what the client
/// offered: `Ok(None)` if the server declined (no extension), the agreement otherwise.
pub fn client_accepts<'a>(
    offered: &Offer,
    headers: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<Agreed>, ResponseError> {
    let mut found = None;
    for h in headers {
        for (name, params) in elements(h).ok_or(ResponseError::Malformed)? {
            if !name.eq_ignore_ascii_case(NAME) {
                return Err(ResponseError::NotOffered);
            }
            if found.is_some() {
                return Err(ResponseError::Malformed);
            }
            found = Some(parse_offer(&params).map_err(|_| ResponseError::BadParameter)?);
        }
    }
    let Some(r) = found else {
        return Ok(None);
    };
    if let (Some(n), Some(limit)) = (r.server_max_window_bits, offered.server_max_window_bits)
        && n > limit
    {
        return Err(ResponseError::BadParameter);
    }
    if offered.server_no_context_takeover && !r.server_no_context_takeover {
        return Err(ResponseError::BadParameter);
    }
    let client_bits = match (r.client_max_window_bits, offered.client_max_window_bits) {
        (ClientBits::Absent, ClientBits::Max(n)) => n,
        (ClientBits::Absent, _) => 15,
        (ClientBits::Any, _) | (_, ClientBits::Absent) => return Err(ResponseError::BadParameter),
        (ClientBits::Max(n), ClientBits::Max(limit)) if n > limit => {
            return Err(ResponseError::BadParameter);
        }
        (ClientBits::Max(n), _) => n,
    };
    Ok(Some(Agreed {
        server_no_context_takeover: r.server_no_context_takeover,
        client_no_context_takeover: r.client_no_context_takeover
            || offered.client_no_context_takeover,
        server_max_window_bits: r.server_max_window_bits.unwrap_or(15),
        client_max_window_bits: client_bits,
        announce_client_bits: !matches!(r.client_max_window_bits, ClientBits::Absent),
        announce_server_bits: r.server_max_window_bits.is_some(),
    }))
}
