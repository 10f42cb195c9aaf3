//! The prefix cache through the server: a request that begins as an earlier one did
//! reuses its keys and values (`usage.prompt_tokens_details.cached_tokens`) and gets the
//! reply a fresh prefill gives; eviction under a small budget never changes a reply.

mod common;

use common::{http, metric, ready, Server};
use serde_json::{json, Value};

/// A whole completion: (text, prompt tokens, cached tokens).
async fn complete(srv: &Server, path: &str, body: Value) -> (String, u64, u64) {
    let r = http::post(&srv.url(path), &body.to_string()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let text = v["choices"][0]["text"].as_str().or(v["choices"][0]["message"]["content"].as_str()).unwrap().to_string();
    (text, v["usage"]["prompt_tokens"].as_u64().unwrap(), v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap())
}

const PLAY: &str = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\nArise, fair sun, and kill the envious moon,\nWho is already sick and pale with grief,\nThat thou her maid art far more fair than she.\n\nJULIET:\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prompt_seen_before_starts_after_what_is_cached() {
    let srv = Server::start(&[]);
    ready(&srv).await;
    let req = |prompt: &str| json!({ "prompt": prompt, "max_tokens": 16, "temperature": 0 });
    // the first time: nothing cached
    let (first, prompt_tokens, cached) = complete(&srv, "/v1/completions", req(PLAY)).await;
    assert_eq!(cached, 0);
    // the same request: all but its last token reused, the same reply
    let (again, _, cached) = complete(&srv, "/v1/completions", req(PLAY)).await;
    assert_eq!(again, first);
    assert!(cached as f64 >= 0.9 * prompt_tokens as f64, "{cached} of {prompt_tokens} cached");
    // a longer prompt that begins with it (and its reply) reuses them, and replies as a
    // fresh prefill does (checked against a server with the cache off below)
    let longer = format!("{PLAY}{first}\n\nROMEO:\n");
    let (reply, longer_tokens, cached) = complete(&srv, "/v1/completions", req(&longer)).await;
    assert!(cached >= prompt_tokens, "{cached} cached of {longer_tokens}");
    // a conversation's second turn reuses the first
    let turn = |msgs: &Value| json!({ "messages": msgs, "max_tokens": 12, "temperature": 0 });
    let mut msgs = json!([{ "role": "user", "content": "Good morrow, what news from court?" }]);
    let (answer, first_turn, _) = complete(&srv, "/v1/chat/completions", turn(&msgs)).await;
    msgs.as_array_mut().unwrap().push(json!({ "role": "assistant", "content": answer }));
    msgs.as_array_mut().unwrap().push(json!({ "role": "user", "content": "And what of the king?" }));
    let (second, _, cached) = complete(&srv, "/v1/chat/completions", turn(&msgs)).await;
    assert!(cached >= first_turn, "the second turn reused {cached} tokens; the first had {first_turn}");
    assert!(metric(&srv, "odmoe_prefix_cache_hit_tokens_total").await > 0.0 && metric(&srv, "odmoe_prefix_cache_bytes").await > 0.0);

    // the same requests with the cache off, and with a budget that holds about one entry
    // (4 KiB a position: entries are evicted as others come): every reply as above
    for budget in ["0", "400KiB"] {
        let plain = Server::start(&[("ODMOE_CACHE_PREFIX_BUDGET", budget)]);
        ready(&plain).await;
        assert_eq!(complete(&plain, "/v1/completions", req(PLAY)).await.0, first, "budget {budget}");
        assert_eq!(complete(&plain, "/v1/completions", req(&longer)).await.0, reply, "budget {budget}");
        assert_eq!(complete(&plain, "/v1/completions", req(PLAY)).await.0, first, "budget {budget}");
        assert_eq!(complete(&plain, "/v1/chat/completions", turn(&msgs)).await.0, second, "budget {budget}");
        let hits = metric(&plain, "odmoe_prefix_cache_hit_tokens_total").await;
        assert!(if budget == "0" { hits == 0.0 } else { hits > 0.0 }, "budget {budget}: {hits} tokens reused");
        assert!(metric(&plain, "odmoe_prefix_cache_bytes").await <= 400.0 * 1024.0);
    }
}
