//! The OpenAI request parser of `odmoe serve` on any bytes, as a chat and as a text
//! completion: a checked request or a message for the client, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // the fields the server reads, not this target
#[path = "../../actors/src/server/request.rs"]
mod request;

fuzz_target!(|data: &[u8]| {
    let limits = request::Limits { max_tokens: 4096, default_max_tokens: 256 };
    for chat in [false, true] {
        if let Ok(r) = request::parse(data, 1024, &limits, chat) {
            assert!(r.opts.max_tokens >= 1 && r.opts.max_tokens <= limits.max_tokens);
        }
    }
});
