//! Load generator for `odmoe serve`: N = 1, 4, 16, 64 concurrent streaming sessions on
//! the demo model (or `ODMOE_LOAD_MODEL`), reporting aggregate tokens/s, time to first
//! token and inter-token latency (p50/p99), and the pipeline's own share of each step:
//! as wall time between forward passes (on a 2-core machine shared with this client, that
//! includes waiting for a core), and as the share of the server's CPU time spent outside
//! the compute pool (HTTP, actors, tokenizer; read from `/proc`, Linux only).
//!
//! `cargo bench -p odmoe-actors --bench load` (release build of the server). Each level
//! runs every session for `ODMOE_LOAD_TOKENS` tokens (default 128); ratios compare levels
//! of the same run, since the machine is shared. `ODMOE_LOAD_LEVELS=64` (comma-separated)
//! runs only the levels named, for profiling the server. `ODMOE_LOAD_ROUNDS=5` runs the
//! levels five times in turn and reports, per level, the round with the median rate and
//! the median of the rounds' ratios to the first level (with their range): on a machine
//! whose memory bandwidth drifts by a third from minute to minute, one round's ratio
//! says little.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "../tests/common/mod.rs"]
mod common;
use common::{http, Server};

struct Session {
    ttft: f64,
    gaps: Vec<f64>,
    tokens: u64,
}

async fn session(base: String, i: usize, max_tokens: usize) -> Session {
    let body = json!({
        "prompt": format!("{}:\n", ["ROMEO", "JULIET", "MERCUTIO", "NURSE", "BENVOLIO", "TYBALT", "CAPULET", "FRIAR LAURENCE"][i % 8]),
        "stream": true, "max_tokens": max_tokens, "temperature": 0.8, "seed": i, "stream_options": { "include_usage": true },
    });
    let t0 = Instant::now();
    let mut resp = http::send("POST", &format!("{base}/v1/completions"), Some(&body.to_string())).await.unwrap();
    if resp.status != 200 {
        let status = resp.status;
        panic!("status {status}: {}", resp.whole().await.map(|r| r.body).unwrap_or_default());
    }
    let (mut first, mut last, mut gaps, mut tokens) = (None, None::<Instant>, Vec::new(), 0);
    while let Some(data) = resp.event().await.unwrap() {
        if data.trim() == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data.trim()).unwrap();
        if let Some(u) = v.get("usage") {
            tokens = u["completion_tokens"].as_u64().unwrap();
        }
        if v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()) {
            let now = Instant::now();
            first.get_or_insert(now - t0);
            if let Some(l) = last {
                gaps.push((now - l).as_secs_f64());
            }
            last = Some(now);
        }
    }
    Session { ttft: first.unwrap_or_default().as_secs_f64(), gaps, tokens }
}

/// CPU time (clock ticks) each of the server's threads has used so far, by thread id, and
/// whether it is one of the compute pool's (`odmoe-compute-N`: forward passes and
/// sampling) or another (HTTP, actors, tokenizer, the runtime).
fn server_cpu(pid: u32) -> std::collections::HashMap<String, (bool, u64)> {
    let mut threads = std::collections::HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let (Ok(comm), Ok(stat)) = (std::fs::read_to_string(task.path().join("comm")), std::fs::read_to_string(task.path().join("stat"))) else { continue };
        // fields after the parenthesized name: utime and stime are the 12th and 13th
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
        threads.insert(task.file_name().to_string_lossy().into_owned(), (comm.starts_with("odmoe-compute"), f.iter().sum()));
    }
    threads
}

/// The compute pool's and the other threads' CPU ticks between two [`server_cpu`]
/// snapshots, thread by thread: a thread that ended in between (an idle blocking-pool
/// thread, say) drops out instead of taking its whole past off the sum.
fn cpu_between(before: &std::collections::HashMap<String, (bool, u64)>, after: &std::collections::HashMap<String, (bool, u64)>) -> (f64, f64) {
    let (mut pool, mut other) = (0u64, 0u64);
    for (tid, &(compute, ticks)) in after {
        let used = ticks.saturating_sub(before.get(tid).map_or(0, |b| b.1));
        if compute {
            pool += used;
        } else {
            other += used;
        }
    }
    (pool as f64, other as f64)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn metrics(base: &str) -> impl Fn(&str) -> f64 {
    let m = http::get(&format!("{base}/metrics")).await.unwrap().body;
    move |name: &str| m.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// One level's figures (times in milliseconds).
struct Row {
    rate: f64,
    ttft_p50: f64,
    ttft_p99: f64,
    itl_p50: f64,
    itl_p99: f64,
    tokens_per_step: f64,
    forward_ms: f64,
    sampling_ms: f64,
    pipeline_ms: f64,
    pipeline_pct: f64,
    cpu_other_pct: f64,
}

/// Runs `n` concurrent sessions of `tokens` tokens each and reads the server's figures.
async fn level(base: &str, pid: u32, n: usize, tokens: usize) -> Row {
    let before = metrics(base).await;
    let cpu0 = server_cpu(pid);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(session(base.to_string(), i, tokens))).collect();
    let mut sessions = Vec::new();
    for t in tasks {
        sessions.push(t.await.unwrap());
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = server_cpu(pid);
    let after = metrics(base).await;
    let d = |name: &str| after(name) - before(name);
    let (cpu_pool, cpu_other) = cpu_between(&cpu0, &cpu1);
    let total: u64 = sessions.iter().map(|s| s.tokens).sum();
    let mut ttft: Vec<f64> = sessions.iter().map(|s| s.ttft).collect();
    let mut itl: Vec<f64> = sessions.iter().flat_map(|s| s.gaps.iter().copied()).collect();
    let steps = d("odmoe_steps_total");
    let step_s = d("odmoe_step_seconds_sum");
    let sampling = d("odmoe_sampling_seconds_total");
    // the pipeline's own time: what lies between back-to-back forward passes, less the
    // engine's sampling
    let pipeline = d("odmoe_step_overhead_seconds_total") - sampling;
    Row {
        rate: total as f64 / wall,
        ttft_p50: pct(&mut ttft, 0.5) * 1e3,
        ttft_p99: pct(&mut ttft, 0.99) * 1e3,
        itl_p50: pct(&mut itl, 0.5) * 1e3,
        itl_p99: pct(&mut itl, 0.99) * 1e3,
        tokens_per_step: d("odmoe_step_tokens_total") / steps,
        forward_ms: step_s / steps * 1e3,
        sampling_ms: sampling / steps * 1e3,
        pipeline_ms: pipeline / steps * 1e3,
        pipeline_pct: pipeline / (step_s + sampling + pipeline) * 100.0,
        cpu_other_pct: cpu_other / (cpu_pool + cpu_other).max(1.0) * 100.0,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let tokens: usize = std::env::var("ODMOE_LOAD_TOKENS").ok().and_then(|v| v.parse().ok()).unwrap_or(128);
    let model = std::env::var("ODMOE_LOAD_MODEL").ok();
    let args: Vec<&str> = model.iter().flat_map(|m| ["--model", m.as_str()]).collect();
    let srv = Server::start_with(&args, &[]);
    let addr = srv.addr.clone();
    let base = format!("http://{addr}");
    while http::get(&format!("{base}/health")).await.map(|r| r.status).ok() != Some(200) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // warm-up
    session(base.clone(), 0, 16).await;

    let levels: Vec<usize> = match std::env::var("ODMOE_LOAD_LEVELS") {
        Ok(v) => v.split(',').map(|l| l.trim().parse().expect("ODMOE_LOAD_LEVELS: numbers")).collect(),
        Err(_) => vec![1, 4, 16, 64],
    };
    let rounds: usize = std::env::var("ODMOE_LOAD_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    // rounds[r][level]: the levels take turns, so each round's ratios compare runs made
    // close together in time on a machine whose speed drifts
    let mut rows: Vec<Vec<Row>> = Vec::new();
    for _ in 0..rounds {
        let mut round = Vec::new();
        for &n in &levels {
            round.push(level(&base, srv.pid(), n, tokens).await);
        }
        rows.push(round);
    }
    println!("| sessions | tokens/s (aggregate) | vs first level | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | tokens/step | forward ms/step | sampling ms/step | pipeline ms/step | pipeline / step | server CPU outside the pool |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (li, &n) in levels.iter().enumerate() {
        // the round with the median rate stands for the level; the ratio is the median of
        // the rounds' own ratios (with their range when there are several)
        let mut by_rate: Vec<&Row> = rows.iter().map(|r| &r[li]).collect();
        by_rate.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let row = by_rate[by_rate.len() / 2];
        let mut ratios: Vec<f64> = rows.iter().map(|r| r[li].rate / r[0].rate).collect();
        let ratio = pct(&mut ratios, 0.5);
        let range = if rounds > 1 { format!(" ({:.2}–{:.2})", ratios[0], ratios[ratios.len() - 1]) } else { String::new() };
        println!(
            "| {n} | {:.0} | {ratio:.2}x{range} | {:.1} | {:.1} | {:.2} | {:.2} | {:.1} | {:.2} | {:.2} | {:.2} | {:.1}% | {:.1}% |",
            row.rate, row.ttft_p50, row.ttft_p99, row.itl_p50, row.itl_p99, row.tokens_per_step, row.forward_ms, row.sampling_ms, row.pipeline_ms, row.pipeline_pct, row.cpu_other_pct,
        );
    }
    drop(srv);
}
