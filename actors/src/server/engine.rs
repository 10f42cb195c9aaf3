//! The engine thread: the only owner of the model. It takes generation jobs from a bounded
//! queue, one at a time, and streams each job's text back over the job's own bounded
//! channel. A job whose receiver is gone (client disconnected) is cancelled at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::metrics::Metrics;

use odmoe::generate::{generate, FinishReason, GenerateOptions};
use odmoe::model::Model;
use odmoe::tokenizer::Tokenizer;
use tokio::sync::mpsc;

/// What a job streams back.
#[derive(Debug)]
pub enum Event {
    /// A piece of generated text.
    Text(String),
    /// Generation ended.
    Done { finish: FinishReason, prompt_tokens: usize, completion_tokens: usize },
    /// Generation failed.
    Error(String),
}

/// One generation request, tokenized.
pub struct Job {
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
    pub events: mpsc::Sender<Event>,
    /// When the request was accepted (for time to first token).
    pub accepted: Instant,
}

/// Starts the engine thread; returns the queue to submit jobs to.
pub fn start(model: Arc<Model>, tokenizer: Arc<Tokenizer>, queue: usize, metrics: Arc<Metrics>) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(queue.max(1));
    std::thread::Builder::new()
        .name("odmoe-engine".into())
        .spawn(move || {
            while let Some(job) = rx.blocking_recv() {
                let events = job.events.clone();
                let mut last_text: Option<Instant> = None;
                let result = generate(&model, &tokenizer, &job.prompt, &job.opts, |s| {
                    let now = Instant::now();
                    match last_text {
                        None => metrics.time_to_first_token.observe((now - job.accepted).as_secs_f64()),
                        Some(t) => metrics.inter_token_latency.observe((now - t).as_secs_f64()),
                    }
                    last_text = Some(now);
                    events.blocking_send(Event::Text(s.to_string())).is_ok()
                });
                let last = match result {
                    Ok(g) => {
                        metrics.prompt_tokens.fetch_add(g.prompt_tokens as u64, Ordering::Relaxed);
                        metrics.generated_tokens.fetch_add(g.generated_tokens as u64, Ordering::Relaxed);
                        Event::Done { finish: g.finish, prompt_tokens: g.prompt_tokens, completion_tokens: g.generated_tokens }
                    }
                    Err(e) => Event::Error(e.to_string()),
                };
                metrics.active.fetch_sub(1, Ordering::Relaxed);
                let _ = job.events.blocking_send(last);
            }
        })
        .expect("spawn engine thread");
    tx
}
