//! The serving pipeline: three `ractor` actors between the HTTP handlers and the model.
//!
//! ```text
//! HTTP handler ──Encode──▶ tokenizer ──ids──▶ HTTP handler ──Submit──▶ scheduler
//!                                                                        │  ▲
//!                                                              Step(batch) StepDone
//!                                                                        ▼  │
//!                                                                      compute ── model: attention,
//!                                                                      (own thread)  router(L) → pager,
//!                                                                                    gate or shadow
//!                                                                                    prefetch L+1..
//! scheduler ──Event (text, done, error)──▶ per-request bounded channel ──SSE──▶ client
//! ```
//!
//! # Actors and their messages
//!
//! - **tokenizer** ([`tokenizer`]): `Encode` renders a chat template or takes a prompt
//!   and returns token ids, each on a blocking thread of its own. Stateless; callers
//!   await the reply.
//! - **scheduler** ([`scheduler`]): owns every session (its decoding state, its KV cache,
//!   its event channel). `Submit` admits a request or refuses it at once (queue full);
//!   `StepDone` returns a step's caches and logits; `Wake` says a paused client has read.
//!   Between steps it builds the next batch — continuous batching: every running session
//!   contributes its next token, and prompts waiting to be read are cut into chunks of at
//!   most `prefill_chunk` tokens filling the rest of the `batch_tokens` budget, so a long
//!   prompt delays running streams by one chunk's compute at most.
//! - **compute** ([`compute`]): the only owner of the engine ([`engine::Engine`]: the
//!   model on the CPU, or its copy on a GPU with the device and its queue). `Step` runs
//!   one batched forward pass ([`odmoe::model::Model::forward_batch`], or
//!   [`odmoe::model::GpuModel::forward_batch`]) on the compute pool and sends `StepDone`
//!   back; a step goes straight to the pool thread that ran the last one while it waits
//!   for the next ([`compute::Compute::step`]), and to the actor's mailbox otherwise. Inside the pass, each layer routes its tokens, asks the expert pager
//!   for the chosen experts (one read serves every token of the step routed to an expert;
//!   the pager's reader threads and queues are its own), and — with prefetch on — applies
//!   the next layers' routers (`gate`) or the trained shadow predictor loaded from
//!   `--shadow` (`shadow`, [`odmoe::shadow`]) to the current state and queues the
//!   experts they pick as low-priority reads while the layer computes. These are calls
//!   within the step rather than actors of their own: a prediction costs microseconds
//!   (6 µs per token and layer on the demo model), far less than a message hop per layer,
//!   and the overlap comes from the pager's reader threads either way.
//!
//! Messages carry owned handles, never copies of weights: token ids, a session's cache
//! (host memory or device buffers, [`engine::SessionCache`]) moved into the step and back,
//! logits moved out.
//!
//! # Bounds (ractor mailboxes are unbounded; every queue that can grow has a bound)
//!
//! - tokenizer: at most `tokenizer.mailbox` requests in its mailbox; callers beyond
//!   that wait for a permit before sending (a semaphore in front of the actor).
//! - scheduler: `Submit` calls hold a permit of `scheduler.mailbox` while in flight;
//!   admitted requests wait in a queue of at most `server.max_queued` (more: the caller is
//!   told at once and answers 429); at most `scheduler.max_sessions` run at once. Other
//!   messages are bounded by construction: one `StepDone` per step, at most one `Wake`
//!   per paused session.
//! - compute: one step in flight (the scheduler sends the next `Step` only after
//!   `StepDone`), so its mailbox holds at most one message.
//! - per-request events: a channel of `server.stream_buffer` events. A session whose
//!   channel is full is left out of the next steps until its client reads; it never
//!   stalls the batch.
//!
//! # Guarantees
//!
//! - A session's tokens are exactly those it would get running alone on the same backend:
//!   batching changes no number (both backends' batched passes are row-independent).
//! - A client that goes away (its event receiver dropped) has its session, KV cache
//!   included, dropped before the next step is built.
//! - A failed step (e.g. an expert read error) ends the sessions in it with an `Error`
//!   event; the others go on.

pub mod compute;
pub mod engine;
pub mod prefix;
pub mod scheduler;
pub mod tokenizer;

use std::sync::Arc;
use std::time::Instant;

use odmoe::generate::{FinishReason, GenerateOptions};
use odmoe::tokenizer::{ChatTemplate, Tokenizer};
use ractor::{Actor, ActorRef};
use tokio::sync::{mpsc, Semaphore};

use crate::server::metrics::Metrics;

/// What a request's stream receives.
#[derive(Debug)]
pub enum Event {
    /// A piece of generated text.
    Text(String),
    /// Generation ended; `cached_tokens` of the prompt came from the prefix cache.
    Done { finish: FinishReason, prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize },
    /// Generation failed.
    Error(String),
    /// The server is shutting down and ended the session before it finished.
    Stopped { prompt_tokens: usize, completion_tokens: usize },
}

/// A tokenized generation request.
pub struct Request {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Limits and sampling.
    pub opts: GenerateOptions,
    /// Where the session's events go.
    pub events: mpsc::Sender<Event>,
    /// When the request arrived (for time to first token).
    pub accepted: Instant,
}

/// Sizes of the pipeline's queues and batches.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Admitted requests waiting for a session slot.
    pub max_queued: usize,
    /// Sessions generating at once.
    pub max_sessions: usize,
    /// Tokens per step, decode tokens and prompt chunks together.
    pub batch_tokens: usize,
    /// Most prompt tokens of one session in one step.
    pub prefill_chunk: usize,
    /// Requests waiting in the tokenizer's mailbox.
    pub tokenizer_mailbox: usize,
    /// `Submit` calls in flight to the scheduler.
    pub scheduler_mailbox: usize,
    /// Bytes of key/value cache the running sessions may reserve together (each its
    /// prompt plus `max_tokens` positions, up to its context); queued requests that would
    /// pass it wait, except that one runs whenever none does. `None`: no limit.
    pub kv_budget: Option<u64>,
    /// Bytes of finished sessions' keys and values kept for requests that begin as they
    /// did ([`prefix::PrefixCache`]); 0: none.
    pub prefix_budget: u64,
}

/// Handles to the running pipeline.
#[derive(Clone)]
pub struct Pipeline {
    tokenizer: ActorRef<tokenizer::TokenizerMsg>,
    tokenizer_permits: Arc<Semaphore>,
    scheduler: ActorRef<scheduler::SchedulerMsg>,
    scheduler_permits: Arc<Semaphore>,
}

/// Why a request was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `max_queued` requests are already waiting.
    QueueFull,
    /// The pipeline has stopped.
    Stopped,
}

impl Pipeline {
    /// Spawns the three actors (on the current tokio runtime).
    pub async fn start(engine: engine::Engine, tok: Arc<Tokenizer>, template: Option<ChatTemplate>, limits: Limits, metrics: Arc<Metrics>) -> Result<Pipeline, String> {
        let spawn_err = |what: &str, e: ractor::SpawnErr| format!("cannot start the {what} actor: {e}");
        let (tokenizer, _) = Actor::spawn(None, tokenizer::TokenizerActor, tokenizer::Encoder::new(tok.clone(), template)).await.map_err(|e| spawn_err("tokenizer", e))?;
        let compute = compute::Compute::start(engine.clone()).await.map_err(|e| spawn_err("compute", e))?;
        let args = scheduler::SchedulerArgs { engine, tokenizer: tok, compute, limits: limits.clone(), metrics };
        let (scheduler, _) = Actor::spawn(None, scheduler::SchedulerActor, args).await.map_err(|e| spawn_err("scheduler", e))?;
        Ok(Pipeline {
            tokenizer,
            tokenizer_permits: Arc::new(Semaphore::new(limits.tokenizer_mailbox.max(1))),
            scheduler,
            scheduler_permits: Arc::new(Semaphore::new(limits.scheduler_mailbox.max(1))),
        })
    }

    /// Token ids of `input` (at most `limit` of them), from the tokenizer actor.
    pub async fn encode(&self, input: tokenizer::Input, limit: usize) -> Result<Vec<u32>, tokenizer::EncodeError> {
        let stopped = |e: String| tokenizer::EncodeError::Invalid(format!("the tokenizer has stopped: {e}"));
        let _permit = self.tokenizer_permits.acquire().await.map_err(|e| stopped(e.to_string()))?;
        ractor::call!(self.tokenizer, tokenizer::TokenizerMsg::Encode, input, limit).map_err(|e| stopped(e.to_string()))?
    }

    /// Ends every session and queued request with [`Event::Stopped`], and refuses new
    /// ones: the server's shutdown grace is over.
    pub fn shut_down(&self) {
        let _ = self.scheduler.cast(scheduler::SchedulerMsg::ShutDown);
    }

    /// Hands a request to the scheduler; refused at once when its queue is full.
    pub async fn submit(&self, req: Request) -> Result<(), Refused> {
        let _permit = self.scheduler_permits.acquire().await.map_err(|_| Refused::Stopped)?;
        ractor::call!(self.scheduler, scheduler::SchedulerMsg::Submit, req).map_err(|_| Refused::Stopped)?
    }
}
