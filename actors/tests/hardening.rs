//! `odmoe serve` against unkind clients and an unlucky operator: connections that send
//! their request a byte at a time or stop half-way, chunked bodies, huge prompts,
//! requests abandoned while queued, and a shutdown that has to end streams still running.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::http;
use common::{dechunk, metric, ready, slow_client, sse_text, stream_request, until, Server};




/// Whether the server closed `s` within `limit` (a read returns end of file or an error).
fn closed_within(mut s: &TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a response (408) before the close
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_stalled_requests_are_cut_off_and_chunked_bodies_read() {
    let srv = Server::start(&[("ODMOE_SERVER_READ_TIMEOUT_S", "1")]);
    ready(&srv).await;
    // half a header, then nothing: closed after the read timeout, not held forever
    let half = TcpStream::connect(&srv.addr).unwrap();
    (&half).write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Ty").unwrap();
    // a body shorter than announced
    let short = TcpStream::connect(&srv.addr).unwrap();
    (&short).write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\":").unwrap();
    let t = Instant::now();
    assert!(closed_within(&half, Duration::from_secs(10)), "a half-sent header held its connection");
    let mut answer = String::new();
    short.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = (&short).read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(10));
    // a chunked body is read like any other
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    let body = r#"{"prompt":"ROMEO:","max_tokens":3,"temperature":0}"#;
    let (a, b) = body.split_at(10);
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let v: serde_json::Value = serde_json::from_str(&dechunk(raw.split_once("\r\n\r\n").unwrap().1)).unwrap_or_else(|_| serde_json::from_str(raw.split_once("\r\n\r\n").unwrap().1).unwrap());
    assert_eq!(v["usage"]["completion_tokens"], 3, "{v}");
    // and the server goes on serving
    assert_eq!(http::post(&srv.url("/v1/completions"), body).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_prompt_is_refused_unread() {
    let srv = Server::start(&[("ODMOE_SERVER_MAX_BODY", "8MiB")]);
    ready(&srv).await;
    // a megabyte of prompt is longer than the limit whatever it says: refused from its
    // length alone ("at least"), not after tokenizing all of it
    let huge = serde_json::json!({ "prompt": "ROMEO: ".repeat(150_000) }).to_string();
    let r = http::post(&srv.url("/v1/completions"), &huge).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let v = r.json();
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("at least"), "{v}");
    let chat = serde_json::json!({ "messages": [{ "role": "user", "content": "O ".repeat(500_000) }] }).to_string();
    let r = http::post(&srv.url("/v1/chat/completions"), &chat).await.unwrap();
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (400, Some("context_length_exceeded")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_abandoned_in_the_queue_gives_up_its_place() {
    let env = [("ODMOE_SCHEDULER_MAX_SESSIONS", "1"), ("ODMOE_SERVER_MAX_QUEUED", "1"), ("ODMOE_SERVER_STREAM_BUFFER", "1")];
    let srv = Server::start(&env);
    ready(&srv).await;
    // one session runs (its client reads nothing), one request waits, and its client leaves
    let running = slow_client(&srv.addr, &stream_request(&srv.addr, "ROMEO:", 1000));
    until(&srv, "the first session runs", async || metric(&srv, "odmoe_active_sessions").await == 1.0).await;
    let queued = slow_client(&srv.addr, &stream_request(&srv.addr, "JULIET:", 1000));
    until(&srv, "the second request is queued", async || metric(&srv, "odmoe_queue_depth").await == 1.0).await;
    drop(queued);
    // the next request takes the freed place instead of being told the queue is full
    let next = slow_client(&srv.addr, &stream_request(&srv.addr, "NURSE:", 4));
    until(&srv, "the abandoned request left the queue", async || metric(&srv, "odmoe_queue_depth").await == 1.0 && srv.log.lock().unwrap().matches(" 429 ").count() == 0).await;
    drop(running);
    let body = tokio::task::spawn_blocking(move || {
        let mut raw = String::new();
        (&next).read_to_string(&mut raw).unwrap();
        raw
    })
    .await
    .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(sse_text(&dechunk(body.split_once("\r\n\r\n").unwrap().1)).1, "the queued request's stream did not end with [DONE]");
}

/// Sends `signal` to the server's process.
fn kill(srv: &Server, signal: i32) {
    // SAFETY: kill(2) on the child this test started
    assert_eq!(unsafe { libc::kill(srv.pid() as i32, signal) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_still_running_at_shutdown_end_with_a_reason_and_done() {
    // no grace: a stream running at the signal is ended at once
    let srv = Server::start(&[("ODMOE_SERVER_SHUTDOWN_TIMEOUT_S", "0")]);
    ready(&srv).await;
    let body = serde_json::json!({ "prompt": "ROMEO:", "stream": true, "max_tokens": 1000, "temperature": 0 }).to_string();
    let mut resp = http::send("POST", &srv.url("/v1/completions"), Some(&body)).await.unwrap();
    for _ in 0..3 {
        resp.event().await.unwrap().unwrap();
    }
    kill(&srv, libc::SIGINT);
    // the rest of the stream: text, then an event saying why it ends, then [DONE]
    let mut events = Vec::new();
    while let Some(e) = resp.event().await.unwrap() {
        events.push(e);
    }
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let last = &events[events.len() - 2];
    assert!(last.contains("\"code\":\"server_shutdown\""), "{events:?}");
    until(&srv, "the log says the stream was cut at shutdown", async || srv.log.lock().unwrap().contains("cut at shutdown")).await;
    let log = srv.log.lock().unwrap().clone();
    let line = log.lines().find(|l| l.contains("cut at shutdown")).unwrap();
    assert!(!line.contains("completion_tokens=0 "), "{line}");
    assert_eq!(srv.wait_exit(Duration::from_secs(20)), Some(Some(0)), "the server did not exit cleanly:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_signal_ends_the_server_at_once() {
    let srv = Server::start(&[("ODMOE_SERVER_SHUTDOWN_TIMEOUT_S", "600"), ("ODMOE_SERVER_READ_TIMEOUT_S", "600")]);
    ready(&srv).await;
    // a request whose body is still coming holds the shutdown in its grace
    let pending = TcpStream::connect(&srv.addr).unwrap();
    (&pending).write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\":").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    kill(&srv, libc::SIGINT);
    until(&srv, "the server starts shutting down", async || srv.log.lock().unwrap().contains("shutting down")).await;
    assert_eq!(srv.wait_exit(Duration::from_millis(500)), None, "the server did not wait for the request in flight");
    kill(&srv, libc::SIGINT);
    let code = srv.wait_exit(Duration::from_secs(20)).expect("the second signal did not end the server");
    assert_eq!(code, Some(130));
    drop(pending);
}

/// A scratch directory for this test process.
fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("odmoe-hardening-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/odmoe-demo-shakespeare-Q8_0.gguf");

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_file_truncated_while_serving_is_reported_not_fatal() {
    let dir = scratch("truncated");
    let model = dir.join("model.gguf");
    std::fs::copy(DEMO, &model).unwrap();
    let srv = Server::start(&[("ODMOE_DEMO_MODEL", model.to_str().unwrap())]);
    ready(&srv).await;
    let req = r#"{"prompt":"ROMEO:","max_tokens":4,"temperature":0}"#;
    assert_eq!(http::post(&srv.url("/v1/completions"), req).await.unwrap().status, 200);
    // the file is cut short under the running server (as `cp` over it does first)
    std::fs::OpenOptions::new().write(true).open(&model).unwrap().set_len(4096).unwrap();
    for _ in 0..2 {
        let r = http::post(&srv.url("/v1/completions"), req).await.unwrap();
        assert_eq!(r.status, 500, "{}", r.body);
        assert!(r.body.contains("truncated or replaced"), "{}", r.body);
    }
    // still serving, and saying what is wrong
    let h = http::get(&srv.url("/health")).await.unwrap();
    assert_eq!(h.status, 200);
    let v = h.json();
    assert_eq!(v["status"], "degraded", "{v}");
    assert!(v["problems"][0].as_str().unwrap().contains("restart the server"), "{v}");
    assert!(http::get(&srv.url("/metrics")).await.unwrap().body.contains("odmoe_model_file_changed 1"));
    drop(srv);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_expert_reads_make_the_server_degraded() {
    let dir = scratch("store");
    let store = dir.join("store");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_odmoe")).args(["convert", "--model", DEMO, "--output", store.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // every record of layer 0 damaged
    let f = store.join("experts-000.bin");
    let mut bytes = std::fs::read(&f).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(store.join("manifest.json")).unwrap()).unwrap();
    let rec = manifest["layers"][0]["record_bytes"].as_u64().unwrap() as usize;
    for e in 0..bytes.len() / rec {
        bytes[e * rec + 10] ^= 0x55;
    }
    std::fs::write(&f, &bytes).unwrap();
    let srv = Server::start(&[("ODMOE_DEMO_MODEL", store.to_str().unwrap())]);
    ready(&srv).await;
    let r = http::post(&srv.url("/v1/completions"), r#"{"prompt":"ROMEO:","max_tokens":4}"#).await.unwrap();
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("corrupt"), "{}", r.body);
    let v = http::get(&srv.url("/health")).await.unwrap().json();
    assert_eq!(v["status"], "degraded", "{v}");
    assert!(v["expert_cache"]["read_errors"].as_u64().unwrap() > 0, "{v}");
    let m = http::get(&srv.url("/metrics")).await.unwrap().body;
    assert!(m.lines().any(|l| l.starts_with("odmoe_expert_read_errors_total ") && !l.ends_with(" 0")), "{m}");
    drop(srv);
    std::fs::remove_dir_all(&dir).unwrap();
}
