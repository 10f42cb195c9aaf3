//! `odmoe serve` end to end over loopback: streaming and whole chat completions, text
//! completions, models and health, OpenAI-shaped errors for bad requests, and a client
//! that disconnects mid-stream leaves the server serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{dechunk, Server};

fn start() -> Server {
    Server::start(&[])
}

/// Sends one HTTP/1.1 request and returns (status, body).
fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    (status, body)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn serves_openai_requests() {
    let srv = start();
    let a = &srv.addr;

    // 503 while loading, then 200
    let mut tries = 0;
    loop {
        let (st, body) = request(a, "GET", "/health", "");
        if st == 200 {
            assert_eq!(json(&body)["status"], "ok");
            assert_eq!(json(&body)["backend"], "cpu");
            break;
        }
        assert_eq!(st, 503, "{body}");
        assert_eq!(json(&body)["status"], "loading");
        tries += 1;
        assert!(tries < 600, "the model never finished loading");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (st, body) = request(a, "GET", "/v1/models", "");
    assert_eq!(st, 200);
    assert_eq!(json(&body)["data"][0]["object"], "model");

    // streaming chat: SSE chunks, a finish reason, usage when asked, then [DONE]
    let req = r#"{"messages":[{"role":"user","content":"Who art thou?"}],"stream":true,"max_tokens":12,"seed":1,"stream_options":{"include_usage":true}}"#;
    let (st, body) = request(a, "POST", "/v1/chat/completions", req);
    assert_eq!(st, 200);
    let events: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::trim).collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1].iter().map(|e| json(e)).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(text.chars().filter(|c| c.is_alphabetic()).count() > 5, "{text:?}");
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "length"));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 12);

    // whole chat completion and text completion
    let (st, body) = request(a, "POST", "/v1/chat/completions", r#"{"messages":[{"role":"user","content":"Speak."}],"max_tokens":8}"#);
    assert_eq!(st, 200);
    let v = json(&body);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    let (st, body) = request(a, "POST", "/v1/completions", r#"{"prompt":"ROMEO:","max_tokens":6,"temperature":0}"#);
    assert_eq!(st, 200);
    assert_eq!(json(&body)["object"], "text_completion");

    // bad requests: OpenAI-shaped errors, server keeps serving
    for (path, body, want) in [
        ("/v1/chat/completions", "{not json", "not valid JSON"),
        ("/v1/chat/completions", r#"{"messages":[]}"#, "messages"),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"x"}],"n":3}"#, "n = 1"),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"x"}],"temperature":-2}"#, "temperature"),
        ("/v1/completions", r#"{"prompt":""}"#, "empty"),
        ("/v1/completions", r#"{"prompt":"x","max_tokens":0}"#, "max_tokens"),
    ] {
        let (st, b) = request(a, "POST", path, body);
        assert_eq!(st, 400, "{body}");
        let e = json(&b);
        assert!(e["error"]["message"].as_str().unwrap().contains(want), "{body}: {b}");
        assert_eq!(e["error"]["type"], "invalid_request_error");
    }
    let long = format!(r#"{{"prompt":"{}"}}"#, "ROMEO: ".repeat(3000));
    let (st, b) = request(a, "POST", "/v1/completions", &long);
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("context"), "{b}");
    let (st, _) = request(a, "GET", "/v1/nothing", "");
    assert_eq!(st, 404);

    // a client that goes away mid-stream: the server cancels it and keeps serving
    {
        let mut s = TcpStream::connect(a).unwrap();
        let body = r#"{"prompt":"ROMEO:","stream":true,"max_tokens":500}"#;
        write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).unwrap();
    }
    let (st, body) = request(a, "POST", "/v1/completions", r#"{"prompt":"JULIET:","max_tokens":4}"#);
    assert_eq!(st, 200, "{body}");

    // Prometheus metrics count what happened above
    let (st, m) = request(a, "GET", "/metrics", "");
    assert_eq!(st, 200);
    let value = |name: &str| -> f64 {
        m.lines().find(|l| l.starts_with(name) && !l.starts_with('#')).and_then(|l| l.rsplit(' ').next()).unwrap().parse().unwrap()
    };
    assert!(value("odmoe_requests_total{endpoint=\"chat\"}") >= 2.0, "{m}");
    assert!(value("odmoe_requests_rejected_total") >= 7.0, "{m}");
    assert!(value("odmoe_tokens_generated_total") >= 12.0 + 8.0 + 6.0 + 4.0, "{m}");
    assert!(value("odmoe_time_to_first_token_seconds_count") >= 4.0, "{m}");
}
