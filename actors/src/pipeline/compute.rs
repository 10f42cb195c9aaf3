//! The compute actor: the only owner of the model, running one batched step at a time on
//! the compute thread pool (the forward pass starts on a pool worker and fans out from
//! there: no thread of its own to wake and wait on between the actor and the pool).
//!
//! Messages: [`ComputeMsg::Step`]. The handler hands the step to the pool and returns;
//! the pool thread that finishes the pass hands the result to the step's `done` callback
//! (the scheduler's mailbox), so no task on the async runtime has to wake in between. The
//! scheduler sends one step at a time and the next only after the last one's result, so
//! steps never overlap and the mailbox never holds more than one.

use std::sync::Arc;
use std::time::Instant;

use odmoe::model::{KvCache, Logits, Model, Sequence};
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// One session's part of a step.
pub struct StepItem {
    /// The scheduler's id of the session.
    pub session: u64,
    /// Tokens to run (a prompt chunk, or the last sampled token).
    pub tokens: Vec<u32>,
    /// The session's cache, moved in and handed back in [`StepOutput`].
    pub cache: KvCache,
    /// Whether this part needs the last position's logits.
    pub logits: bool,
}

/// A finished step: the items (caches updated) and, per item, its logits (empty when not
/// asked for) — or the error that failed the whole step (caches then unchanged).
pub struct StepOutput {
    /// The step's items, in the order given.
    pub items: Vec<StepItem>,
    /// Per item, its last position's logits.
    pub logits: Result<Vec<Vec<f32>>, String>,
    /// Seconds the forward pass took.
    pub seconds: f64,
}

/// Where a step's result goes: called once, on the pool thread that ran it, with the
/// output or the reason there is none (the pass panicked; its caches are lost).
pub type StepDone = Box<dyn FnOnce(Result<StepOutput, String>) + Send>;

/// The compute actor's messages.
pub enum ComputeMsg {
    /// Run one batched forward pass.
    Step(Vec<StepItem>, StepDone),
}

/// Owns the model; runs steps on the compute thread pool.
pub struct ComputeActor;

/// The actor's state: the model.
pub struct ComputeState {
    model: Arc<Model>,
}

fn run_step(model: &Model, mut items: Vec<StepItem>) -> StepOutput {
    let t = Instant::now();
    let mut seqs: Vec<Sequence<'_>> = items
        .iter_mut()
        .map(|it| Sequence { tokens: &it.tokens, cache: &mut it.cache, logits: if it.logits { Logits::Last } else { Logits::None } })
        .collect();
    let logits = model.forward_batch(&mut seqs).map_err(|e| e.to_string());
    drop(seqs);
    StepOutput { items, logits, seconds: t.elapsed().as_secs_f64() }
}

impl Actor for ComputeActor {
    type Msg = ComputeMsg;
    type State = ComputeState;
    type Arguments = Arc<Model>;

    async fn pre_start(&self, _: ActorRef<ComputeMsg>, model: Arc<Model>) -> Result<ComputeState, ActorProcessingErr> {
        Ok(ComputeState { model })
    }

    async fn handle(&self, _: ActorRef<ComputeMsg>, msg: ComputeMsg, state: &mut ComputeState) -> Result<(), ActorProcessingErr> {
        match msg {
            ComputeMsg::Step(items, done) => {
                let model = state.model.clone();
                rayon::spawn(move || {
                    // caught, so that it is reported instead of aborting the process as an
                    // unhandled panic in a pool job would
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_step(&model, items)));
                    done(out.map_err(|_| "the forward pass panicked".to_string()));
                });
            }
        }
        Ok(())
    }
}
