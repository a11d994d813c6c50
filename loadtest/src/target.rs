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
}

impl Target {
    /// Parse `ws://HOST[:PORT][/PATH]`; `wss://` is refused (no TLS yet).
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = match url.split_once("://") {
            Some(("ws", rest)) => rest,
            Some(("wss", _)) => return Err(format!("{url}: wss:// (TLS) is not supported yet")),
            _ => return Err(format!("{url}: expected ws://HOST:PORT/PATH")),
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
            format!("{authority}:80")
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
        })
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
        assert!(Target::parse("wss://x/").unwrap_err().contains("TLS"));
        assert!(Target::parse("http://x/").is_err());
    }
}
