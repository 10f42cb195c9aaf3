//! The compute actor: the only owner of the model, running one batched step at a time on
//! a thread of its own (the GPU backend will need its device and queue on one thread; the
//! CPU backend fans out to the compute thread pool from there).
//!
//! Messages: [`ComputeMsg::Step`]. The handler hands the step to the compute thread and
//! awaits it, so steps run one after another in arrival order; the scheduler sends one
//! at a time, so the mailbox never holds more than one.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Instant;

use odmoe::model::{KvCache, Logits, Model, Sequence};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

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

/// The compute actor's messages.
pub enum ComputeMsg {
    /// Run one batched forward pass.
    Step(Vec<StepItem>, RpcReplyPort<StepOutput>),
}

/// Owns the model; runs steps on the compute thread.
pub struct ComputeActor;

type Job = (Vec<StepItem>, oneshot::Sender<StepOutput>);

/// The actor's state: the way to the compute thread.
pub struct ComputeState {
    jobs: std_mpsc::SyncSender<Job>,
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
        // capacity 1: the actor awaits each step before sending the next
        let (tx, rx) = std_mpsc::sync_channel::<Job>(1);
        std::thread::Builder::new().name("odmoe-compute".into()).spawn(move || {
            while let Ok((items, done)) = rx.recv() {
                let _ = done.send(run_step(&model, items));
            }
        })?;
        Ok(ComputeState { jobs: tx })
    }

    async fn handle(&self, _: ActorRef<ComputeMsg>, msg: ComputeMsg, state: &mut ComputeState) -> Result<(), ActorProcessingErr> {
        match msg {
            ComputeMsg::Step(items, reply) => {
                let (tx, rx) = oneshot::channel();
                state.jobs.send((items, tx)).map_err(|_| "the compute thread has stopped")?;
                let out = rx.await.map_err(|_| "the compute thread has stopped")?;
                let _ = reply.send(out);
            }
        }
        Ok(())
    }
}
