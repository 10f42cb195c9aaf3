//! OpenAI-compatible request handling: `/v1/chat/completions`, `/v1/completions` (streamed
//! as SSE ending in `data: [DONE]`, or whole), `/v1/models`, `/health`, and errors in
//! OpenAI's shape (`{"error": {"message", "type", "code"}}`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::stream;
use odmoe::generate::FinishReason;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::AppState;
use crate::pipeline::tokenizer::EncodeError;
use crate::pipeline::{Event, Refused, Request as Job};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What a request still running when the shutdown grace ends is told.
const SHUTDOWN_MESSAGE: &str = "the server is shutting down: this generation was cut short";

/// The log line of one completion request, written to stderr when the response is
/// complete, has failed, or was abandoned by its client (the line says which).
struct RequestLog {
    path: &'static str,
    status: u16,
    started: std::time::Instant,
    tokens: Option<(usize, usize)>,
    outcome: &'static str,
}

impl RequestLog {
    fn new(chat: bool) -> RequestLog {
        let path = if chat { "/v1/chat/completions" } else { "/v1/completions" };
        RequestLog { path, status: 200, started: std::time::Instant::now(), tokens: None, outcome: "client gone" }
    }

    /// Notes the response `r` (its status, and its outcome unless one was set) and
    /// returns it.
    fn answered(mut self, r: Response) -> Response {
        self.status = r.status().as_u16();
        if self.outcome == "client gone" {
            self.outcome = if r.status().is_success() { "done" } else { "error" };
        }
        r
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let (p, c) = self.tokens.unwrap_or((0, 0));
        eprintln!("POST {} {} prompt_tokens={p} completion_tokens={c} {:.3}s {}", self.path, self.status, self.started.elapsed().as_secs_f64(), self.outcome);
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A response's `usage`, with the prompt tokens the prefix cache supplied.
fn usage(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": { "cached_tokens": cached_tokens },
    })
}

/// An OpenAI-shaped error response.
pub fn error(status: StatusCode, message: impl Into<String>, kind: &str, code: &str) -> Response {
    let body = json!({ "error": { "message": message.into(), "type": kind, "code": code } });
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, message, "invalid_request_error", "invalid_request")
}

fn loading() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "the model is still loading", "server_error", "loading")
}

pub fn health(st: Arc<AppState>) -> Response {
    // degraded: serving, but something the operator must see has gone wrong
    let mut problems = Vec::new();
    if odmoe::gguf::file_changed() {
        problems.push("a model file was truncated or replaced on disk while in use: restart the server".to_string());
    }
    if let Some(n) = st.loaded.get().and_then(|l| l.model.pager()).map(|p| p.stats().read_errors).filter(|&n| n > 0) {
        problems.push(format!("{n} expert reads failed (I/O errors or damaged records)"));
    }
    let status = match (st.loaded.get(), problems.is_empty()) {
        (None, _) => "loading",
        (Some(_), true) => "ok",
        (Some(_), false) => "degraded",
    };
    let mut v = json!({ "status": status, "model": st.model_name, "uptime_seconds": st.started.elapsed().as_secs() });
    if !problems.is_empty() {
        v["problems"] = json!(problems);
    }
    if let Some(l) = st.loaded.get() {
        v["backend"] = json!(l.backend);
        v["sessions"] = json!({ "active": st.metrics.active.load(Ordering::Relaxed), "queued": st.metrics.queued.load(Ordering::Relaxed) });
        if let Some(p) = l.model.pager() {
            let s = p.stats();
            v["expert_cache"] = json!({
                "budget_bytes": p.budget(),
                "cached_bytes": p.cached_bytes(),
                "hits": s.hits,
                "misses": s.misses,
                "hit_rate": s.hit_rate(),
                "bytes_read": s.bytes_read,
                "evictions": s.evictions,
                "read_errors": s.read_errors,
                "prefetch_hits": s.prefetch_hits,
                "prefetch_wasted_bytes": s.prefetch_wasted_bytes,
                "read_p50_ms": s.read_p50_micros as f64 / 1e3,
                "read_p99_ms": s.read_p99_micros as f64 / 1e3,
            });
        }
    }
    let body = warp::reply::json(&v);
    // (a degraded server still answers: load balancers keep it, its status says why)
    let code = if status == "loading" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    warp::reply::with_status(body, code).into_response()
}

pub fn metrics(st: Arc<AppState>) -> Response {
    let experts = st.loaded.get().and_then(|l| l.model.pager().map(|p| p.stats()));
    let body = st.metrics.render(experts);
    warp::reply::with_header(body, "content-type", "text/plain; version=0.0.4").into_response()
}

pub fn models(st: Arc<AppState>) -> Response {
    warp::reply::json(&json!({ "object": "list", "data": [{ "id": st.model_name, "object": "model", "created": 0, "owned_by": "odmoe" }] })).into_response()
}

/// Turns warp's rejections (unknown path, wrong method, oversized body) into OpenAI errors.
pub async fn rejection(r: warp::Rejection) -> Result<Response, Infallible> {
    Ok(if r.is_not_found() {
        error(StatusCode::NOT_FOUND, "not found", "invalid_request_error", "not_found")
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large", "invalid_request_error", "payload_too_large")
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", "invalid_request_error", "method_not_allowed")
    } else {
        error(StatusCode::BAD_REQUEST, format!("bad request: {r:?}"), "invalid_request_error", "invalid_request")
    })
}

/// Checks a tokenized prompt against the context and the server's limit.
fn check_prompt(prompt: &[u32], max_context: usize, max_prompt_tokens: usize) -> Result<(), Box<Response>> {
    let too_long = |m: String| Box::new(error(StatusCode::BAD_REQUEST, m, "invalid_request_error", "context_length_exceeded"));
    if prompt.is_empty() {
        return Err(Box::new(bad_request("the prompt is empty")));
    }
    if prompt.len() >= max_context {
        return Err(too_long(format!("the prompt has {} tokens; the context holds {}", prompt.len(), max_context)));
    }
    if prompt.len() > max_prompt_tokens {
        return Err(too_long(format!("the prompt has {} tokens; this server accepts at most {max_prompt_tokens}", prompt.len())));
    }
    Ok(())
}

fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

/// `/v1/chat/completions` (`chat`) and `/v1/completions`.
/// A streamed chunk as text with a hole for the token's text: serializing the whole
/// chunk for every token of every session was a good part of the server's own work.
struct ChunkTemplate {
    /// `" {...\"text\":"` — the leading space is what OpenAI sends after `data:`.
    before: String,
    /// What follows the text.
    after: String,
}

impl ChunkTemplate {
    /// From the function that builds the chunk around a text.
    fn new(chunk: impl Fn(&str) -> Value) -> ChunkTemplate {
        // a text no other field can hold; the last occurrence is the text (it comes last
        // but for the finish reason)
        const MARK: &str = "\u{1}odmoe-text\u{1}";
        let full = format!(" {}", chunk(MARK));
        let quoted = serde_json::to_string(MARK).expect("strings serialize");
        let (before, after) = full.rsplit_once(&quoted).expect("the chunk holds its text");
        ChunkTemplate { before: before.to_string(), after: after.to_string() }
    }

    /// The chunk for `text`.
    fn render(&self, text: &str) -> String {
        let quoted = serde_json::to_string(text).expect("strings serialize");
        let mut out = String::with_capacity(self.before.len() + quoted.len() + self.after.len());
        out.push_str(&self.before);
        out.push_str(&quoted);
        out.push_str(&self.after);
        out
    }
}

pub async fn completion(body: super::body::Body, app: Arc<AppState>, chat: bool) -> Result<Response, Infallible> {
    let mut log = RequestLog::new(chat);
    let Some(st) = app.loaded.get() else { return Ok(log.answered(loading())) };
    let accepted = std::time::Instant::now();
    macro_rules! rejected {
        ($r:expr) => {{
            app.metrics.requests_rejected.fetch_add(1, Ordering::Relaxed);
            return Ok(log.answered($r));
        }};
    }
    let body = match body {
        super::body::Body::Whole(b) => b,
        super::body::Body::TooLarge => {
            let m = format!("request body too large (the limit is {} bytes)", app.config.max_body_bytes);
            rejected!(error(StatusCode::PAYLOAD_TOO_LARGE, m, "invalid_request_error", "payload_too_large"))
        }
        super::body::Body::TimedOut => {
            let m = format!("the request body did not arrive within {} s", app.config.read_timeout.as_secs());
            rejected!(error(StatusCode::REQUEST_TIMEOUT, m, "invalid_request_error", "request_timeout"))
        }
        super::body::Body::Broken => rejected!(bad_request("the request body could not be read")),
    };
    let limits = super::request::Limits { max_tokens: app.config.max_tokens, default_max_tokens: app.config.default_max_tokens };
    let req = match super::request::parse(&body, st.max_context, &limits, chat) {
        Ok(r) => r,
        Err(m) => rejected!(bad_request(m)),
    };
    let limit = st.max_prompt_tokens.min(st.max_context);
    let prompt = match st.pipeline.encode(req.input, limit).await {
        Ok(p) => p,
        Err(EncodeError::TooLong(m)) => rejected!(error(StatusCode::BAD_REQUEST, m, "invalid_request_error", "context_length_exceeded")),
        Err(EncodeError::Invalid(m)) => rejected!(bad_request(m)),
    };
    log.tokens = Some((prompt.len(), 0));
    if let Err(r) = check_prompt(&prompt, st.max_context, st.max_prompt_tokens) {
        rejected!(*r);
    }
    let (tx, mut rx) = mpsc::channel(app.config.stream_buffer.max(1));
    match st.pipeline.submit(Job { prompt, opts: req.opts, events: tx, accepted }).await {
        Ok(()) => {}
        Err(Refused::QueueFull) => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "the server is busy: too many requests are waiting; retry shortly", "server_error", "queue_full");
            r.headers_mut().insert("retry-after", warp::http::HeaderValue::from_static("1"));
            rejected!(r);
        }
        Err(Refused::Stopped) => rejected!(error(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down", "server_error", "stopped")),
    }
    if chat {
        app.metrics.requests_chat.fetch_add(1, Ordering::Relaxed);
    } else {
        app.metrics.requests_text.fetch_add(1, Ordering::Relaxed);
    }
    let id = format!("{}-{}", if chat { "chatcmpl" } else { "cmpl" }, NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let created = now();
    let model = app.model_name.clone();
    let object = if chat { "chat.completion" } else { "text_completion" };

    if !req.stream {
        let mut text = String::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Error(e) => return Ok(log.answered(error(StatusCode::INTERNAL_SERVER_ERROR, e, "server_error", "generation_failed"))),
                Event::Stopped { prompt_tokens, completion_tokens } => {
                    (log.tokens, log.outcome) = (Some((prompt_tokens, completion_tokens)), "cut at shutdown");
                    return Ok(log.answered(error(StatusCode::SERVICE_UNAVAILABLE, SHUTDOWN_MESSAGE, "server_error", "server_shutdown")));
                }
                Event::Done { finish, prompt_tokens, completion_tokens, cached_tokens } => {
                    log.tokens = Some((prompt_tokens, completion_tokens));
                    let choice = if chat {
                        json!({ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": finish_reason(finish) })
                    } else {
                        json!({ "index": 0, "text": text, "finish_reason": finish_reason(finish) })
                    };
                    let usage = usage(prompt_tokens, completion_tokens, cached_tokens);
                    return Ok(log.answered(warp::reply::json(&json!({ "id": id, "object": object, "created": created, "model": model, "choices": [choice], "usage": usage })).into_response()));
                }
            }
        }
        return Ok(log.answered(error(StatusCode::INTERNAL_SERVER_ERROR, "the engine stopped", "server_error", "engine_stopped")));
    }

    let chunk_object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk = Arc::new(move |delta: Value, finish: Option<&str>| -> Value {
        let choice = if chat {
            json!({ "index": 0, "delta": delta, "finish_reason": finish })
        } else {
            json!({ "index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "finish_reason": finish })
        };
        json!({ "id": id, "object": chunk_object, "created": created, "model": model, "choices": [choice] })
    });
    // the chunk of every token, made once: only its text changes
    let text_chunk = Arc::new(ChunkTemplate::new(|t| chunk(json!({ "content": t }), None)));
    let include_usage = req.include_usage;
    // state: 0 = send the role, 1 = streaming, 2 = send [DONE], 3 = finished
    // the log line travels with the stream: written when it ends or the client drops it
    let events = stream::unfold((rx, 0u8, Vec::<Value>::new(), log), move |(mut rx, phase, mut tail, mut log)| {
        let (chunk, text_chunk) = (chunk.clone(), text_chunk.clone());
        async move {
            // "data: {...}": the space after the colon is what OpenAI sends (SSE parsers drop it)
            let data = |v: &Value| warp::sse::Event::default().data(format!(" {v}"));
            if let Some(v) = tail.pop() {
                return Some((Ok::<_, Infallible>(data(&v)), (rx, phase, tail, log)));
            }
            match phase {
                0 => {
                    let first = if chat { chunk(json!({ "role": "assistant", "content": "" }), None) } else { chunk(json!({ "content": "" }), None) };
                    Some((Ok(data(&first)), (rx, 1, tail, log)))
                }
                1 => match rx.recv().await {
                    Some(Event::Text(t)) => Some((Ok(warp::sse::Event::default().data(text_chunk.render(&t))), (rx, 1, tail, log))),
                    Some(Event::Done { finish, prompt_tokens, completion_tokens, cached_tokens }) => {
                        (log.tokens, log.outcome) = (Some((prompt_tokens, completion_tokens)), "done");
                        if include_usage {
                            let mut u = chunk(json!({}), None);
                            u["choices"] = json!([]);
                            u["usage"] = usage(prompt_tokens, completion_tokens, cached_tokens);
                            tail.push(u);
                        }
                        Some((Ok(data(&chunk(json!({}), Some(finish_reason(finish))))), (rx, 2, tail, log)))
                    }
                    Some(Event::Stopped { prompt_tokens, completion_tokens }) => {
                        (log.tokens, log.outcome) = (Some((prompt_tokens, completion_tokens)), "cut at shutdown");
                        let err = json!({ "error": { "message": SHUTDOWN_MESSAGE, "type": "server_error", "code": "server_shutdown" } });
                        Some((Ok(data(&err)), (rx, 2, tail, log)))
                    }
                    Some(Event::Error(e)) => {
                        log.outcome = "failed mid-stream";
                        let err = json!({ "error": { "message": e, "type": "server_error", "code": "generation_failed" } });
                        Some((Ok(data(&err)), (rx, 2, tail, log)))
                    }
                    None => {
                        log.outcome = "engine stopped";
                        Some((Ok(data(&json!({ "error": { "message": "the engine stopped", "type": "server_error", "code": "engine_stopped" } }))), (rx, 2, tail, log)))
                    }
                },
                2 => Some((Ok(warp::sse::Event::default().data(" [DONE]")), (rx, 3, tail, log))),
                _ => None,
            }
        }
    });
    Ok(warp::sse::reply(warp::sse::keep_alive().stream(events)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_template_renders_what_serializing_the_chunk_gives() {
        let model = "odmoe-demo \"quoted\" \u{1}odmoe-text\u{1}".to_string();
        for chat in [false, true] {
            let chunk = |t: &str| {
                let choice = if chat { json!({ "index": 0, "delta": { "content": t }, "finish_reason": null }) } else { json!({ "index": 0, "text": t, "finish_reason": null }) };
                json!({ "id": "cmpl-1", "object": "x", "created": 1, "model": model, "choices": [choice] })
            };
            let template = ChunkTemplate::new(chunk);
            for text in ["", "ROMEO:\n", "\"quotes\" and \\ backslash", "tab\tcontrol\u{1}\u{7f}", "é 日本 🎭", "\u{1}odmoe-text\u{1}"] {
                assert_eq!(template.render(text), format!(" {}", chunk(text)), "chat {chat}, text {text:?}");
            }
        }
    }
}
