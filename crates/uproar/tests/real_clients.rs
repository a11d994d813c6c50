//! Clients nobody here wrote, against the echo example: Python's `websockets` and Node's `ws`
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
fn run_client(cmd: &str, probe: &[&str], script: &str) -> bool {
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
    let ex = run_example("echo", &[]);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let out = Command::new(cmd)
        .arg(dir.join(script))
        .arg(format!("ws://{}/echo", ex.addr))
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

#[test]
fn python_websockets_client() {
    run_client(
        "python3",
        &["-c", "import websockets.sync.client"],
        "py_client.py",
    );
}

#[test]
fn node_ws_client() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let probe = format!(
        "require({:?})",
        dir.join("node_modules/ws").display().to_string()
    );
    run_client("node", &["-e", &probe], "node_client.js");
}
