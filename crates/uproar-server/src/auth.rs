//! JWT authentication of WebSocket clients and publishers (`--jwt-secret`, `--jwt-public-key`),
//! with the `jsonwebtoken` crate.
//!
//! A token carries `exp` (required, and enforced while connected), optionally `nbf`, and the
//! claims `subscribe` and `publish`: arrays of topic patterns, each an exact topic or a prefix
//! ending in `*` (`*` alone: every topic).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The verifying keys.
pub(crate) struct Auth {
    keys: Vec<(DecodingKey, Validation)>,
    /// Seconds of clock difference allowed when checking `exp` and `nbf`.
    leeway: u64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<_> = self.keys.iter().map(|(_, v)| &v.algorithms).collect();
        f.debug_struct("Auth").field("algorithms", &algs).finish()
    }
}

/// What a valid token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Expiry, seconds since the Unix epoch, plus the leeway.
    pub(crate) exp: u64,
    subscribe: Vec<String>,
    publish: Vec<String>,
}

#[derive(Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// Why a token was refused; the reason is all a client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    Missing,
    Invalid,
    Expired,
    NotYetValid,
}

impl Denied {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Denied::Missing => "a token is required (?token= or Authorization: Bearer)",
            Denied::Invalid => "invalid token",
            Denied::Expired => "token expired",
            Denied::NotYetValid => "token not yet valid",
        }
    }

    /// Index into the server's counters, in the order of [`Denied::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) const ALL: [Denied; 4] = [
        Denied::Missing,
        Denied::Invalid,
        Denied::Expired,
        Denied::NotYetValid,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Invalid => "invalid",
            Denied::Expired => "expired",
            Denied::NotYetValid => "not_yet_valid",
        }
    }
}

fn validation(algs: &[Algorithm], leeway: u64) -> Validation {
    let mut v = Validation::new(algs[0]);
    v.algorithms = algs.to_vec();
    v.leeway = leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    // Audience and issuer are the operator's business (one secret per deployment).
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp"]);
    v
}

impl Auth {
    /// HS256 with `secret`, and/or the algorithms of a public key in PEM (RSA: RS256, RS384,
    /// RS512, PS256; EC: ES256, ES384; Ed25519: EdDSA). `alg: none` is never accepted.
    pub(crate) fn new(
        secret: Option<&str>,
        public_pem: Option<&[u8]>,
        leeway: u64,
    ) -> Result<Auth, String> {
        let validation = |algs: &[Algorithm]| validation(algs, leeway);
        let mut keys = Vec::new();
        if let Some(s) = secret {
            if s.len() < 32 {
                return Err("--jwt-secret must be at least 32 bytes (HS256 needs 256 bits)".into());
            }
            keys.push((
                DecodingKey::from_secret(s.as_bytes()),
                validation(&[Algorithm::HS256]),
            ));
        }
        if let Some(pem) = public_pem {
            let key = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                let algs = [
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                ];
                (k, validation(&algs))
            } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
                (k, validation(&[Algorithm::ES256, Algorithm::ES384]))
            } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
                (k, validation(&[Algorithm::EdDSA]))
            } else {
                return Err("--jwt-public-key: not an RSA, EC or Ed25519 public key in PEM".into());
            };
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("no JWT key".into());
        }
        Ok(Auth { keys, leeway })
    }

    /// Check a token: its signature with a configured key (and an algorithm that key allows),
    /// `exp` and `nbf`.
    pub(crate) fn verify(&self, token: &str) -> Result<Grant, Denied> {
        let alg = jsonwebtoken::decode_header(token)
            .map_err(|_| Denied::Invalid)?
            .alg;
        let mut denied = Denied::Invalid;
        for (key, v) in &self.keys {
            if !v.algorithms.contains(&alg) {
                continue;
            }
            match jsonwebtoken::decode::<Claims>(token, key, v) {
                Ok(t) => {
                    return Ok(Grant {
                        exp: t.claims.exp + self.leeway,
                        subscribe: t.claims.subscribe,
                        publish: t.claims.publish,
                    });
                }
                Err(e) => match e.kind() {
                    ErrorKind::ExpiredSignature => denied = Denied::Expired,
                    ErrorKind::ImmatureSignature => denied = Denied::NotYetValid,
                    _ => {}
                },
            }
        }
        Err(denied)
    }
}

impl Grant {
    pub(crate) fn may_subscribe(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|p| covers(p, topic))
    }

    pub(crate) fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| covers(p, topic))
    }

    /// Seconds until `exp` (plus the leeway), from now; 0 if passed.
    pub(crate) fn remaining_secs(&self) -> u64 {
        self.exp.saturating_sub(unix_now())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `pattern` (an exact topic, or a prefix ending in `*`) covers `topic`.
pub(crate) fn covers(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

/// The token of a request: `?token=` (browsers cannot set headers on a WebSocket), else
/// `Authorization: Bearer`.
pub(crate) fn token_of<'a>(
    query: Option<&'a str>,
    authorization: Option<&'a [u8]>,
) -> Option<&'a str> {
    let from_query = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    from_query.or_else(|| {
        let v = std::str::from_utf8(authorization?).ok()?;
        v.strip_prefix("Bearer ").map(str::trim)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &str = "a test secret of at least thirty-two bytes";

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn patterns_cover_exact_topics_and_prefixes() {
        assert!(covers("news", "news"));
        assert!(!covers("news", "news2"));
        assert!(covers("news.*", "news.sport"));
        assert!(!covers("news.*", "news"));
        assert!(covers("*", "anything"));
        assert!(!covers("", "x"));
    }

    #[test]
    fn tokens_are_checked_for_signature_expiry_and_algorithm() {
        let auth = Auth::new(Some(SECRET), None, 5).unwrap();
        let now = unix_now();
        let ok =
            token(serde_json::json!({"exp": now + 60, "subscribe": ["a.*"], "publish": ["a.b"]}));
        let g = auth.verify(&ok).unwrap();
        assert!(g.may_subscribe("a.x") && !g.may_subscribe("b"));
        assert!(g.may_publish("a.b") && !g.may_publish("a.c"));
        assert!(g.remaining_secs() > 55);
        let expired = token(serde_json::json!({"exp": now - 60}));
        assert_eq!(auth.verify(&expired), Err(Denied::Expired));
        let early = token(serde_json::json!({"exp": now + 600, "nbf": now + 300}));
        assert_eq!(auth.verify(&early), Err(Denied::NotYetValid));
        let no_exp = token(serde_json::json!({"subscribe": ["*"]}));
        assert_eq!(auth.verify(&no_exp), Err(Denied::Invalid));
        // Wrongly signed.
        let other = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"exp": now + 60}),
            &EncodingKey::from_secret(b"another secret, also thirty-two bytes long"),
        )
        .unwrap();
        assert_eq!(auth.verify(&other), Err(Denied::Invalid));
        // alg: none, with the payload of a valid token and no signature.
        let payload = ok.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert_eq!(auth.verify(&none), Err(Denied::Invalid));
        // HS384 with the right secret: not an algorithm this key allows.
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &serde_json::json!({"exp": now + 60}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(auth.verify(&hs384), Err(Denied::Invalid));
        assert_eq!(auth.verify("garbage"), Err(Denied::Invalid));
        assert_eq!(auth.verify(""), Err(Denied::Invalid));
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert!(Auth::new(Some("short"), None, 5).is_err());
    }

    #[test]
    fn the_token_comes_from_the_query_or_the_header() {
        assert_eq!(token_of(Some("mode=sub&token=abc"), None), Some("abc"));
        assert_eq!(token_of(None, Some(b"Bearer xyz")), Some("xyz"));
        assert_eq!(token_of(Some("token=q"), Some(b"Bearer h")), Some("q"));
        assert_eq!(token_of(None, Some(b"Basic xyz")), None);
        assert_eq!(token_of(None, None), None);
    }
}
