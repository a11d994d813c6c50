//! The `uproar` binary with JWT authentication (--jwt-secret, --jwt-public-key) and client rate
//! limits: every way a token is refused (401 with a short reason), topic claims (403, 1008),
//! expiry enforced while connected, POST /publish with a token, an Ed25519 public key, and the
//! rate limits in both policies, each counted in /metrics.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use uproar_testkit::*;
use uproar_wire::DataKind;

const SECRET: &str = "the test secret, thirty-two bytes or more";

fn uproar(args: &[&str]) -> Example {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_uproar"));
    cmd.env("RUST_LOG", "warn")
        .env("UPROAR_SHUTDOWN_GRACE", "300ms");
    run_command(cmd, args)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Upgrade `path`; the refusal's status and body if refused.
fn ws(addr: SocketAddr, path: &str) -> Result<Client, (u16, String)> {
    Client::connect_with(addr, path, &[])
}

/// Upgrade with an `Authorization` header instead of the query; the response's status.
fn ws_bearer(addr: SocketAddr, path: &str, token: &str) -> u16 {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    read_response(&mut s).0
}

fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (_, _, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

fn post(addr: SocketAddr, path: &str, token: Option<&str>) -> u16 {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n{auth}Content-Length: 2\r\n\r\nhi"
    );
    http(addr, req.as_bytes()).0
}

#[test]
fn every_bad_token_gets_401_with_a_short_reason() {
    let ex = uproar(&["--jwt-secret", SECRET]);
    let a = ex.addr;
    let n = now();
    let refused = |path: &str| ws(a, path).expect_err("refused");
    assert_eq!(
        refused("/ws/t"),
        (
            401,
            "a token is required (?token= or Authorization: Bearer)\n".into()
        )
    );
    assert_eq!(refused("/ws/t?token=not.a.jwt").0, 401);
    let wrong_key = encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": n + 60, "subscribe": ["*"]}),
        &EncodingKey::from_secret(b"some other secret of thirty-two bytes"),
    )
    .unwrap();
    assert_eq!(
        refused(&format!("/ws/t?token={wrong_key}")),
        (401, "invalid token\n".into())
    );
    let good = hs256(json!({"exp": n + 60, "subscribe": ["*"]}));
    let payload = good.split('.').nth(1).unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    assert_eq!(
        refused(&format!("/ws/t?token={none}")),
        (401, "invalid token\n".into())
    );
    let expired = hs256(json!({"exp": n - 60, "subscribe": ["*"]}));
    assert_eq!(
        refused(&format!("/ws/t?token={expired}")),
        (401, "token expired\n".into())
    );
    let early = hs256(json!({"exp": n + 600, "nbf": n + 300, "subscribe": ["*"]}));
    assert_eq!(
        refused(&format!("/ws/t?token={early}")),
        (401, "token not yet valid\n".into())
    );
    let no_exp = hs256(json!({"subscribe": ["*"]}));
    assert_eq!(refused(&format!("/ws/t?token={no_exp}")).0, 401);
    assert_eq!(ws_bearer(a, "/ws/t", &expired), 401);
    assert_eq!(ws_bearer(a, "/ws/t", &good), 101);
    // A good token, in the query or the header.
    let mut c = ws(a, &format!("/echo?token={good}")).unwrap();
    c.send_text("in");
    assert_eq!(c.recv(), Got::Text("in".into()));
    assert_eq!(metric(a, "uproar_auth_denied_total"), 8.0);
    assert_eq!(
        metric(a, "uproar_auth_denied_total{reason=\"expired\"}"),
        2.0
    );
    ex.stop_with_sigterm();
}

#[test]
fn topic_claims_decide_subscribing_and_publishing() {
    let ex = uproar(&["--jwt-secret", SECRET, "--threads", "2"]);
    let a = ex.addr;
    let t = hs256(json!({"exp": now() + 60, "subscribe": ["news.*"], "publish": ["news.sport"]}));
    assert_eq!(
        ws(a, &format!("/ws/weather?token={t}")).err().unwrap().0,
        403
    );
    assert_eq!(
        ws(a, &format!("/ws/news.local?mode=pub&token={t}"))
            .err()
            .unwrap()
            .0,
        403
    );
    let mut sub = ws(a, &format!("/ws/news.sport?mode=sub&token={t}")).unwrap();
    let mut both = ws(a, &format!("/ws/news.sport?token={t}")).unwrap();
    both.send_text("goal");
    assert_eq!(sub.recv(), Got::Text("goal".into()));
    assert_eq!(both.recv(), Got::Text("goal".into()));
    // Subscribed to news.local but may not publish there: a message closes it with 1008.
    let mut local = ws(a, &format!("/ws/news.local?token={t}")).unwrap();
    local.send_text("not mine to say");
    assert_eq!(
        local.expect_close(),
        (1008, "not allowed to publish to this topic".into())
    );
    // POST /publish takes a JWT whose publish claim covers the topic.
    assert_eq!(post(a, "/publish/news.sport", Some(&t)), 200);
    assert_eq!(sub.recv(), Got::Text("hi".into()));
    assert_eq!(post(a, "/publish/news.local", Some(&t)), 403);
    assert_eq!(post(a, "/publish/news.sport", None), 401);
    assert_eq!(metric(a, "uproar_auth_forbidden_total"), 4.0);
    ex.stop_with_sigterm();
}

#[test]
fn the_static_publish_token_still_works_beside_jwts() {
    let ex = uproar(&["--jwt-secret", SECRET, "--publish-token", "backend-token"]);
    assert_eq!(post(ex.addr, "/publish/x", Some("backend-token")), 200);
    assert_eq!(post(ex.addr, "/publish/x", Some("wrong")), 401);
    ex.stop_with_sigterm();
}

#[test]
fn an_expiring_token_closes_the_connection_with_1008() {
    let ex = uproar(&["--jwt-secret", SECRET, "--jwt-leeway", "0s"]);
    // 3 s (`now` is in whole seconds: between 2 and 3 s of validity, room for a slow upgrade).
    let t = hs256(json!({"exp": now() + 3, "subscribe": ["*"]}));
    let mut c = ws(ex.addr, &format!("/ws/t?mode=sub&token={t}")).unwrap();
    let t0 = Instant::now();
    assert_eq!(c.expect_close(), (1008, "token expired".into()));
    let waited = t0.elapsed();
    assert!(
        waited <= Duration::from_millis(4500),
        "closed after {waited:?}"
    );
    assert!(eventually(Duration::from_secs(2), || metric(
        ex.addr,
        "uproar_token_expired_closes_total"
    ) == 1.0));
    ex.stop_with_sigterm();
}

#[test]
fn an_ed25519_public_key_verifies_eddsa_tokens() {
    // An Ed25519 key pair (RFC 8410 PEM), made with rcgen's ring backend.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let dir = std::env::temp_dir().join(format!("uproar-ed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let public = dir.join("public.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let ex = uproar(&["--jwt-public-key", public.to_str().unwrap()]);
    let token = encode(
        &Header::new(Algorithm::EdDSA),
        &json!({"exp": now() + 60, "subscribe": ["*"]}),
        &EncodingKey::from_ed_pem(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    assert!(ws(ex.addr, &format!("/ws/t?token={token}")).is_ok());
    // An HS256 token is not accepted by a public-key-only server.
    let hs = hs256(json!({"exp": now() + 60, "subscribe": ["*"]}));
    assert_eq!(
        ws(ex.addr, &format!("/ws/t?token={hs}")).err().unwrap().0,
        401
    );
    ex.stop_with_sigterm();
    let _ = std::fs::remove_dir_all(dir);
}

/// A server verifying with `public` (PEM) accepts a token signed with `alg` by `private`.
fn public_key_server_accepts(
    public: &str,
    private: &[u8],
    alg: Algorithm,
    key: fn(&[u8]) -> EncodingKey,
) {
    let dir = std::env::temp_dir().join(format!("uproar-pk-{}-{alg:?}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("public.pem");
    std::fs::write(&path, public).unwrap();
    let ex = uproar(&["--jwt-public-key", path.to_str().unwrap()]);
    let token = encode(
        &Header::new(alg),
        &json!({"exp": now() + 60, "subscribe": ["*"]}),
        &key(private),
    )
    .unwrap();
    assert!(
        ws(ex.addr, &format!("/ws/t?token={token}")).is_ok(),
        "{alg:?}"
    );
    // Tampered: the payload of another token under this signature.
    let other = encode(
        &Header::new(alg),
        &json!({"exp": now() + 60, "subscribe": ["secret"]}),
        &key(private),
    )
    .unwrap();
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[1] = other.split('.').nth(1).unwrap();
    let forged = parts.join(".");
    assert_eq!(
        ws(ex.addr, &format!("/ws/t?token={forged}")).unwrap_err().0,
        401
    );
    ex.stop_with_sigterm();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn es256_and_rs256_public_keys_verify_their_tokens() {
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    public_key_server_accepts(
        &ec.public_key_pem(),
        ec.serialize_pem().as_bytes(),
        Algorithm::ES256,
        |k| EncodingKey::from_ec_pem(k).unwrap(),
    );
    // An RSA key from openssl (rcgen's ring backend cannot generate RSA keys).
    let rsa = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl (Debian's openssl package) generates the RSA test key");
    assert!(rsa.status.success());
    let public = std::process::Command::new("openssl")
        .args(["pkey", "-pubout"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&rsa.stdout)?;
            c.wait_with_output()
        })
        .unwrap();
    public_key_server_accepts(
        &String::from_utf8(public.stdout).unwrap(),
        &rsa.stdout,
        Algorithm::RS256,
        |k| EncodingKey::from_rsa_pem(k).unwrap(),
    );
}

#[test]
fn over_the_message_rate_a_client_is_closed_or_its_messages_dropped() {
    let ex = uproar(&["--client-max-messages-per-sec", "10"]);
    let mut c = ws(ex.addr, "/echo").unwrap();
    let t0 = Instant::now();
    for i in 0..30 {
        c.send_text(&format!("m{i}"));
    }
    let mut echoed = 0;
    loop {
        match c.recv() {
            Got::Text(_) => echoed += 1,
            Got::Close(code, reason) => {
                assert_eq!((code, reason.as_str()), (1008, "rate limit"));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    // A second's worth, plus what the bucket refilled while the server read them (10 per
    // second: none unless the machine stalled).
    let refill = |since: Instant| 10 + (since.elapsed().as_secs_f64() * 10.0).ceil() as usize + 1;
    assert!(
        (10..=refill(t0)).contains(&echoed),
        "burst of one second's worth: {echoed}"
    );
    assert_eq!(metric(ex.addr, "uproar_rate_limit_closes_total"), 1.0);
    ex.stop_with_sigterm();

    let ex = uproar(&[
        "--client-max-messages-per-sec",
        "10",
        "--client-rate-limit-policy",
        "drop",
    ]);
    let mut c = ws(ex.addr, "/echo").unwrap();
    let t0 = Instant::now();
    for i in 0..30 {
        c.send_text(&format!("m{i}"));
    }
    let most = refill(t0) + 1;
    // A second later the bucket has refilled: the marker passes on the same connection.
    std::thread::sleep(Duration::from_millis(1100));
    c.send_text("marker");
    let mut got = Vec::new();
    loop {
        match c.recv() {
            Got::Text(t) if t == "marker" => break,
            Got::Text(t) => got.push(t),
            other => panic!("{other:?}"),
        }
    }
    assert!((10..=most).contains(&got.len()), "{got:?}");
    let want: Vec<String> = (0..got.len()).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "the first ones pass, in order");
    let dropped = metric(ex.addr, "uproar_rate_limit_drops_total");
    assert_eq!(dropped as usize + got.len(), 30);
    ex.stop_with_sigterm();
}

#[test]
fn over_the_byte_rate_a_client_is_closed() {
    let ex = uproar(&["--client-max-bytes-per-sec", "1000B"]);
    let mut c = ws(ex.addr, "/echo").unwrap();
    // A message over a second's worth passes on a full bucket (and overdraws it).
    c.send(DataKind::Binary, &[1u8; 1500]);
    assert_eq!(c.recv(), Got::Binary(vec![1u8; 1500]));
    c.send(DataKind::Binary, &[2u8; 10]);
    assert_eq!(c.expect_close(), (1008, "rate limit".into()));
    ex.stop_with_sigterm();
}
