//! Soak test of `odmoe serve`: `ODMOE_SOAK_SESSIONS` clients (default 32) for
//! `ODMOE_SOAK_MINUTES` minutes (default 60) against the demo model (or
//! `ODMOE_SOAK_MODEL`), each doing what clients do in turn — streamed and whole text and
//! chat completions, a stream left mid-way, a stream read slowly, a malformed request, an
//! oversized prompt — while the server's resident memory and the requests' latencies are
//! sampled every `ODMOE_SOAK_SAMPLE_S` seconds (default 60). The prefix cache gets 16 MiB,
//! which it fills in the first minute.
//!
//! Passes when every request completed (a stream ending in `[DONE]`) or was refused with
//! a documented status (400, 429 with `Retry-After`), and the server's RSS at the end (the
//! median of the last three samples) is within `ODMOE_SOAK_MAX_GROWTH` (default 0.10) of
//! its level after warm-up (the median of samples 2 to 4); else exits 1. Prints the
//! series as a table.
//!
//! `ODMOE_SOAK_SESSIONS=32 ODMOE_SOAK_MINUTES=60 cargo bench -p odmoe-actors --bench soak`

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

#[path = "../tests/common/mod.rs"]
mod common;
use common::{http, Server};

fn env<T: std::str::FromStr>(k: &str, default: T) -> T {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What one client saw over the run.
#[derive(Default)]
struct Tally {
    /// Outcome (`done`, `refused 400`, `left`, …) → count.
    outcomes: BTreeMap<String, u64>,
    /// Requests that ended in a way the API does not document, with what happened.
    bad: Vec<String>,
    /// Seconds to the first event of each streamed request in the current sample.
    ttft: Vec<f64>,
    /// Seconds of each whole request in the current sample.
    whole: Vec<f64>,
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// One client's turn number `turn`: a request of the kind the turn picks.
async fn turn(base: &str, client: usize, turn: u64, tally: &Mutex<Tally>) {
    let note = |outcome: &str| *tally.lock().unwrap().outcomes.entry(outcome.to_string()).or_default() += 1;
    let bad = |what: String| tally.lock().unwrap().bad.push(what);
    let speaker = ["ROMEO", "JULIET", "MERCUTIO", "NURSE"][client % 4];
    let t0 = Instant::now();
    match turn % 8 {
        // streamed text and chat, read whole
        0..=2 => {
            let body = if turn.is_multiple_of(2) {
                json!({ "prompt": format!("{speaker}:\n"), "stream": true, "max_tokens": 64, "seed": turn })
            } else {
                json!({ "messages": [{ "role": "user", "content": format!("{speaker}, what news?") }], "stream": true, "max_tokens": 64, "seed": turn })
            };
            let path = if turn.is_multiple_of(2) { "/v1/completions" } else { "/v1/chat/completions" };
            match http::send("POST", &format!("{base}{path}"), Some(&body.to_string())).await {
                Ok(mut r) if r.status == 200 => {
                    let mut first = true;
                    loop {
                        match r.event().await {
                            Ok(Some(e)) if e == "[DONE]" => break note("done"),
                            Ok(Some(e)) => {
                                if first {
                                    tally.lock().unwrap().ttft.push(t0.elapsed().as_secs_f64());
                                    first = false;
                                }
                                if e.contains("\"error\"") {
                                    bad(format!("error event: {e}"));
                                }
                            }
                            Ok(None) => break bad("a stream ended without [DONE]".into()),
                            Err(e) => break bad(format!("a stream broke: {e}")),
                        }
                    }
                }
                Ok(r) if r.status == 429 && r.headers.contains_key("retry-after") => note("refused 429"),
                Ok(r) => bad(format!("streamed request answered {}", r.status)),
                Err(e) => bad(format!("streamed request failed: {e}")),
            }
        }
        // a whole completion
        3..=4 => {
            let body = json!({ "prompt": format!("{speaker}:"), "max_tokens": 32, "temperature": 0 });
            match http::post(&format!("{base}/v1/completions"), &body.to_string()).await {
                Ok(r) if r.status == 200 && r.json()["usage"]["completion_tokens"].as_u64().is_some() => {
                    tally.lock().unwrap().whole.push(t0.elapsed().as_secs_f64());
                    note("done")
                }
                Ok(r) if r.status == 429 => note("refused 429"),
                Ok(r) => bad(format!("whole request answered {}: {}", r.status, r.body)),
                Err(e) => bad(format!("whole request failed: {e}")),
            }
        }
        // a client that leaves after a few events
        5 => {
            let body = json!({ "prompt": format!("{speaker}:"), "stream": true, "max_tokens": 500 });
            if let Ok(mut r) = http::send("POST", &format!("{base}/v1/completions"), Some(&body.to_string())).await {
                for _ in 0..3 {
                    let _ = r.event().await;
                }
            }
            note("left mid-stream");
        }
        // a malformed request and an oversized prompt: 400 with an error body
        6 => {
            for (body, code) in [("{\"prompt\": ".to_string(), "invalid_request"), (json!({ "prompt": "O ".repeat(20_000) }).to_string(), "context_length_exceeded")] {
                match http::post(&format!("{base}/v1/completions"), &body).await {
                    Ok(r) if r.status == 400 && r.json()["error"]["code"] == code => note("refused 400"),
                    Ok(r) => bad(format!("a bad request answered {}: {}", r.status, r.body)),
                    Err(e) => bad(format!("a bad request failed: {e}")),
                }
            }
        }
        // a stream read slowly
        _ => {
            let body = json!({ "prompt": format!("{speaker}:"), "stream": true, "max_tokens": 48 });
            match http::send("POST", &format!("{base}/v1/completions"), Some(&body.to_string())).await {
                Ok(mut r) if r.status == 200 => loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    match r.event().await {
                        Ok(Some(e)) if e == "[DONE]" => break note("done"),
                        Ok(Some(_)) => {}
                        _ => break bad("a slow stream ended without [DONE]".into()),
                    }
                },
                Ok(r) if r.status == 429 => note("refused 429"),
                Ok(r) => bad(format!("slow stream answered {}", r.status)),
                Err(e) => bad(format!("slow stream failed: {e}")),
            }
        }
    }
}

fn main() {
    let sessions: usize = env("ODMOE_SOAK_SESSIONS", 32);
    let minutes: f64 = env("ODMOE_SOAK_MINUTES", 60.0);
    let sample = Duration::from_secs(env("ODMOE_SOAK_SAMPLE_S", 60));
    let max_growth: f64 = env("ODMOE_SOAK_MAX_GROWTH", 0.10);
    let model = std::env::var("ODMOE_SOAK_MODEL").ok();
    let args: Vec<&str> = model.iter().flat_map(|m| ["--model", m.as_str()]).collect();
    // a small prefix cache: it fills within the first minute, so what grows after is not it
    let srv = Server::start_with(&args, &[("ODMOE_CACHE_PREFIX_BUDGET", "16MiB")]);
    let (pid, addr, log) = (srv.pid(), srv.addr.clone(), srv.log.clone());
    let base = format!("http://{addr}");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ok = rt.block_on(async move {
        while http::get(&format!("{base}/health")).await.map(|r| r.status).ok() != Some(200) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("soak: {sessions} clients for {minutes} min against {base} (server pid {pid}); a row every {} s\n", sample.as_secs());
        println!("| minute | server RSS MiB | requests | first event p50 / p99 ms | whole request p50 / p99 ms | unexpected |");
        println!("| --- | --- | --- | --- | --- | --- |");
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..sessions)
            .map(|c| {
                let (base, tally, stop) = (base.clone(), tally.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = c as u64;
                    while !stop.load(Ordering::Relaxed) {
                        turn(&base, c, n, &tally).await;
                        n += 1;
                    }
                })
            })
            .collect();
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(minutes * 60.0);
        let mut rss = Vec::new();
        let mut done_before = 0;
        while Instant::now() < end {
            tokio::time::sleep(sample.min(end.saturating_duration_since(Instant::now())).max(Duration::from_millis(10))).await;
            let now = rss_kib(pid);
            rss.push(now);
            let (requests, mut ttft, mut whole, unexpected) = {
                let mut t = tally.lock().unwrap();
                let total: u64 = t.outcomes.values().sum();
                (total, std::mem::take(&mut t.ttft), std::mem::take(&mut t.whole), t.bad.len())
            };
            println!(
                "| {:.1} | {:.1} | {} | {:.0} / {:.0} | {:.0} / {:.0} | {unexpected} |",
                start.elapsed().as_secs_f64() / 60.0,
                now as f64 / 1024.0,
                requests - done_before,
                1e3 * pct(&mut ttft, 0.5),
                1e3 * pct(&mut ttft, 0.99),
                1e3 * pct(&mut whole, 0.5),
                1e3 * pct(&mut whole, 0.99)
            );
            done_before = requests;
        }
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = tokio::time::timeout(Duration::from_secs(60), c).await;
        }
        let t = tally.lock().unwrap();
        println!("\noutcomes: {:?}", t.outcomes);
        // a window's median, so that the requests in flight at one sample (megabytes) do
        // not pass for growth: after the first sample (warm-up), and at the end
        let median = |w: &[u64]| -> u64 {
            let mut w = w.to_vec();
            w.sort_unstable();
            w.get(w.len() / 2).copied().unwrap_or(0)
        };
        let n = rss.len();
        let baseline = median(&rss[1.min(n)..4.min(n)]).max(1);
        let last = median(&rss[n.saturating_sub(3)..]);
        let growth = last as f64 / baseline as f64 - 1.0;
        println!("RSS (median of three samples): {:.1} MiB after warm-up, {:.1} MiB at the end ({:+.1}%; at most {:+.1}% passes)", baseline as f64 / 1024.0, last as f64 / 1024.0, 100.0 * growth, 100.0 * max_growth);
        for b in t.bad.iter().take(20) {
            println!("unexpected: {b}");
        }
        let ok = t.bad.is_empty() && growth <= max_growth;
        println!("{}", if ok { "PASS" } else { "FAIL" });
        ok
    });
    drop(srv);
    if !ok {
        for l in log.lock().unwrap().lines().rev().take(20).collect::<Vec<_>>().into_iter().rev() {
            eprintln!("server: {l}");
        }
        std::process::exit(1);
    }
}
