//! The demo page in headless Chromium (Debian's `chromium`, installed by `.ci/run`), driven by
//! `tests/browser/demo_page.py` over the DevTools protocol. Without chromium or Python's
//! `websockets` the test is skipped with a message, unless UPROAR_REQUIRE_CLIENTS=1 (as in
//! CI), which makes that a failure.

use std::path::Path;
use std::process::Command;

use uproar_testkit::*;

#[test]
fn demo_page_in_headless_chromium() {
    let required = std::env::var_os("UPROAR_REQUIRE_CLIENTS").is_some_and(|v| v == "1");
    let have = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("chromium", &["--version"]) || !have("python3", &["-c", "import websockets"]) {
        assert!(
            !required,
            "chromium or python3 websockets missing, and UPROAR_REQUIRE_CLIENTS=1"
        );
        eprintln!("skipped: needs chromium and python3 with websockets");
        return;
    }
    // Without compression, then with permessage-deflate in both modes (Chromium always
    // offers it; every message compressed, however small).
    for deflate in ["off", "shared", "dedicated"] {
        demo_page(deflate, None);
    }
    // Over https and wss, with a certificate from a test CA, and JWT auth on.
    let ca = tls::TestCa::new("browser");
    let cert = ca.server_cert("server", &["localhost", "127.0.0.1"]);
    demo_page("shared", Some((&ca, &cert)));
}

fn demo_page(deflate: &str, tls: Option<(&tls::TestCa, &tls::ServerCert)>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uproar"));
    let secret = "the browser test's secret, thirty-two bytes+";
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"exp": 4_000_000_000u64, "subscribe": ["browser"], "publish": ["browser"]}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    if let Some((_, cert)) = tls {
        cmd.env("UPROAR_TLS_CERT", &cert.cert)
            .env("UPROAR_TLS_KEY", &cert.key)
            .env("UPROAR_JWT_SECRET", secret);
    }
    cmd.env("RUST_LOG", "warn")
        .env("UPROAR_SHUTDOWN_GRACE", "300ms")
        .env("UPROAR_DEFLATE", deflate)
        .env("UPROAR_DEFLATE_MIN_SIZE", "0");
    let ex = run_command(cmd, &["--threads", "2"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/demo_page.py");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo_page.png");
    let mut py = Command::new("python3");
    match tls {
        Some((ca, _)) => py
            .env("UPROAR_TEST_CA", ca.ca_pem())
            .env("UPROAR_TEST_TOKEN", &token),
        None => py
            .env_remove("UPROAR_TEST_CA")
            .env_remove("UPROAR_TEST_TOKEN"),
    };
    let out = py
        .arg(&script)
        .arg(ex.addr.to_string())
        .arg(&shot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
        "a screenshot was taken"
    );
    let metrics = match tls {
        Some((ca, _)) => {
            let mut t = tls::connect(ex.addr, "localhost", ca.client_config()).unwrap();
            std::io::Write::write_all(&mut t, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            read_response(&mut t).2
        }
        None => http(ex.addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").2,
    };
    let compressed: f64 = String::from_utf8_lossy(&metrics)
        .lines()
        .filter(|l| l.starts_with("uproar_deflate_messages_compressed_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    if deflate == "off" {
        assert_eq!(compressed, 0.0);
    } else {
        assert!(
            compressed > 0.0,
            "Chromium negotiated permessage-deflate ({deflate})"
        );
    }
    ex.stop_with_sigterm();
}
