//! The README's commands, run as a user pastes them, so its examples cannot go stale:
//! the quick start (serve the demo model, stream a chat completion with curl, stop the
//! server by its PID) and every `target/release/odmoe …` line of its `sh` blocks, with
//! `$MODEL` the demo model. The test command is checked to be the one CI runs.
//!
//! The commands run the binary this test was built with (the README's
//! `target/release/odmoe` is that binary when the tests run as the README says).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn readme() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap()
}

/// The command lines of the README's ```sh blocks (comments and blank lines dropped).
fn sh_lines(readme: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut inside = false;
    for l in readme.lines() {
        if l.starts_with("```") {
            inside = !inside && l.trim() == "```sh";
            continue;
        }
        let l = l.trim();
        if inside && !l.is_empty() && !l.starts_with('#') {
            lines.push(l.to_string());
        }
    }
    lines
}

/// `line` for bash, with the README's binary path replaced by this build's.
fn shell(line: &str, dir: &Path) -> Command {
    let bin = env!("CARGO_BIN_EXE_odmoe");
    let mut c = Command::new("bash");
    c.arg("-c").arg(line.replace("target/release/odmoe", bin)).current_dir(dir);
    c.env("MODEL", Path::new(ROOT).join("models/odmoe-demo-shakespeare-Q8_0.gguf"));
    c
}

/// Waits for `child` up to `limit`; kills it and fails past that.
fn wait(mut child: Child, limit: Duration, what: &str) -> (bool, String, String) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let (mut out, mut err) = (String::new(), String::new());
            child.stdout.take().map(|mut s| s.read_to_string(&mut out));
            child.stderr.take().map(|mut s| s.read_to_string(&mut err));
            return (status.success(), out, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("odmoe-readme-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Kills the process whose id the file holds, if it is still there (a failed assertion
/// must not leave the quick start's server holding its port).
struct StopServer(PathBuf);

impl Drop for StopServer {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
            // SAFETY: a plain kill(2) of the server this test started
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn the_quick_start_streams_a_reply_and_the_server_stops_by_its_pid() {
    let text = readme();
    let lines = sh_lines(&text);
    let start = lines.iter().find(|l| l.starts_with("cargo build --release && ")).expect("the quick start's first command");
    let test = lines.iter().find(|l| l.starts_with("cargo test")).expect("the quick start's test command");
    // the test command is the one CI runs
    let ci = std::fs::read_to_string(Path::new(ROOT).join(".ci/run")).unwrap();
    assert!(ci.contains(&format!("run \"tests\" {test} --locked")), "CI does not run the README's test command `{test}`");
    // step 1, after its build: the server in the background, its PID kept, curl
    let dir = scratch("quick-start");
    let _stop = StopServer(dir.join("odmoe.pid"));
    // on a free port rather than 8080, which the reader's own server may hold (the
    // README's step 1 leaves it running): the server takes the port from the environment
    // and curl's URL is changed to match
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    assert!(start.contains("127.0.0.1:8080"), "the quick start no longer talks to 127.0.0.1:8080");
    let run = start.trim_start_matches("cargo build --release && ").replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    // (into files: the server keeps its output open after the shell is done)
    let (out_file, err_file) = (dir.join("stdout"), dir.join("stderr"));
    let child = shell(&run, &dir).env("ODMOE_SERVER_PORT", port.to_string()).stdout(std::fs::File::create(&out_file).unwrap()).stderr(std::fs::File::create(&err_file).unwrap()).spawn().unwrap();
    let (ok, _, _) = wait(child, Duration::from_secs(120), "the quick start");
    let (out, err) = (std::fs::read_to_string(&out_file).unwrap(), std::fs::read_to_string(&err_file).unwrap());
    assert!(ok, "the quick start failed: {err}");
    let events: Vec<&str> = out.lines().filter(|l| l.starts_with("data: ")).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{out}");
    // the example output in the README: the same first events (the timestamp aside)
    let shown: Vec<&str> = text.lines().filter(|l| l.starts_with("data: {")).take(2).collect();
    let strip = |l: &str| -> String { l.split("\"created\":").next().unwrap().to_string() + l.split(",\"model\"").nth(1).unwrap_or("") };
    assert_eq!(shown.len(), 2, "the README shows no example events");
    for (want, got) in shown.iter().zip(&events) {
        assert_eq!(strip(want), strip(got), "the README's example events differ from what the server sends");
    }
    // the stop command the README gives
    let stop = "kill $(cat odmoe.pid)";
    assert!(text.contains(&format!("`{stop}`")), "the README no longer says how to stop the server");
    let pid: i32 = std::fs::read_to_string(dir.join("odmoe.pid")).unwrap().trim().parse().unwrap();
    let (ok, _, err) = wait(shell(stop, &dir).stderr(Stdio::piped()).spawn().unwrap(), Duration::from_secs(10), stop);
    assert!(ok, "{stop}: {err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    // SAFETY: signal 0 only asks whether the process exists
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(Instant::now() < deadline, "the server (pid {pid}) did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_dir_all(&dir).unwrap(); // the PID file too: nothing left to stop
}

#[test]
fn every_odmoe_command_in_the_readme_runs() {
    let lines: Vec<String> = sh_lines(&readme()).into_iter().filter(|l| l.starts_with("target/release/odmoe")).collect();
    assert!(lines.len() >= 5, "{lines:?}");
    let dir = scratch("commands");
    for line in &lines {
        if line.starts_with("target/release/odmoe serve") {
            // a server: it must start, load and answer; then it is stopped
            let mut child = shell(line, &dir).env("ODMOE_SERVER_PORT", "0").stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
            let mut err = BufReader::new(child.stderr.take().unwrap());
            let (mut log, mut l) = (String::new(), String::new());
            while !log.contains("ready: ") {
                l.clear();
                assert!(err.read_line(&mut l).unwrap() > 0, "{line}: exited before it was ready:\n{log}");
                log.push_str(&l);
            }
            child.kill().unwrap();
            child.wait().unwrap();
            continue;
        }
        // others end by themselves (chat at the end of its input)
        let child = shell(line, &dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (ok, out, err) = wait(child, Duration::from_secs(120), line);
        assert!(ok, "{line}: {err}");
        assert!(!(out.is_empty() && err.is_empty()), "{line}: printed nothing");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
