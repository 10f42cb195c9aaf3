//! Real chat templates (Qwen3 with tools, DeepSeek-V3, Mixtral, the demo model's) over any
//! messages: a rendering or an error (a template's raise_exception), never a panic; and
//! where the message texts' ranges are found, each holds exactly its text.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use odmoe::tokenizer::ChatTemplate;
use serde_json::{json, Value};

fn templates() -> &'static Vec<ChatTemplate> {
    static T: OnceLock<Vec<ChatTemplate>> = OnceLock::new();
    T.get_or_init(|| {
        let root = env!("CARGO_MANIFEST_DIR");
        let cases: Value = serde_json::from_str(&std::fs::read_to_string(format!("{root}/../tests/fixtures/chat/cases.json")).unwrap()).unwrap();
        let mut v: Vec<ChatTemplate> = cases["templates"]
            .as_object()
            .unwrap()
            .values()
            .map(|t| ChatTemplate::new(t["template"].as_str().unwrap(), t["bos_token"].as_str().unwrap(), t["eos_token"].as_str().unwrap()).unwrap())
            .collect();
        let g = odmoe::gguf::GgufModel::open(format!("{root}/../models/odmoe-demo-shakespeare-Q8_0.gguf")).unwrap();
        v.push(ChatTemplate::from_gguf(g.metadata()).unwrap());
        v
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let t = &templates()[pick as usize / 4 % templates().len()];
    // JSON messages when the bytes are JSON, else a conversation of their text
    let messages: Value = serde_json::from_slice(rest).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(rest);
        let parts: Vec<&str> = text.split('\u{1}').collect();
        let roles = ["system", "user", "assistant", "user", "tool"];
        Value::Array(parts.iter().enumerate().map(|(i, p)| json!({ "role": roles[i % roles.len()], "content": p })).collect())
    });
    let tools = json!([{ "type": "function", "function": { "name": "f", "parameters": { "type": "object" } } }]);
    let tools = (pick & 2 != 0).then_some(&tools);
    if let Ok((text, spans)) = t.render_json_spans(&messages, pick & 1 == 0, tools) {
        // each range holds one of the messages' texts, exactly
        let contents: Vec<&str> = messages.as_array().into_iter().flatten().filter_map(|m| m.get("content")?.as_str()).collect();
        for s in &spans {
            assert!(contents.contains(&&text[s.clone()]), "{s:?} of {text:?}");
        }
    }
});
