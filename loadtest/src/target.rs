//! The `ws://host:port/path` a run targets.

use std::net::{SocketAddr, ToSocketAddrs};

/// A parsed `ws://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Value for the `Host` header (`host:port`).
    pub host: String,
    /// Path and query, `/` if none.
    pub path: String,
    /// Resolved address.
    pub addr: SocketAddr,
    /// `wss://`.
    pub tls: bool,
}

impl Target {
    /// Parse `ws://HOST[:PORT][/PATH]` or `wss://...` (default ports 80 and 443).
    pub fn parse(url: &str) -> Result<Target, String> {
        let (tls, rest) = match url.split_once("://") {
            Some(("ws", rest)) => (false, rest),
            Some(("wss", rest)) => (true, rest),
            _ => return Err(format!("{url}: expected ws://HOST:PORT/PATH or wss://...")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {with_port}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: {with_port} resolves to nothing"))?;
        Ok(Target {
            host: authority.to_owned(),
            path: path.to_owned(),
            addr,
            tls,
        })
    }

    /// The host without the port: the TLS server name.
    pub fn server_name(&self) -> &str {
        match self.host.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => h,
            _ => &self.host,
        }
    }

    /// The same target with `key=value` added to the query.
    pub fn with_query(&self, kv: &str) -> Target {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        Target {
            path: format!("{}{sep}{kv}", self.path),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ws_urls() {
        let t = Target::parse("ws://127.0.0.1:9001/ws/news").unwrap();
        assert_eq!(
            (t.host.as_str(), t.path.as_str(), t.addr.port()),
            ("127.0.0.1:9001", "/ws/news", 9001)
        );
        assert_eq!(Target::parse("ws://127.0.0.1:9").unwrap().path, "/");
        assert_eq!(t.with_query("mode=pub").path, "/ws/news?mode=pub");
        let s = Target::parse("wss://localhost:9443/ws/t").unwrap();
        assert!(s.tls && !t.tls);
        assert_eq!((s.server_name(), s.addr.port()), ("localhost", 9443));
        assert_eq!(Target::parse("wss://127.0.0.1").unwrap().addr.port(), 443);
        assert!(Target::parse("http://x/").is_err());
    }
}
