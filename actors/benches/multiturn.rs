//! A conversation of `ODMOE_TURNS` turns (default 8), each adding about
//! `ODMOE_TURN_TOKENS` tokens (default 1000) of user text, against two servers on the same
//! model — the prefix cache on and off — taking turns: the time to the first token of each
//! turn, and the ratio (goal at the last turn: 0.1 or less).
//!
//! `cargo bench -p odmoe-actors --bench multiturn` (the demo model, or `ODMOE_BENCH_MODEL`;
//! the context is set to hold the whole conversation).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "../tests/common/mod.rs"]
mod common;
use common::{http, Server};

fn env<T: std::str::FromStr>(k: &str, default: T) -> T {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Streams one chat turn; (seconds to the first text, the reply, cached prompt tokens).
async fn turn(base: &str, messages: &Value, max_tokens: usize) -> (f64, String, u64) {
    let body = json!({ "messages": messages, "stream": true, "max_tokens": max_tokens, "temperature": 0, "stream_options": { "include_usage": true } });
    let t0 = Instant::now();
    let mut r = http::send("POST", &format!("{base}/v1/chat/completions"), Some(&body.to_string())).await.unwrap();
    if r.status != 200 {
        let status = r.status;
        panic!("status {status}: {}", r.whole().await.map(|w| w.body).unwrap_or_default());
    }
    let (mut first, mut text, mut cached) = (None, String::new(), 0);
    while let Some(e) = r.event().await.unwrap() {
        if e == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&e).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
            first.get_or_insert(t0.elapsed().as_secs_f64());
            text.push_str(t);
        }
        if let Some(c) = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64() {
            cached = c;
        }
    }
    (first.unwrap_or(f64::NAN), text, cached)
}

fn main() {
    let turns: usize = env("ODMOE_TURNS", 8);
    let per_turn: usize = env("ODMOE_TURN_TOKENS", 1000);
    let ctx = (turns * (2 * per_turn + 100) + 1024).to_string();
    let model = std::env::var("ODMOE_BENCH_MODEL").ok();
    let mut args = vec!["--ctx-size", &ctx];
    if let Some(m) = &model {
        args.extend(["--model", m]);
    }
    let with = Server::start_with(&args, &[]);
    let without = Server::start_with(&args, &[("ODMOE_CACHE_PREFIX_BUDGET", "0")]);
    let (base_with, base_without) = (with.url(""), without.url(""));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        for b in [&base_with, &base_without] {
            while http::get(&format!("{b}/health")).await.map(|r| r.status).ok() != Some(200) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // user turns of about `per_turn` tokens of play text
        let corpus = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/corpus/twelfth-night.txt")).unwrap();
        let words: Vec<&str> = corpus.split_whitespace().collect();
        let chunk = |i: usize| words[(i * per_turn * 3 / 4) % (words.len() - per_turn)..][..per_turn * 3 / 4].join(" ");
        println!("| turn | prompt tokens cached (prefix cache on) | first token, prefix cache on | off | on / off |");
        println!("| --- | --- | --- | --- | --- |");
        let mut messages = json!([]);
        for i in 0..turns {
            messages.as_array_mut().unwrap().push(json!({ "role": "user", "content": chunk(i) }));
            // the servers take turns going first
            let (a, b) = if i % 2 == 0 {
                let a = turn(&base_with, &messages, 32).await;
                (a, turn(&base_without, &messages, 32).await)
            } else {
                let b = turn(&base_without, &messages, 32).await;
                (turn(&base_with, &messages, 32).await, b)
            };
            assert_eq!(a.1, b.1, "turn {}: the replies differ", i + 1);
            println!("| {} | {} | {:.3} s | {:.3} s | {:.3} |", i + 1, a.2, a.0, b.0, a.0 / b.0);
            messages.as_array_mut().unwrap().push(json!({ "role": "assistant", "content": a.1 }));
        }
    });
    drop((with, without));
}
