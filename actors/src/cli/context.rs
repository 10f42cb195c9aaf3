//! How many positions a session may use: the model's trained context by default, bounded
//! by the memory its keys and values may take; or what the user asked for.

use odmoe::model::Model;

/// A session's context, and the reason for it (for the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// Positions: prompt and generated tokens together.
    pub positions: usize,
    /// Why this many, in a few words.
    pub why: String,
}

/// The context for sessions of `m` (with its key/value type already set): `asked` when
/// given; else the model's trained context, bounded by `kv_memory` (the memory keys and
/// values may take, default half of what the system has available) divided by the bytes
/// of one position.
pub fn resolve(m: &Model, asked: Option<usize>, kv_memory: Option<u64>) -> Context {
    let trained = m.config().n_ctx_train.max(1);
    let per_position = m.kv_bytes_per_position().max(1);
    let size = super::info::human_bytes;
    if let Some(n) = asked {
        let mut why = format!("asked for; {} of keys and values per session at most", size(n as u64 * per_position));
        if n > trained {
            why += &format!("; beyond the {trained} the model was trained for, where its output may degrade");
        }
        return Context { positions: n.max(2), why };
    }
    let (memory, source) = match kv_memory {
        Some(b) => (Some(b), "limits.kv_budget"),
        None => (odmoe::model::available_memory().map(|b| b / 2), "half the memory available"),
    };
    match memory.map(|b| (b / per_position) as usize) {
        Some(fit) if fit < trained => Context {
            positions: fit.max(2),
            why: format!("the model was trained for {trained}, but a session's keys and values at that length would take {}, more than {source} ({}); --ctx-size sets it", size(trained as u64 * per_position), size(memory.unwrap_or(0))),
        },
        _ => Context { positions: trained, why: format!("the model's trained context; {} of keys and values per session at most", size(trained as u64 * per_position)) },
    }
}
