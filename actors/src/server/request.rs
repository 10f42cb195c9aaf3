//! The body of an OpenAI completion request, parsed and checked: what to generate from,
//! the limits and the sampling. Depends on nothing of the server's but the engine's
//! types, so the fuzz target `fuzz/fuzz_targets/openai_request.rs` compiles it as it is.

use odmoe::generate::GenerateOptions;
use odmoe::sampling::SamplingParams;
use serde_json::Value;

/// What to tokenize.
#[derive(Debug)]
pub enum Input {
    /// A raw prompt (`/v1/completions`): BOS added as the model asks, special-token text
    /// kept as plain text.
    Prompt(String),
    /// Chat messages (`/v1/chat/completions`) rendered with the model's chat template,
    /// with the assistant turn opened; `tools` passed to the template when given.
    Chat { messages: Value, tools: Option<Value> },
}

/// A checked request, not yet tokenized.
pub struct Request {
    /// What to tokenize.
    pub input: Input,
    /// Limits and sampling.
    pub opts: GenerateOptions,
    /// Whether to stream the reply as Server-Sent Events.
    pub stream: bool,
    /// Whether a streamed reply ends with the token counts.
    pub include_usage: bool,
}

/// What a request may ask for.
pub struct Limits {
    /// Most completion tokens a request may ask for.
    pub max_tokens: usize,
    /// Completion tokens when a request does not say.
    pub default_max_tokens: usize,
}

fn field<'a>(v: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|n| v.get(*n)).filter(|x| !x.is_null())
}

/// Parses and checks the JSON body of `/v1/chat/completions` (`chat`) or
/// `/v1/completions`; the error is a message for the client.
pub fn parse(body: &[u8], max_context: usize, limits: &Limits, chat: bool) -> Result<Request, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("request body is not valid JSON: {e}"))?;
    if !v.is_object() {
        return Err("request body must be a JSON object".into());
    }
    let num = |names: &[&str]| -> Result<Option<f64>, String> {
        // the error names the field the client sent
        match names.iter().find_map(|n| v.get(*n).filter(|x| !x.is_null()).map(|x| (n, x))) {
            None => Ok(None),
            Some((n, x)) => x.as_f64().map(Some).ok_or_else(|| format!("'{n}' must be a number")),
        }
    };
    if let Some(n) = num(&["n"])? {
        if n != 1.0 {
            return Err("only n = 1 is supported".into());
        }
    }
    let max_tokens = num(&["max_completion_tokens", "max_tokens"])?.unwrap_or(limits.default_max_tokens as f64);
    if !(max_tokens >= 1.0 && max_tokens.fract() == 0.0) {
        return Err("'max_tokens' must be a positive integer".into());
    }
    if max_tokens > limits.max_tokens as f64 {
        return Err(format!("'max_tokens' is {max_tokens}; this server allows at most {}", limits.max_tokens));
    }
    let mut sampling = SamplingParams::default();
    if let Some(t) = num(&["temperature"])? {
        sampling.temperature = t as f32;
    }
    if let Some(p) = num(&["top_p"])? {
        sampling.top_p = p as f32;
    }
    if let Some(s) = num(&["seed"])? {
        sampling.seed = s as u64;
    }
    if let Some(p) = num(&["presence_penalty"])? {
        sampling.presence_penalty = p as f32;
    }
    if let Some(p) = num(&["frequency_penalty"])? {
        sampling.frequency_penalty = p as f32;
    }
    sampling.validate().map_err(|e| e.to_string())?;
    let stop = match field(&v, &["stop"]) {
        None => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().map(|x| x.as_str().map(str::to_string).ok_or("'stop' must be a string or a list of strings")).collect::<Result<_, _>>()?,
        Some(_) => return Err("'stop' must be a string or a list of strings".into()),
    };
    let stream = match field(&v, &["stream"]) {
        None => false,
        Some(x) => x.as_bool().ok_or("'stream' must be a boolean")?,
    };
    let include_usage = v.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    let input = if chat {
        let messages = field(&v, &["messages"]).filter(|m| m.as_array().is_some_and(|a| !a.is_empty())).ok_or("'messages' must be a non-empty list")?;
        for m in messages.as_array().unwrap() {
            if m.get("role").and_then(Value::as_str).is_none() {
                return Err("every message needs a 'role'".into());
            }
        }
        Input::Chat { messages: messages.clone(), tools: field(&v, &["tools"]).cloned() }
    } else {
        let text = match field(&v, &["prompt"]) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap().to_string(),
            _ => return Err("'prompt' must be a string".into()),
        };
        if text.is_empty() {
            return Err("'prompt' is empty".into());
        }
        Input::Prompt(text)
    };
    let opts = GenerateOptions { max_tokens: max_tokens as usize, stop, sampling, max_context };
    Ok(Request { input, opts, stream, include_usage })
}
