//! loadtest over wss:// against the uproar engine serving TLS with a certificate from a test CA:
//! echo and broadcast verified end to end, a token sent on the upgrade; a load generator that
//! trusts another CA fails every connection instead of measuring nothing.

use std::time::Duration;

use uproar::{Ctx, Handler, Message, TlsConfig, Upgrade, UpgradeRequest, WebSocket};
use uproar_loadtest::{Load, RunConfig, Scenario, run};
use uproar_testkit::tls::TestCa;

/// `/echo` echoes; `/ws/T` subscribes to T and publishes what it receives. Upgrades need
/// `token=letmein` in the query.
struct App;

impl Handler for App {
    type Conn = String;

    fn on_upgrade<'r>(
        &mut self,
        _: &mut Ctx<String>,
        req: &UpgradeRequest<'r>,
    ) -> Upgrade<'r, String> {
        if !req
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "token=letmein"))
        {
            return Upgrade::reject(401, "token");
        }
        Upgrade::accept(req.path().strip_prefix("/ws/").unwrap_or("").to_owned())
    }

    fn on_open(&mut self, ws: &mut WebSocket<'_, String>) {
        let t = ws.data().clone();
        if !t.is_empty() {
            ws.subscribe(&t);
        }
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, String>, msg: Message<'_>) {
        let t = ws.data().clone();
        if t.is_empty() {
            let _ = ws.send(msg.kind(), msg.data());
        } else {
            ws.ctx().publish(&t, msg.kind(), msg.data());
        }
    }
}

fn cfg(url: String, scenario: Scenario, ca: &TestCa) -> RunConfig {
    RunConfig {
        deflate: false,
        tls: Some(uproar_loadtest::tls::client_config(Some(&ca.ca_pem()), false).unwrap()),
        token: Some("letmein".into()),
        json: false,
        url,
        scenario,
        duration: Duration::from_millis(800),
        warmup: Duration::from_millis(200),
        threads: 2,
        server_pid: Some(std::process::id()),
        measure_pids: Vec::new(),
        progress: false,
    }
}

#[test]
fn echo_and_broadcast_over_wss_verify_every_message() {
    let ca = TestCa::new("loadtest");
    let cert = ca.server_cert("server", &["localhost"]);
    let server = uproar::Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .threads(1)
        .pin_threads(false)
        .prefault_buffers(false)
        .recv_buffers(64)
        .tls(TlsConfig::from_pem_files(&cert.cert, &cert.key).unwrap())
        .start(|_| App)
        .unwrap();
    let port = server.local_addr().port();
    let echo = Scenario::Echo {
        connections: 8,
        size: 1000,
        binary: true,
        load: Load::Depth(4),
        raw_tcp: false,
        batch_window: Duration::ZERO,
    };
    let r = run(&cfg(
        format!("wss://localhost:{port}/echo"),
        echo.clone(),
        &ca,
    ))
    .unwrap();
    assert!(!r.failed() && r.connections == 8, "{}", r.text());
    assert!(r.deliveries_per_sec > 100.0, "{}", r.text());
    let bcast = Scenario::Broadcast {
        subscribers: 20,
        publishers: 1,
        rate: 200.0,
        size: 200,
        binary: false,
        slow_fraction: 0.0,
        publish_url: None,
    };
    let r = run(&cfg(format!("wss://localhost:{port}/ws/t"), bcast, &ca)).unwrap();
    assert!(!r.failed(), "{}", r.text());
    assert!(r.deliveries_per_sec > 2000.0, "{}", r.text());
    // Trusting another CA: every connection fails its handshake.
    let other = TestCa::new("loadtest-other");
    match run(&cfg(format!("wss://localhost:{port}/echo"), echo, &other)) {
        Err(e) => assert!(e.contains("UnknownIssuer"), "{e}"),
        Ok(r) => assert!(r.errors > 0 && r.deliveries_per_sec == 0.0, "{}", r.text()),
    }
}
