//! The official `openai` Python client streams from `odmoe serve` (see openai_client.py).
//! Skipped, with the reason printed, where Python or the package is missing — unless
//! `ODMOE_REQUIRE_OPENAI=1` (as in CI, which installs it), where that is a failure.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;

#[test]
fn the_openai_python_client_streams_a_chat_completion() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let has = Command::new(&python).args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success());
    if !has {
        let why = format!("{python} with the openai package is not available (pip install openai)");
        assert!(std::env::var_os("ODMOE_REQUIRE_OPENAI").is_none(), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    let srv = Server::start(&[]);
    // wait until loaded
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = Command::new(&python)
            .args(["-c", &format!("import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('{}').status == 200 else 1)", srv.url("/health"))])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the server never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let out = Command::new(&python).arg(script).arg(srv.url("")).output().unwrap();
    assert!(out.status.success(), "{}\n{}\nserver log:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr), srv.log.lock().unwrap());
    println!("{}", String::from_utf8_lossy(&out.stdout));
}
