//! `odmoe chat`: a conversation in the terminal. Each line typed is a user message; the
//! whole conversation is rendered with the model's chat template, and only the tokens
//! after what the cache already holds are processed (the previous turns' keys and values
//! are kept), so a reply starts as fast as the new message allows.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use odmoe::generate::{generate_with, FinishReason, GenerateOptions};
use odmoe::model::{KvCache, Logits, Model};
use odmoe::sampling::SamplingParams;
use odmoe::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

use super::generate::{max_context, open_for_run, print_expert_stats, RunSettings};

/// What the conversation asks for.
pub struct Args {
    pub system: Option<String>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
}

const HELP: &str = "Type a message and press Enter; end a line with \\ to go on to the next.\n\
/reset  start a new conversation    /exit, /quit or Ctrl-D  leave    Ctrl-C  stop a reply";

/// Set by Ctrl-C while a reply streams.
static STOP: AtomicBool = AtomicBool::new(false);

/// A model and the cache of the conversation so far, on either backend.
trait Session {
    /// Processes `tokens` after the cached ones; the last position's logits.
    fn step(&mut self, tokens: &[u32]) -> odmoe::Result<Vec<f32>>;
    /// Forgets the cached positions from `len` on.
    fn truncate(&mut self, len: usize);
}

struct CpuSession<'a> {
    model: &'a Model,
    cache: KvCache,
}

impl Session for CpuSession<'_> {
    fn step(&mut self, tokens: &[u32]) -> odmoe::Result<Vec<f32>> {
        self.model.forward(tokens, &mut self.cache, Logits::Last)
    }
    fn truncate(&mut self, len: usize) {
        self.model.truncate_cache(&mut self.cache, len);
    }
}

#[cfg(feature = "gpu")]
struct GpuSession<'a> {
    model: odmoe::model::GpuModel<'a>,
    cache: odmoe::model::GpuKvCache,
}

#[cfg(feature = "gpu")]
impl Session for GpuSession<'_> {
    fn step(&mut self, tokens: &[u32]) -> odmoe::Result<Vec<f32>> {
        self.model.forward(tokens, &mut self.cache, Logits::Last)
    }
    fn truncate(&mut self, len: usize) {
        self.cache.truncate(len);
    }
}

pub fn run(model: &Path, a: Args, r: RunSettings) -> Result<(), Box<dyn std::error::Error>> {
    a.sampling.validate()?;
    let m = open_for_run(model, &r)?;
    let tok = Tokenizer::from_gguf(m.metadata())?;
    let template = ChatTemplate::from_gguf(m.metadata())?;
    let ctx = max_context(&m, &r);
    match super::resolve_backend(r.backend, &m) {
        #[cfg(feature = "gpu")]
        super::Backend::Gpu => {
            let gpu = super::logits::open_gpu()?;
            let g = odmoe::model::GpuModel::with_expert_budget(&m, &gpu, r.gpu_expert_budget)?;
            let cache = g.new_cache(ctx);
            converse(&mut GpuSession { model: g, cache }, &tok, &template, &a, ctx)?;
        }
        #[cfg(not(feature = "gpu"))]
        super::Backend::Gpu => return Err("this build has no GPU backend (built without the gpu feature); use --backend cpu".into()),
        _ => converse(&mut CpuSession { model: &m, cache: m.new_cache(ctx) }, &tok, &template, &a, ctx)?,
    }
    print_expert_stats(&m);
    Ok(())
}

/// The read-reply loop, until the input ends or the user leaves.
fn converse(session: &mut dyn Session, tok: &Tokenizer, template: &ChatTemplate, a: &Args, ctx: usize) -> Result<(), Box<dyn std::error::Error>> {
    let opening: Vec<ChatMessage> = a.system.iter().map(|s| ChatMessage::new("system", s)).collect();
    let mut messages = opening.clone();
    // the tokens whose keys and values the cache holds, in order
    let mut cached: Vec<u32> = Vec::new();
    let mut sampling = a.sampling.clone();
    eprintln!("{HELP}");
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    while let Some(line) = read_message(&mut input)? {
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" | "/bye" => break,
            "/help" | "/?" => {
                eprintln!("{HELP}");
                continue;
            }
            "/reset" | "/clear" => {
                messages = opening.clone();
                eprintln!("(a new conversation)");
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::new("user", &line));
        // (what was typed is tokenized as text, special-token spellings included)
        let (text, typed) = template.render_spans(&messages, true)?;
        let prompt = tok.encode_spans(&text, true, true, &typed)?;
        // keep what the new prompt shares with the cache (at least one token is run, for
        // the logits of the last)
        let keep = cached.iter().zip(&prompt).take_while(|(a, b)| a == b).count().min(prompt.len().saturating_sub(1));
        session.truncate(keep);
        cached.truncate(keep);
        let opts = GenerateOptions { max_tokens: a.max_tokens, stop: Vec::new(), sampling: sampling.clone(), max_context: ctx };
        let mut out = std::io::stdout().lock();
        let mut first = true;
        STOP.store(false, Ordering::SeqCst);
        let previous = catch_ctrl_c();
        let g = generate_with(
            |tokens| {
                // the first call brings the whole prompt: only its new part is run
                let new = if std::mem::take(&mut first) { &tokens[keep..] } else { tokens };
                let logits = session.step(new)?;
                cached.extend_from_slice(new);
                Ok(logits)
            },
            tok,
            &prompt,
            &opts,
            |s| out.write_all(s.as_bytes()).and_then(|_| out.flush()).is_ok() && !STOP.load(Ordering::SeqCst),
        );
        restore_ctrl_c(previous);
        writeln!(out).ok();
        let g = match g {
            Ok(g) => g,
            Err(e) => {
                // the message is dropped, so the conversation stays as it was
                messages.pop();
                eprintln!("error: {e}");
                if prompt.len() >= ctx {
                    eprintln!("(the conversation fills the context of {ctx} tokens: /reset starts a new one)");
                }
                continue;
            }
        };
        messages.push(ChatMessage::new("assistant", &g.text));
        let why = match g.finish {
            FinishReason::Cancelled => ", stopped",
            FinishReason::Length => ", cut at the token limit",
            FinishReason::Stop => "",
        };
        eprintln!(
            "[{} new prompt tokens ({keep} cached) in {:.2} s; {} tokens at {:.1} tokens/s{why}; {} of {ctx} context tokens used]",
            prompt.len() - keep,
            g.prompt_seconds,
            g.generated_tokens,
            g.generated_tokens as f64 / g.decode_seconds.max(1e-9),
            cached.len()
        );
        // a fresh seed each turn, so asking again gives another reply
        sampling.seed = sampling.seed.wrapping_add(1);
    }
    Ok(())
}

/// Reads one message from `input` (lines ending in `\` continue it), prompting on stderr
/// when the input is a terminal. `None` at the end of the input.
fn read_message(input: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut message = String::new();
    loop {
        eprint!("{}", if message.is_empty() { ">>> " } else { "... " });
        std::io::stderr().flush().ok();
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Ok((!message.is_empty()).then_some(message));
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.strip_suffix('\\') {
            Some(part) => {
                message.push_str(part);
                message.push('\n');
            }
            None => {
                message.push_str(line);
                return Ok(Some(message));
            }
        }
    }
}

/// While a reply streams, Ctrl-C sets [`STOP`] instead of ending the program; returns the
/// handler it replaced.
#[cfg(unix)]
fn catch_ctrl_c() -> libc::sighandler_t {
    extern "C" fn on_sigint(_: libc::c_int) {
        STOP.store(true, Ordering::SeqCst);
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) }
}

#[cfg(unix)]
fn restore_ctrl_c(previous: libc::sighandler_t) {
    // SAFETY: puts back the handler `catch_ctrl_c` replaced.
    unsafe {
        libc::signal(libc::SIGINT, previous);
    }
}

#[cfg(not(unix))]
fn catch_ctrl_c() {}

#[cfg(not(unix))]
fn restore_ctrl_c(_: ()) {}
