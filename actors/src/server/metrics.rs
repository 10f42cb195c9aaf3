//! Server metrics in Prometheus' text format (`GET /metrics`, names prefixed `odmoe_`).

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A fixed-bucket histogram of seconds.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(), sum_micros: AtomicU64::new(0), count: AtomicU64::new(0) }
    }

    /// Records one observation.
    pub fn observe(&self, seconds: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if seconds <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Ordering::Relaxed));
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {n}");
    }
}

const STEP_BOUNDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
const LATENCY_BOUNDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Counters shared by the HTTP handlers and the engine thread.
pub struct Metrics {
    /// Completion requests accepted, chat and text.
    pub requests_chat: AtomicU64,
    /// Text completion requests accepted.
    pub requests_text: AtomicU64,
    /// Requests refused with an error response.
    pub requests_rejected: AtomicU64,
    /// Prompt tokens processed.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Sessions generating (set by the scheduler).
    pub active: AtomicI64,
    /// Requests admitted and waiting for a session slot (set by the scheduler).
    pub queued: AtomicI64,
    /// Sessions ended because their client went away.
    pub cancelled: AtomicU64,
    /// Prompt tokens looked up in the prefix cache, and those found there.
    pub prefix_lookup_tokens: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    /// Bytes the prefix cache holds (set by the scheduler).
    pub prefix_bytes: AtomicI64,
    /// Batched steps run.
    pub steps: AtomicU64,
    /// Tokens run in those steps (prompt chunks and decode tokens).
    pub step_tokens: AtomicU64,
    /// Seconds each step's forward pass took.
    pub step_seconds: Histogram,
    /// Microseconds per step outside the forward pass while steps run back to back: from
    /// sending a step to handling its result, beyond the pass itself, plus from handling
    /// it to sending the next (sampling, text, events, building the batch).
    pub step_overhead_micros: AtomicU64,
    /// Microseconds spent choosing tokens and turning them into text (part of the
    /// overhead above: engine work, not the pipeline's).
    pub sample_micros: AtomicU64,
    /// From request accepted to first text.
    pub time_to_first_token: Histogram,
    /// Between successive pieces of text.
    pub inter_token_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests_chat: AtomicU64::new(0),
            requests_text: AtomicU64::new(0),
            requests_rejected: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            active: AtomicI64::new(0),
            queued: AtomicI64::new(0),
            cancelled: AtomicU64::new(0),
            prefix_lookup_tokens: AtomicU64::new(0),
            prefix_hit_tokens: AtomicU64::new(0),
            prefix_bytes: AtomicI64::new(0),
            steps: AtomicU64::new(0),
            step_tokens: AtomicU64::new(0),
            step_seconds: Histogram::new(STEP_BOUNDS),
            step_overhead_micros: AtomicU64::new(0),
            sample_micros: AtomicU64::new(0),
            time_to_first_token: Histogram::new(LATENCY_BOUNDS),
            inter_token_latency: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

impl Metrics {
    /// Prometheus text; expert-cache figures come from the pager.
    pub fn render(&self, experts: Option<odmoe::experts::PagerStatsSnapshot>) -> String {
        let mut o = String::new();
        let c = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let _ = writeln!(o, "# HELP odmoe_requests_total Completion requests accepted.\n# TYPE odmoe_requests_total counter");
        let _ = writeln!(o, "odmoe_requests_total{{endpoint=\"chat\"}} {}", self.requests_chat.load(Ordering::Relaxed));
        let _ = writeln!(o, "odmoe_requests_total{{endpoint=\"completions\"}} {}", self.requests_text.load(Ordering::Relaxed));
        c(&mut o, "odmoe_requests_rejected_total", "Requests answered with an error.", self.requests_rejected.load(Ordering::Relaxed));
        c(&mut o, "odmoe_prompt_tokens_total", "Prompt tokens processed.", self.prompt_tokens.load(Ordering::Relaxed));
        c(&mut o, "odmoe_tokens_generated_total", "Tokens generated.", self.generated_tokens.load(Ordering::Relaxed));
        let g = |o: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        g(&mut o, "odmoe_active_sessions", "Sessions generating.", self.active.load(Ordering::Relaxed));
        g(&mut o, "odmoe_queue_depth", "Requests waiting for a session slot.", self.queued.load(Ordering::Relaxed));
        c(&mut o, "odmoe_sessions_cancelled_total", "Sessions ended because the client went away.", self.cancelled.load(Ordering::Relaxed));
        c(&mut o, "odmoe_prefix_cache_lookup_tokens_total", "Prompt tokens looked up in the prefix cache.", self.prefix_lookup_tokens.load(Ordering::Relaxed));
        c(&mut o, "odmoe_prefix_cache_hit_tokens_total", "Prompt tokens whose keys and values came from the prefix cache.", self.prefix_hit_tokens.load(Ordering::Relaxed));
        g(&mut o, "odmoe_prefix_cache_bytes", "Bytes of keys and values the prefix cache holds.", self.prefix_bytes.load(Ordering::Relaxed));
        c(&mut o, "odmoe_steps_total", "Batched forward steps run.", self.steps.load(Ordering::Relaxed));
        c(&mut o, "odmoe_step_tokens_total", "Tokens run in batched steps (prompt chunks and decode tokens).", self.step_tokens.load(Ordering::Relaxed));
        self.step_seconds.render("odmoe_step_seconds", "Seconds per batched forward step.", &mut o);
        let _ = writeln!(o, "# HELP odmoe_step_overhead_seconds_total Seconds per step spent outside the forward pass (scheduling and messages).\n# TYPE odmoe_step_overhead_seconds_total counter\nodmoe_step_overhead_seconds_total {}", self.step_overhead_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(o, "# HELP odmoe_sampling_seconds_total Seconds spent choosing tokens and decoding their text (within the step overhead).\n# TYPE odmoe_sampling_seconds_total counter\nodmoe_sampling_seconds_total {}", self.sample_micros.load(Ordering::Relaxed) as f64 / 1e6);
        g(&mut o, "odmoe_model_file_changed", "1 once a mapped model file was truncated or replaced on disk while in use.", odmoe::gguf::file_changed() as i64);
        self.time_to_first_token.render("odmoe_time_to_first_token_seconds", "Seconds from request to first text.", &mut o);
        self.inter_token_latency.render("odmoe_inter_token_latency_seconds", "Seconds between successive pieces of text.", &mut o);
        if let Some(s) = experts {
            c(&mut o, "odmoe_expert_cache_hits_total", "Expert requests served from the cache.", s.hits);
            c(&mut o, "odmoe_expert_cache_misses_total", "Expert requests that needed a read.", s.misses);
            c(&mut o, "odmoe_expert_bytes_read_total", "Bytes of experts read from disk.", s.bytes_read);
            c(&mut o, "odmoe_expert_evictions_total", "Experts evicted from the cache.", s.evictions);
            c(&mut o, "odmoe_expert_read_errors_total", "Expert reads that failed (I/O errors, damaged records).", s.read_errors);
            let _ = writeln!(o, "# HELP odmoe_expert_read_wait_seconds_total Seconds the compute waited on expert reads.\n# TYPE odmoe_expert_read_wait_seconds_total counter\nodmoe_expert_read_wait_seconds_total {}", s.wait_micros as f64 / 1e6);
            c(&mut o, "odmoe_expert_prefetch_reads_total", "Prefetch reads started.", s.prefetch_reads);
            c(&mut o, "odmoe_expert_prefetch_hits_total", "Demanded experts that a prefetch brought in.", s.prefetch_hits);
            c(&mut o, "odmoe_expert_prefetch_wasted_bytes_total", "Bytes of prefetched experts dropped before any use.", s.prefetch_wasted_bytes);
            c(&mut o, "odmoe_expert_prefetch_cancelled_total", "Prefetches cancelled before their read started.", s.prefetch_cancelled);
            let _ = writeln!(o, "# HELP odmoe_expert_read_latency_seconds Expert read latency percentiles (upper bounds of quarter-octave buckets).\n# TYPE odmoe_expert_read_latency_seconds gauge");
            for (q, v) in [("0.5", s.read_p50_micros), ("0.9", s.read_p90_micros), ("0.99", s.read_p99_micros)] {
                let _ = writeln!(o, "odmoe_expert_read_latency_seconds{{quantile=\"{q}\"}} {}", v as f64 / 1e6);
            }
        }
        o
    }
}
