//! The text-generation loop: prompt in, streamed text out, with stop strings, end-of-
//! generation tokens, a token budget and timings.

use std::time::Instant;

use crate::model::{Logits, Model};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Error, Result};

/// What to generate and when to stop.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Generation stops before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    /// Token selection.
    pub sampling: SamplingParams,
    /// Context limit (prompt plus generated tokens).
    pub max_context: usize,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The token budget was used up.
    Length,
    /// A stop string or an end-of-generation token was produced.
    Stop,
    /// The consumer of the stream asked to stop (e.g. the client went away).
    Cancelled,
}

impl FinishReason {
    /// The reason as users read it (`length`, `stop`, `cancelled`).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of a generation, with timings.
#[derive(Clone, Debug)]
pub struct Generation {
    /// All generated text (without the stop string).
    pub text: String,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Why it ended.
    pub finish: FinishReason,
    /// Seconds spent on the prompt (prefill).
    pub prompt_seconds: f64,
    /// Seconds spent generating after the prompt.
    pub decode_seconds: f64,
}

/// Holds back text that could still turn into a stop string.
struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

impl StopFilter {
    /// Adds text; returns (text safe to emit, whether a stop string was hit).
    fn push(&mut self, s: &str) -> (String, bool) {
        self.pending.push_str(s);
        if let Some(at) = self.stops.iter().filter(|t| !t.is_empty()).filter_map(|t| self.pending.find(t.as_str())).min() {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // keep the longest tail that is a prefix of some stop string
        let mut keep = 0;
        for t in &self.stops {
            for (i, _) in self.pending.char_indices() {
                let tail = &self.pending[i..];
                if tail.len() > keep && t.starts_with(tail) {
                    keep = tail.len();
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// One generating sequence's side of decoding, driven a token at a time: picks the next
/// token from logits, turns tokens into text (characters completed across tokens, text
/// that could start a stop string held back, stop strings cut), and says when generation
/// ends. The forward pass stays with the caller, so a scheduler can run many of these in
/// one batched step.
pub struct Decoding {
    sampler: Sampler,
    history: Vec<u32>,
    decoder: StreamDecoder,
    filter: StopFilter,
    prompt_tokens: usize,
    generated: usize,
    budget: usize,
    finish: Option<FinishReason>,
}

/// What one token produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emitted {
    /// The token chosen.
    pub token: u32,
    /// Text now safe to show (possibly empty).
    pub text: String,
    /// Set when this token ended the generation; the token then needs no forward pass.
    pub finish: Option<FinishReason>,
}

impl Decoding {
    /// Starts decoding after `prompt`, checking that it fits the context.
    pub fn new(prompt: &[u32], opts: &GenerateOptions) -> Result<Decoding> {
        if prompt.is_empty() {
            return Err(Error::Invalid("the prompt is empty".into()));
        }
        if prompt.len() >= opts.max_context {
            return Err(Error::Invalid(format!(
                "the prompt has {} tokens but the context holds {}; shorten it",
                prompt.len(),
                opts.max_context
            )));
        }
        let budget = opts.max_tokens.min(opts.max_context - prompt.len());
        Ok(Decoding {
            sampler: Sampler::new(opts.sampling.clone())?,
            history: prompt.to_vec(),
            decoder: StreamDecoder::new(),
            filter: StopFilter { stops: opts.stop.clone(), pending: String::new() },
            prompt_tokens: prompt.len(),
            generated: 0,
            budget,
            finish: (budget == 0).then_some(FinishReason::Length),
        })
    }

    /// Chooses the next token from `logits` (the last position's) and returns its text.
    pub fn next(&mut self, tok: &Tokenizer, logits: &[f32]) -> Emitted {
        debug_assert!(self.finish.is_none(), "decoding already finished");
        let token = self.sampler.sample(logits, &self.history);
        self.generated += 1;
        self.history.push(token);
        let end_token = tok.is_end_of_generation(token);
        let (mut text, stop_string) = if end_token {
            (String::new(), false)
        } else {
            let piece = self.decoder.push(&tok.token_bytes(token, false));
            self.filter.push(&piece)
        };
        let mut finish = if end_token || stop_string {
            Some(FinishReason::Stop)
        } else if self.generated >= self.budget {
            Some(FinishReason::Length)
        } else {
            None
        };
        if finish.is_some() && !stop_string {
            // the end of the budget or an end-of-generation token: what was held back
            // (incomplete characters, a possible stop string's start) is text after all
            let tail = self.decoder.finish();
            let (out, stopped) = self.filter.push(&tail);
            text.push_str(&out);
            if stopped {
                finish = Some(FinishReason::Stop);
            } else {
                text.push_str(&self.filter.finish());
            }
        }
        self.finish = finish;
        Emitted { token, text, finish }
    }

    /// Why generation ended, once it has.
    pub fn finished(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Tokens in the prompt.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }
}

/// Generates from `prompt` (token ids), calling `on_text` with each piece of text as soon
/// as it is complete; `on_text` returns `false` to cancel.
pub fn generate(
    model: &Model,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
    let mut cache = model.new_cache(opts.max_context);
    generate_with(|tokens| model.forward(tokens, &mut cache, Logits::Last), tok, prompt, opts, on_text)
}

/// [`generate`] over any backend: `step(tokens)` runs the tokens after those it was given
/// before (its own cache) and returns the last position's logits.
pub fn generate_with(
    mut step: impl FnMut(&[u32]) -> Result<Vec<f32>>,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
    let mut decoding = Decoding::new(prompt, opts)?;
    let t0 = Instant::now();
    let mut logits = step(prompt)?;
    let prompt_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut text = String::new();
    let mut finish = decoding.finished();
    while finish.is_none() {
        let e = decoding.next(tok, &logits);
        if !e.text.is_empty() {
            text.push_str(&e.text);
            if !on_text(&e.text) {
                finish = Some(FinishReason::Cancelled);
                break;
            }
        }
        finish = e.finish;
        if finish.is_none() {
            logits = step(&[e.token])?;
        }
    }
    Ok(Generation {
        text,
        prompt_tokens: prompt.len(),
        generated_tokens: decoding.generated(),
        finish: finish.unwrap_or(FinishReason::Length),
        prompt_seconds,
        decode_seconds: t1.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_held_back_then_cut() {
        let stops = vec!["\nUSER:".to_string()];
        let mut f = StopFilter { stops: stops.clone(), pending: String::new() };
        assert_eq!(f.push("Good morrow"), ("Good morrow".into(), false));
        assert_eq!(f.push(".\nUS"), (".".into(), false));
        assert_eq!(f.push("ER: hi"), ("".into(), true));
        let mut f = StopFilter { stops: stops.clone(), pending: String::new() };
        assert_eq!(f.push("\nUSA"), ("\nUSA".into(), false));
    }
}
