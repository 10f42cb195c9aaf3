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
struct StopFilter<'a> {
    stops: &'a [String],
    pending: String,
}

impl StopFilter<'_> {
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
        for t in self.stops {
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

/// Generates from `prompt` (token ids), calling `on_text` with each piece of text as soon
/// as it is complete; `on_text` returns `false` to cancel.
pub fn generate(
    model: &Model,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
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
    let mut sampler = Sampler::new(opts.sampling.clone())?;
    let mut cache = model.new_cache(opts.max_context);
    let budget = opts.max_tokens.min(opts.max_context - prompt.len());

    let t0 = Instant::now();
    let mut logits = model.forward(prompt, &mut cache, Logits::Last)?;
    let prompt_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut history: Vec<u32> = prompt.to_vec();
    let mut decoder = StreamDecoder::new();
    let mut filter = StopFilter { stops: &opts.stop, pending: String::new() };
    let mut text = String::new();
    let mut generated = 0;
    let mut finish = FinishReason::Length;
    let emit = |s: &str, text: &mut String, on_text: &mut dyn FnMut(&str) -> bool| -> bool {
        if s.is_empty() {
            return true;
        }
        text.push_str(s);
        on_text(s)
    };
    while generated < budget {
        let next = sampler.sample(&logits, &history);
        generated += 1;
        history.push(next);
        if tok.is_end_of_generation(next) {
            finish = FinishReason::Stop;
            break;
        }
        let piece = decoder.push(&tok.token_bytes(next, false));
        let (out, stopped) = filter.push(&piece);
        if !emit(&out, &mut text, &mut on_text) {
            finish = FinishReason::Cancelled;
            break;
        }
        if stopped {
            finish = FinishReason::Stop;
            break;
        }
        if generated < budget {
            logits = model.forward(&[next], &mut cache, Logits::Last)?;
        }
    }
    if finish != FinishReason::Stop && finish != FinishReason::Cancelled {
        let tail = decoder.finish();
        let (mut out, stopped) = filter.push(&tail);
        if stopped {
            finish = FinishReason::Stop;
        } else {
            out.push_str(&filter.finish());
        }
        emit(&out, &mut text, &mut on_text);
    }
    Ok(Generation {
        text,
        prompt_tokens: prompt.len(),
        generated_tokens: generated,
        finish,
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
        let mut f = StopFilter { stops: &stops, pending: String::new() };
        assert_eq!(f.push("Good morrow"), ("Good morrow".into(), false));
        assert_eq!(f.push(".\nUS"), (".".into(), false));
        assert_eq!(f.push("ER: hi"), ("".into(), true));
        let mut f = StopFilter { stops: &stops, pending: String::new() };
        assert_eq!(f.push("\nUSA"), ("\nUSA".into(), false));
    }
}
