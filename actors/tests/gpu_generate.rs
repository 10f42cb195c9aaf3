//! `odmoe generate --backend gpu` (and `auto`) writes the same greedy text as the CPU
//! backend on the demo model. Skipped (with the reason printed) where the machine has no GPU adapter,
//! unless ODMOE_REQUIRE_GPU is set (CI installs lavapipe and sets it).

use std::process::Command;

fn generate(backend: &str) -> (bool, String, String) {
    generate_with(backend, &[])
}

fn generate_with(backend: &str, more: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_odmoe"))
        .args(["generate", "--prompt", "ROMEO:", "--max-tokens", "12", "--temperature", "0", "--backend", backend])
        .args(more)
        .output()
        .expect("run odmoe");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn gpu_generation_writes_the_cpu_text() {
    let (ok, gpu_text, log) = generate("gpu");
    if !ok && log.contains("no GPU adapter") {
        assert!(std::env::var_os("ODMOE_REQUIRE_GPU").is_none(), "{log}");
        eprintln!("skipped: {log}");
        return;
    }
    assert!(ok, "{log}");
    assert!(log.contains("gpu: "), "names the adapter: {log}");
    assert!(log.contains("all routed experts on the device"), "{log}");
    let (ok, cpu_text, log) = generate("cpu");
    assert!(ok, "{log}");
    assert!(cpu_text.len() > "ROMEO:".len() + 10, "{cpu_text:?}");
    assert_eq!(gpu_text, cpu_text);
    // a device expert budget too small for all of them: fetched as routed, same text
    let (ok, fetched_text, log) = generate_with("gpu", &["--gpu-expert-budget", "1MiB"]);
    assert!(ok, "{log}");
    assert!(log.contains("fetched as routed"), "{log}");
    assert_eq!(fetched_text, cpu_text);
}

#[test]
fn auto_backend_says_which_it_chose_and_writes_the_cpu_text() {
    let (ok, auto_text, log) = generate("auto");
    assert!(ok, "{log}");
    // a hardware GPU, or the CPU with the reason (no adapter, only a software one, ...)
    let line = log.lines().find(|l| l.starts_with("backend: ")).unwrap_or_else(|| panic!("no backend line: {log}"));
    assert!(line.starts_with("backend: gpu (") || line.starts_with("backend: cpu ("), "{line}");
    if line.contains("llvmpipe") {
        assert!(line.starts_with("backend: cpu (the only adapter is a software one"), "lavapipe is not taken for a GPU: {line}");
    }
    let (ok, cpu_text, log) = generate("cpu");
    assert!(ok, "{log}");
    assert_eq!(auto_text, cpu_text);
}
