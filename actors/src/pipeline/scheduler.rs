//! The scheduler actor: sessions, their KV caches, and continuous batching.
//!
//! Messages: [`SchedulerMsg::Submit`] (admit or refuse at once), [`SchedulerMsg::StepDone`]
//! (a step's results), [`SchedulerMsg::Wake`] (a paused client read some events).
//!
//! After every message the scheduler (1) drops sessions whose client has gone, (2) admits
//! queued requests while fewer than `max_sessions` run and their key/value reservations fit
//! `kv_budget` (one always runs), (3) when no step is in flight,
//! builds the next one, and (4) hands the sessions' new events to their channels while
//! that step computes. A step takes first every running session able to take its next
//! token (its event channel has room for its pending events and one more), starting at a
//! rotating offset so that, when they outnumber `batch_tokens`, each waits its turn; then
//! chunks of waiting prompts, at most `prefill_chunk` tokens each, in the budget left.
//! Between steps, the sessions' next tokens are sampled side by side on the compute pool.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use odmoe::generate::{Decoding, FinishReason};
use super::engine::{Engine, SessionCache};
use super::prefix::PrefixCache;
use odmoe::model::KvCache;
use odmoe::tokenizer::Tokenizer;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rayon::prelude::*;
use tokio::sync::mpsc::error::TrySendError;

use super::compute::{Compute, StepItem, StepOutput};
use super::{Event, Limits, Refused, Request};
use crate::server::metrics::Metrics;

/// The scheduler's messages.
pub enum SchedulerMsg {
    /// A new request: `Ok` once queued, `Err(QueueFull)` when `max_queued` already wait.
    Submit(Request, RpcReplyPort<Result<(), Refused>>),
    /// The step in flight finished (or the compute actor failed).
    StepDone(Result<StepOutput, String>),
    /// A paused session's client made room in its event channel (or went away).
    Wake(u64),
    /// The server is shutting down: end every session and queued request now (each gets
    /// [`Event::Stopped`]) and refuse new ones.
    ShutDown,
}

/// What the scheduler is started with.
pub struct SchedulerArgs {
    pub engine: Engine,
    pub tokenizer: Arc<Tokenizer>,
    pub compute: Compute,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
}

/// Batches the sessions' tokens into steps.
pub struct SchedulerActor;

struct Session {
    id: u64,
    decoding: Decoding,
    /// `None` while lent to the step in flight.
    cache: Option<SessionCache>,
    prompt: Vec<u32>,
    /// Prompt tokens already run.
    fed: usize,
    /// The sampled token still to run.
    next: Option<u32>,
    events: tokio::sync::mpsc::Sender<Event>,
    /// Events the channel had no room for yet, sent first.
    outbox: VecDeque<Event>,
    /// Finished: dropped once its outbox is delivered.
    done: bool,
    /// A task is waiting for the client to make room.
    paused: bool,
    accepted: Instant,
    last_token: Option<Instant>,
    /// Key/value cache bytes reserved against `Limits::kv_budget`.
    kv_reserved: u64,
    /// Prompt tokens whose keys and values came from the prefix cache.
    cached: usize,
    /// The tokens sampled and run after the prompt (what the cache holds past it).
    generated: Vec<u32>,
    /// A finished session's cache, for the prefix cache (CPU backend).
    keep: Option<KvCache>,
}

impl Session {
    fn prefilling(&self) -> bool {
        self.fed < self.prompt.len()
    }

    /// Sends what the outbox holds; false when the client has gone.
    fn flush(&mut self) -> bool {
        while let Some(ev) = self.outbox.pop_front() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(TrySendError::Full(ev)) => {
                    self.outbox.push_front(ev);
                    return true;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        !self.events.is_closed()
    }

    /// Whether the next step can include this session: it has tokens to run, and its
    /// channel has room for what waits in its outbox and the step's text.
    fn ready(&self) -> bool {
        self.cache.is_some() && !self.done && (self.prefilling() || self.next.is_some()) && self.events.capacity() > self.outbox.len()
    }
}

/// The scheduler's state.
pub struct SchedulerState {
    args: SchedulerArgs,
    queue: VecDeque<Request>,
    sessions: Vec<Session>,
    next_id: u64,
    in_flight: bool,
    rotate: usize,
    /// Key/value cache bytes the sessions have reserved.
    kv_reserved: u64,
    /// When the step in flight was sent (for the overhead figure).
    step_sent: Option<Instant>,
    /// When the last step's result arrived, until the next step is sent (for the
    /// overhead figure: sampling, events and building the batch happen in between).
    step_returned: Option<Instant>,
    /// Shutting down: no request is taken any more.
    stopping: bool,
    /// Finished sessions' caches for requests that begin as they did.
    prefix: PrefixCache,
}

impl Actor for SchedulerActor {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(&self, _: ActorRef<SchedulerMsg>, args: SchedulerArgs) -> Result<SchedulerState, ActorProcessingErr> {
        Ok(SchedulerState { queue: VecDeque::new(), sessions: Vec::new(), next_id: 0, in_flight: false, rotate: 0, kv_reserved: 0, step_sent: None, step_returned: None, stopping: false, prefix: PrefixCache::new(args.limits.prefix_budget), args })
    }

    async fn handle(&self, myself: ActorRef<SchedulerMsg>, msg: SchedulerMsg, st: &mut SchedulerState) -> Result<(), ActorProcessingErr> {
        match msg {
            SchedulerMsg::Submit(req, reply) => {
                // requests whose clients left while they waited give up their places
                st.drop_abandoned();
                let answer = if st.stopping {
                    Err(Refused::Stopped)
                } else if st.queue.len() >= st.args.limits.max_queued {
                    Err(Refused::QueueFull)
                } else {
                    st.queue.push_back(req);
                    Ok(())
                };
                let _ = reply.send(answer);
            }
            SchedulerMsg::ShutDown => st.shut_down(),
            SchedulerMsg::StepDone(out) => {
                st.step_returned = Some(Instant::now());
                st.finish_step(out);
            }
            SchedulerMsg::Wake(id) => {
                if let Some(s) = st.sessions.iter_mut().find(|s| s.id == id) {
                    s.paused = false;
                }
            }
        }
        st.tick(&myself);
        Ok(())
    }
}

impl SchedulerState {
    /// Delivers events, drops finished and abandoned sessions, admits queued requests, and
    /// starts a step when none is in flight.
    fn tick(&mut self, myself: &ActorRef<SchedulerMsg>) {
        self.keep_finished();
        loop {
            self.drop_ended();
            self.drop_abandoned();
            while self.sessions.len() < self.args.limits.max_sessions {
                let Some(req) = self.queue.front() else { break };
                // positions the session may fill, in the model's bytes
                let need = (req.prompt.len() + req.opts.max_tokens).min(req.opts.max_context) as u64 * self.args.engine.kv_bytes_per_position();
                if self.args.limits.kv_budget.is_some_and(|b| !self.sessions.is_empty() && self.kv_reserved + need > b) {
                    break;
                }
                let req = self.queue.pop_front().expect("looked at above");
                self.admit(req, need);
            }
            if !self.in_flight {
                self.start_step(myself);
            }
            // events go out while the step computes
            for s in self.sessions.iter_mut() {
                let connected = s.flush();
                // a client that has not read what it was sent holds up only its own session
                let blocked = !s.outbox.is_empty() || (!s.done && s.events.capacity() == 0);
                if blocked && connected && !s.paused {
                    s.paused = true;
                    wake_when_read(myself, s);
                }
            }
            // a session left out of the step above for want of room in its channel may have
            // had its events taken by its client at once (between the send and the look at
            // the channel): it is ready, and no wake is coming for it, so with no step in
            // flight the step starts now rather than never
            if !self.in_flight {
                self.start_step(myself);
            }
            // only the gap between a step's result and the next step counts as overhead
            self.step_returned = None;
            let running = self.sessions.len();
            self.drop_ended();
            // sessions whose last events just went out free their places (and memory) for
            // queued requests: admit them now if no step is running, as no message may come
            if self.in_flight || self.queue.is_empty() || self.sessions.len() == running {
                break;
            }
        }
        self.args.metrics.active.store(self.sessions.len() as i64, Ordering::Relaxed);
        self.args.metrics.queued.store(self.queue.len() as i64, Ordering::Relaxed);
    }

    /// Hands finished sessions' caches, with the tokens they hold, to the prefix cache.
    fn keep_finished(&mut self) {
        for s in self.sessions.iter_mut() {
            if let Some(c) = s.keep.take() {
                let tokens: Vec<u32> = s.prompt.iter().chain(&s.generated).copied().collect();
                self.prefix.insert(tokens, c);
            }
        }
        self.args.metrics.prefix_bytes.store(self.prefix.bytes() as i64, Ordering::Relaxed);
    }

    /// Drops queued requests whose client has gone while they waited.
    fn drop_abandoned(&mut self) {
        let before = self.queue.len();
        self.queue.retain(|r| !r.events.is_closed());
        self.args.metrics.cancelled.fetch_add((before - self.queue.len()) as u64, Ordering::Relaxed);
    }

    /// Ends every session and queued request with [`Event::Stopped`] and takes no more.
    fn shut_down(&mut self) {
        self.stopping = true;
        for r in self.queue.drain(..) {
            // a queued request's channel is empty: the event fits
            let _ = r.events.try_send(Event::Stopped { prompt_tokens: r.prompt.len(), completion_tokens: 0 });
        }
        let m = &self.args.metrics;
        for s in self.sessions.iter_mut().filter(|s| !s.done) {
            let (prompt_tokens, completion_tokens) = (s.decoding.prompt_tokens(), s.decoding.generated());
            m.generated_tokens.fetch_add(completion_tokens as u64, Ordering::Relaxed);
            s.outbox.push_back(Event::Stopped { prompt_tokens, completion_tokens });
            s.done = true;
            s.next = None;
            if s.cache.is_some() {
                s.cache = Some(SessionCache::empty());
            }
        }
    }

    /// Drops sessions whose client has gone (once they are not in the step in flight) and
    /// finished ones whose events are all delivered.
    fn drop_ended(&mut self) {
        let metrics = &self.args.metrics;
        let mut released = 0;
        self.sessions.retain(|s| {
            let (gone, delivered) = (s.events.is_closed(), s.done && s.outbox.is_empty());
            let keep = s.cache.is_none() || !(gone || delivered);
            if !keep {
                released += s.kv_reserved;
                if !s.done {
                    metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                    metrics.generated_tokens.fetch_add(s.decoding.generated() as u64, Ordering::Relaxed);
                }
            }
            keep
        });
        self.kv_reserved -= released;
    }

    /// Starts a session for `req`, reserving `kv` bytes of key/value cache for it.
    fn admit(&mut self, req: Request, kv: u64) {
        match Decoding::new(&req.prompt, &req.opts) {
            Ok(decoding) => {
                self.next_id += 1;
                self.kv_reserved += kv;
                let m = &self.args.metrics;
                m.prompt_tokens.fetch_add(req.prompt.len() as u64, Ordering::Relaxed);
                // the longest beginning of the prompt already computed (CPU backend)
                let reused = match &self.args.engine {
                    Engine::Cpu(model) => self.prefix.lookup(model, &req.prompt, req.opts.max_context),
                    #[allow(unreachable_patterns)]
                    _ => None,
                };
                let (cache, cached) = match reused {
                    Some((c, n)) => (SessionCache::Cpu(c), n),
                    None => (self.args.engine.new_cache(req.opts.max_context), 0),
                };
                m.prefix_lookup_tokens.fetch_add(req.prompt.len() as u64, Ordering::Relaxed);
                m.prefix_hit_tokens.fetch_add(cached as u64, Ordering::Relaxed);
                self.sessions.push(Session {
                    id: self.next_id,
                    decoding,
                    cache: Some(cache),
                    prompt: req.prompt,
                    fed: cached,
                    cached,
                    generated: Vec::new(),
                    keep: None,
                    next: None,
                    events: req.events,
                    outbox: VecDeque::new(),
                    done: false,
                    paused: false,
                    accepted: req.accepted,
                    last_token: None,
                    kv_reserved: kv,
                });
            }
            // a fresh channel has room for one event
            Err(e) => drop(req.events.try_send(Event::Error(e.to_string()))),
        }
    }

    fn start_step(&mut self, myself: &ActorRef<SchedulerMsg>) {
        let limits = &self.args.limits;
        let mut budget = limits.batch_tokens.max(1);
        let mut items = Vec::new();
        let n = self.sessions.len();
        // running sessions first, one token each, from a rotating start
        for k in 0..n {
            let s = &mut self.sessions[(self.rotate + k) % n];
            if budget == 0 {
                break;
            }
            if s.ready() && !s.prefilling() {
                let token = s.next.take().expect("ready and not prefilling");
                s.generated.push(token);
                items.push(StepItem { session: s.id, tokens: vec![token], cache: s.cache.take().expect("ready"), logits: true });
                budget -= 1;
            }
        }
        // then prompt chunks, oldest session first
        for s in self.sessions.iter_mut() {
            if budget == 0 {
                break;
            }
            if s.ready() && s.prefilling() {
                let len = (s.prompt.len() - s.fed).min(limits.prefill_chunk.max(1)).min(budget);
                let tokens = s.prompt[s.fed..s.fed + len].to_vec();
                let last = s.fed + len == s.prompt.len();
                items.push(StepItem { session: s.id, tokens, cache: s.cache.take().expect("ready"), logits: last });
                budget -= len;
            }
        }
        if items.is_empty() {
            return;
        }
        self.rotate = self.rotate.wrapping_add(1);
        self.in_flight = true;
        let now = Instant::now();
        if let Some(t) = self.step_returned.take() {
            self.args.metrics.step_overhead_micros.fetch_add((now - t).as_micros() as u64, Ordering::Relaxed);
        }
        self.step_sent = Some(now);
        let me = myself.clone();
        let done = Box::new(move |out| drop(me.cast(SchedulerMsg::StepDone(out))));
        if let Err(e) = self.args.compute.step(items, done) {
            // the step (and with it the items' caches) is lost with the actor
            let _ = myself.cast(SchedulerMsg::StepDone(Err(format!("the compute actor stopped: {e}"))));
        }
    }

    fn finish_step(&mut self, out: Result<StepOutput, String>) {
        self.in_flight = false;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                // the items (and their caches) are lost with the compute actor
                for s in self.sessions.iter_mut().filter(|s| s.cache.is_none()) {
                    if !s.done {
                        s.outbox.push_back(Event::Error(e.clone()));
                        s.done = true;
                    }
                    s.cache = Some(SessionCache::empty());
                }
                return;
            }
        };
        let m = &self.args.metrics;
        let tokens: usize = out.items.iter().map(|i| i.tokens.len()).sum();
        m.steps.fetch_add(1, Ordering::Relaxed);
        m.step_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        m.step_seconds.observe(out.seconds);
        if let Some(sent) = self.step_sent.take() {
            let round_trip = sent.elapsed().as_secs_f64();
            m.step_overhead_micros.fetch_add(((round_trip - out.seconds).max(0.0) * 1e6) as u64, Ordering::Relaxed);
        }
        // caches back, prompt progress (or the step's error); then the next token of every
        // session that asked for logits, sampled side by side on the compute pool (idle
        // between steps)
        let failed = out.logits.as_ref().err().map(|e| format!("generation failed: {e}"));
        let mut sample: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
        for (i, item) in out.items.into_iter().enumerate() {
            let Some(s) = self.sessions.iter_mut().find(|s| s.id == item.session) else { continue };
            if s.done {
                // ended while the step ran (the server is shutting down): the cache is let go
                s.cache = Some(SessionCache::empty());
                continue;
            }
            s.cache = Some(item.cache);
            if let Some(e) = &failed {
                s.outbox.push_back(Event::Error(e.clone()));
                s.done = true;
                continue;
            }
            if s.prefilling() {
                s.fed += item.tokens.len();
            }
            if item.logits {
                sample.insert(s.id, i);
            }
        }
        let Ok(logits) = out.logits else { return };
        let tok = &self.args.tokenizer;
        let t = Instant::now();
        self.sessions.par_iter_mut().for_each(|s| {
            let Some(&i) = sample.get(&s.id) else { return };
            let now = Instant::now();
            match s.last_token {
                None => m.time_to_first_token.observe((now - s.accepted).as_secs_f64()),
                Some(t) => m.inter_token_latency.observe((now - t).as_secs_f64()),
            }
            s.last_token = Some(now);
            let e = s.decoding.next(tok, &logits[i]);
            if !e.text.is_empty() {
                s.outbox.push_back(Event::Text(e.text));
            }
            match e.finish {
                None => s.next = Some(e.token),
                Some(finish) => finish_session(s, finish, m),
            }
        });
        m.sample_micros.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

fn finish_session(s: &mut Session, finish: FinishReason, m: &Metrics) {
    let (prompt_tokens, completion_tokens) = (s.decoding.prompt_tokens(), s.decoding.generated());
    m.generated_tokens.fetch_add(completion_tokens as u64, Ordering::Relaxed);
    s.outbox.push_back(Event::Done { finish, prompt_tokens, completion_tokens, cached_tokens: s.cached });
    s.done = true;
    // the cache leaves the session now rather than when the client has read: to the
    // prefix cache (host memory), or freed
    if let Some(SessionCache::Cpu(c)) = s.cache.replace(SessionCache::empty()) {
        s.keep = Some(c);
    }
}

/// Wakes the scheduler once `s`'s client has made room in its channel (or gone away).
fn wake_when_read(myself: &ActorRef<SchedulerMsg>, s: &Session) {
    let (events, me, id) = (s.events.clone(), myself.clone(), s.id);
    tokio::spawn(async move {
        // the permit is dropped at once: the room stays for the scheduler's send
        drop(events.reserve().await);
        let _ = me.cast(SchedulerMsg::Wake(id));
    });
}

#[cfg(test)]
mod tests {
    use super::super::{Event, Limits, Pipeline, Request};
    use crate::server::metrics::Metrics;
    use odmoe::generate::{generate, GenerateOptions};
    use odmoe::model::Model;
    use super::super::engine::Engine;
    use odmoe::sampling::SamplingParams;
    use odmoe::tokenizer::Tokenizer;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::sync::mpsc;

    fn opts(max_tokens: usize) -> GenerateOptions {
        GenerateOptions { max_tokens, stop: vec![], sampling: SamplingParams { temperature: 0.0, ..Default::default() }, max_context: 1024 }
    }

    async fn drain(rx: &mut mpsc::Receiver<Event>) -> (String, usize) {
        let mut text = String::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Done { completion_tokens, .. } => return (text, completion_tokens),
                Event::Error(e) => panic!("{e}"),
                Event::Stopped { .. } => panic!("stopped"),
            }
        }
        panic!("the stream closed without Done");
    }

    /// A session whose client does not read is left out of the steps (paused, not
    /// finished, not spinning) while others run to completion; once read, its text is
    /// whole and equals the plain generation loop's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_that_is_not_read_pauses_alone_and_loses_nothing() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/odmoe-demo-shakespeare-Q8_0.gguf");
        let model = Arc::new(Model::open(&path).unwrap());
        let tok = Arc::new(Tokenizer::from_gguf(model.metadata()).unwrap());
        let limits = Limits { max_queued: 4, max_sessions: 4, batch_tokens: 64, prefill_chunk: 16, tokenizer_mailbox: 4, scheduler_mailbox: 4, kv_budget: None, prefix_budget: 0 };
        let metrics = Arc::new(Metrics::default());
        let p = Pipeline::start(Engine::Cpu(model.clone()), tok.clone(), None, limits, metrics.clone()).await.unwrap();
        let prompt = |s: &str| tok.encode(s, true, false).unwrap();
        let submit = |text: &str, n: usize, buffer: usize| {
            let (tx, rx) = mpsc::channel(buffer);
            (Request { prompt: prompt(text), opts: opts(n), events: tx, accepted: Instant::now() }, rx)
        };

        let (slow, mut slow_rx) = submit("ROMEO:\nWhat light", 300, 2);
        p.submit(slow).await.unwrap();
        for i in 0..3 {
            let (req, mut rx) = submit(&format!("JULIET {i}:"), 40, 64);
            p.submit(req).await.unwrap();
            assert_eq!(drain(&mut rx).await.1, 40);
        }
        // the slow session is still open and no step runs while its client does not read
        let steps = metrics.steps.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(metrics.steps.load(Ordering::Relaxed), steps, "steps ran for a session that cannot take its tokens");
        assert_eq!(metrics.active.load(Ordering::Relaxed), 1);

        let (text, n) = drain(&mut slow_rx).await;
        assert_eq!(n, 300);
        let alone = generate(&model, &tok, &prompt("ROMEO:\nWhat light"), &opts(300), |_| true).unwrap();
        assert_eq!(text, alone.text);
    }

    /// A long prompt is fed in chunks beside running sessions, and each session's text
    /// equals the plain generation loop's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunked_prompts_beside_running_sessions_give_the_same_text() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/odmoe-demo-shakespeare-Q8_0.gguf");
        let model = Arc::new(Model::open(&path).unwrap());
        let tok = Arc::new(Tokenizer::from_gguf(model.metadata()).unwrap());
        let limits = Limits { max_queued: 8, max_sessions: 8, batch_tokens: 12, prefill_chunk: 5, tokenizer_mailbox: 4, scheduler_mailbox: 8, kv_budget: None, prefix_budget: 0 };
        let metrics = Arc::new(Metrics::default());
        let p = Pipeline::start(Engine::Cpu(model.clone()), tok.clone(), None, limits, metrics.clone()).await.unwrap();
        let texts = ["ROMEO:", "JULIET:\nO Romeo, Romeo, wherefore art thou Romeo? Deny thy father and refuse thy name.", "NURSE:\nGood", "MERCUTIO:\nNay, gentle Romeo, we must have you dance."];
        let mut rxs = Vec::new();
        for t in texts {
            let (tx, rx) = mpsc::channel(64);
            p.submit(Request { prompt: tok.encode(t, true, false).unwrap(), opts: opts(30), events: tx, accepted: Instant::now() }).await.unwrap();
            rxs.push(rx);
        }
        for (t, rx) in texts.iter().zip(&mut rxs) {
            let alone = generate(&model, &tok, &tok.encode(t, true, false).unwrap(), &opts(30), |_| true).unwrap();
            assert_eq!(drain(rx).await.0, alone.text, "{t}");
        }
        // no step exceeded the batch budget, and steps did carry several sessions
        let (steps, tokens) = (metrics.steps.load(Ordering::Relaxed), metrics.step_tokens.load(Ordering::Relaxed));
        assert!(tokens <= steps * 12 && tokens > steps, "{tokens} tokens in {steps} steps");
    }

    /// With a key/value budget that holds one session's reservation (or room for one
    /// session), sessions run one at a time (every step carries one session: as many steps
    /// as tokens generated) and each still gets the text it gets alone; the place frees as
    /// a session's last event goes out, with no other message to wake the scheduler.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kv_budget_holds_sessions_back_until_memory_frees() {
        for one_at_a_time in [true, false] {
            one_session_at_a_time(one_at_a_time).await;
        }
    }

    async fn one_session_at_a_time(by_budget: bool) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/odmoe-demo-shakespeare-Q8_0.gguf");
        let model = Arc::new(Model::open(&path).unwrap());
        let tok = Arc::new(Tokenizer::from_gguf(model.metadata()).unwrap());
        let texts = ["ROMEO:", "JULIET:", "NURSE:"];
        let prompts: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t, true, false).unwrap()).collect();
        let n = 12;
        // room for the longest prompt's reservation, not for two
        let one = (prompts.iter().map(Vec::len).max().unwrap() + n) as u64 * model.kv_bytes_per_position();
        let (max_sessions, kv_budget) = if by_budget { (8, Some(one + one / 2)) } else { (1, None) };
        let limits = Limits { max_queued: 8, max_sessions, batch_tokens: 64, prefill_chunk: 16, tokenizer_mailbox: 4, scheduler_mailbox: 8, kv_budget, prefix_budget: 0 };
        let metrics = Arc::new(Metrics::default());
        let p = Pipeline::start(Engine::Cpu(model.clone()), tok.clone(), None, limits, metrics.clone()).await.unwrap();
        let mut rxs = Vec::new();
        for prompt in &prompts {
            let (tx, rx) = mpsc::channel(64);
            p.submit(Request { prompt: prompt.clone(), opts: opts(n), events: tx, accepted: Instant::now() }).await.unwrap();
            rxs.push(rx);
        }
        let mut generated = 0;
        for (prompt, rx) in prompts.iter().zip(&mut rxs) {
            let (text, tokens) = drain(rx).await;
            assert_eq!(text, generate(&model, &tok, prompt, &opts(n), |_| true).unwrap().text);
            generated += tokens as u64;
        }
        // one session per step: its prompt in one step, then a step per token but the last
        assert_eq!(metrics.steps.load(Ordering::Relaxed), generated, "steps carried more than one session (by budget: {by_budget})");
    }
}
