//! The compute actor: the only owner of the engine (the model, or its copy on a GPU with
//! the device and queue), running one batched step at a time on
//! the compute thread pool (the forward pass starts on a pool worker and fans out from
//! there: no thread of its own to wake and wait on between the actor and the pool).
//!
//! Steps come through a [`Compute`] handle. The pool thread that finishes a pass hands
//! the result to the step's `done` callback (the scheduler's mailbox), so no task on the
//! async runtime has to wake in between, and then waits a moment for the next step
//! ([`Handoff`]): while sessions run, one pool thread goes from step to step without
//! sleeping, and [`Compute::step`] gives it the next step directly. Only when no pool
//! thread waits does the step go to the actor as [`ComputeMsg::Step`], whose handler
//! starts one. The scheduler sends one step at a time and the next only after the last
//! one's result, so steps never overlap and the mailbox never holds more than one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::engine::{Engine, SessionCache};
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// One session's part of a step.
pub struct StepItem {
    /// The scheduler's id of the session.
    pub session: u64,
    /// Tokens to run (a prompt chunk, or the last sampled token).
    pub tokens: Vec<u32>,
    /// The session's cache, moved in and handed back in [`StepOutput`].
    pub cache: SessionCache,
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

/// Owns the engine; runs steps on the compute thread pool.
pub struct ComputeActor;

/// Where steps are sent: the pool thread waiting for one, else the compute actor.
#[derive(Clone)]
pub struct Compute {
    actor: ActorRef<ComputeMsg>,
    handoff: Arc<Handoff>,
}

impl Compute {
    /// Spawns the compute actor owning `engine`.
    pub async fn start(engine: Engine) -> Result<Compute, ractor::SpawnErr> {
        let handoff = Arc::new(Handoff::default());
        let (actor, _) = Actor::spawn(None, ComputeActor, (engine, handoff.clone())).await?;
        Ok(Compute { actor, handoff })
    }

    /// Runs a step: handed straight to the pool thread that ran the last one if it still
    /// waits (a message to the actor waits for a runtime thread, which the streams' writes
    /// keep busy right after a step: 0.3-0.5 ms a step with 64 sessions of the demo
    /// model), else sent to the actor. On error `done` has not been called and the step
    /// is lost with the actor.
    pub fn step(&self, items: Vec<StepItem>, done: StepDone) -> Result<(), String> {
        match self.handoff.offer((items, done)) {
            None => Ok(()),
            Some((items, done)) => self.actor.cast(ComputeMsg::Step(items, done)).map_err(|e| e.to_string()),
        }
    }
}

/// The actor's state: the engine, and where a pool thread that just finished a step waits
/// for the next.
pub struct ComputeState {
    engine: Engine,
    handoff: Arc<Handoff>,
}

type Job = (Vec<StepItem>, StepDone);

/// How long the pool thread that ran a step stays for the next one (the scheduler's turn
/// between steps takes well under this) before it leaves the pool idle.
const HOT_WAIT: Duration = Duration::from_millis(2);

/// The next step, handed straight to the pool thread that finished the last one while it
/// waits ([`HOT_WAIT`]): a pool thread woken from sleep took 0.25-0.5 ms to get a core
/// on a busy machine, several percent of a step with many sessions.
#[derive(Default)]
pub struct Handoff {
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    job: Option<Job>,
    /// A pool thread is waiting for `job`.
    waiting: bool,
}

impl Handoff {
    /// Gives `job` to the waiting pool thread, or hands it back when none waits.
    fn offer(&self, job: Job) -> Option<Job> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.waiting {
            slot.job = Some(job);
            None
        } else {
            Some(job)
        }
    }

    /// The next job, if one comes within [`HOT_WAIT`]; meanwhile the thread runs the
    /// pool's other work (the scheduler's sampling) or lets other threads run.
    fn next(&self) -> Option<Job> {
        let start = Instant::now();
        loop {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(job) = slot.job.take() {
                return Some(job);
            }
            if start.elapsed() >= HOT_WAIT {
                slot.waiting = false;
                return None;
            }
            drop(slot);
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::thread::yield_now();
            }
        }
    }
}

/// Runs `job` and the steps handed to this pool thread after it (see [`Handoff`]).
fn serve(engine: &Engine, handoff: &Handoff, mut job: Job) {
    loop {
        let (items, done) = job;
        // caught, so that it is reported instead of aborting the process as an unhandled
        // panic in a pool job would
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_step(engine, items)));
        // waiting from before the scheduler can see the result and send the next step
        handoff.slot.lock().unwrap_or_else(|e| e.into_inner()).waiting = true;
        done(out.map_err(|_| "the forward pass panicked".to_string()));
        match handoff.next() {
            Some(next) => job = next,
            None => return,
        }
    }
}

fn run_step(engine: &Engine, mut items: Vec<StepItem>) -> StepOutput {
    let t = Instant::now();
    let logits = engine.forward_batch(&mut items);
    StepOutput { items, logits, seconds: t.elapsed().as_secs_f64() }
}

impl Actor for ComputeActor {
    type Msg = ComputeMsg;
    type State = ComputeState;
    type Arguments = (Engine, Arc<Handoff>);

    async fn pre_start(&self, _: ActorRef<ComputeMsg>, (engine, handoff): (Engine, Arc<Handoff>)) -> Result<ComputeState, ActorProcessingErr> {
        Ok(ComputeState { engine, handoff })
    }

    async fn handle(&self, _: ActorRef<ComputeMsg>, msg: ComputeMsg, state: &mut ComputeState) -> Result<(), ActorProcessingErr> {
        match msg {
            ComputeMsg::Step(items, done) => {
                if let Some(job) = state.handoff.offer((items, done)) {
                    let (engine, handoff) = (state.engine.clone(), state.handoff.clone());
                    rayon::spawn(move || serve(&engine, &handoff, job));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_pool_thread_takes_the_next_step_and_leaves_after_the_wait() {
        let h = Handoff::default();
        let job = || (Vec::new(), Box::new(|_| {}) as StepDone);
        // nobody waits: the step comes back (to be spawned)
        assert!(h.offer(job()).is_some());
        // a waiting thread gets it
        h.slot.lock().unwrap().waiting = true;
        assert!(h.offer(job()).is_none());
        assert!(h.next().is_some());
        // nothing comes: the thread leaves after the wait, and later steps come back
        let t = Instant::now();
        assert!(h.next().is_none());
        assert!(t.elapsed() >= HOT_WAIT);
        assert!(h.offer(job()).is_some());
    }
}
