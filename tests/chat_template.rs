//! Chat templates of real models (Qwen3, DeepSeek-V3, Mixtral) render exactly what
//! Hugging Face transformers' `apply_chat_template` renders for the same messages
//! (fixture: `tests/fixtures/gen/gen_chat.py`).

mod common;

use odmoe::tokenizer::ChatTemplate;

#[test]
fn templates_match_transformers() {
    let text = std::fs::read_to_string(common::fixture("chat/cases.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut failures = Vec::new();
    let cases = v["cases"].as_array().unwrap();
    for c in cases {
        let name = c["template"].as_str().unwrap();
        let t = &v["templates"][name];
        let tmpl = ChatTemplate::new(t["template"].as_str().unwrap(), t["bos_token"].as_str().unwrap(), t["eos_token"].as_str().unwrap()).unwrap();
        let tools = if c["tools"].is_null() { None } else { Some(&c["tools"]) };
        let got = tmpl.render_json(&c["messages"], c["add_generation_prompt"].as_bool().unwrap(), tools);
        let want = c["expected"].as_str().unwrap();
        match got {
            Ok(g) if g == want => {}
            Ok(g) => failures.push(format!("{name}/{} agp={}:\n got  {g:?}\n want {want:?}", c["conversation"], c["add_generation_prompt"])),
            Err(e) => failures.push(format!("{name}/{}: {e}", c["conversation"])),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn template_errors_are_reported() {
    let text = std::fs::read_to_string(common::fixture("chat/cases.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let t = &v["templates"]["mixtral"];
    let tmpl = ChatTemplate::new(t["template"].as_str().unwrap(), "<s>", "</s>").unwrap();
    let msgs = serde_json::json!([{"role": "assistant", "content": "first"}]);
    let e = tmpl.render_json(&msgs, true, None).unwrap_err().to_string();
    assert!(e.contains("Conversation roles must alternate"), "{e}");
    assert!(ChatTemplate::new("{% for %}", "", "").is_err());
}
