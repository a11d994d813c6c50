//! Clients nobody here wrote, against the echo example: Python's `websockets` and Node's `ws`,
//! without and with permessage-deflate (shared and dedicated modes)
//! (installed by `.ci/run`: `pip install websockets`, `npm ci` in tests/clients). Without them
//! the tests are skipped with a message, unless UPROAR_REQUIRE_CLIENTS=1 (as in CI), which
//! makes a missing client a failure.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn required() -> bool {
    std::env::var_os("UPROAR_REQUIRE_CLIENTS").is_some_and(|v| v == "1")
}

/// Run `cmd script URL` against a fresh echo example; returns false if the client is missing.
/// With `deflate` (`shared` or `dedicated`), the server runs in that permessage-deflate mode
/// and the client offers it (`cmd script URL deflate`) and checks it was accepted.
fn run_client(cmd: &str, probe: &[&str], script: &str, deflate: Option<&str>) -> bool {
    let available = Command::new(cmd)
        .args(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            !required(),
            "{cmd} {probe:?} failed, and UPROAR_REQUIRE_CLIENTS=1"
        );
        eprintln!("skipped: {cmd} {probe:?} failed (install the client to run this test)");
        return false;
    }
    let ex = match deflate {
        Some(mode) => run_example("echo", &["--deflate", mode]),
        None => run_example("echo", &[]),
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let out = Command::new(cmd)
        .arg(dir.join(script))
        .arg(format!("ws://{}/echo", ex.addr))
        .args(deflate.map(|_| "deflate"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{cmd} {script}: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ex.stop();
    true
}

fn python(deflate: Option<&str>) {
    run_client(
        "python3",
        &["-c", "import websockets.sync.client"],
        "py_client.py",
        deflate,
    );
}

fn node(deflate: Option<&str>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let probe = format!(
        "require({:?})",
        dir.join("node_modules/ws").display().to_string()
    );
    run_client("node", &["-e", &probe], "node_client.js", deflate);
}

#[test]
fn python_websockets_client() {
    python(None);
}

#[test]
fn node_ws_client() {
    node(None);
}

/// permessage-deflate on (Python `websockets` compresses by default), both modes.
#[test]
fn python_websockets_client_with_deflate() {
    python(Some("shared"));
    python(Some("dedicated"));
}

/// Node `ws` with `perMessageDeflate` (every message compressed), both modes.
#[test]
fn node_ws_client_with_deflate() {
    node(Some("shared"));
    node(Some("dedicated"));
}
