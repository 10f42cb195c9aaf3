//! The engine thread: the only owner of the model. It takes generation jobs from a bounded
//! queue, one at a time, and streams each job's text back over the job's own bounded
//! channel. A job whose receiver is gone (client disconnected) is cancelled at once.

use std::sync::Arc;

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
}

/// Starts the engine thread; returns the queue to submit jobs to.
pub fn start(model: Arc<Model>, tokenizer: Arc<Tokenizer>, queue: usize) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(queue.max(1));
    std::thread::Builder::new()
        .name("odmoe-engine".into())
        .spawn(move || {
            while let Some(job) = rx.blocking_recv() {
                let events = job.events.clone();
                let result = generate(&model, &tokenizer, &job.prompt, &job.opts, |s| events.blocking_send(Event::Text(s.to_string())).is_ok());
                let last = match result {
                    Ok(g) => Event::Done { finish: g.finish, prompt_tokens: g.prompt_tokens, completion_tokens: g.generated_tokens },
                    Err(e) => Event::Error(e.to_string()),
                };
                let _ = job.events.blocking_send(last);
            }
        })
        .expect("spawn engine thread");
    tx
}
