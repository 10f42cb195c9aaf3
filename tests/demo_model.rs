//! The shipped demo model runs in odmoe as in llama.cpp: logits on a fixed prompt (recorded
//! by `models/train/build_demo.py` from llama.cpp on the same Q8_0 file) agree, and
//! generation produces text in the style of the corpus.

mod common;

use std::path::PathBuf;

use odmoe::generate::{generate, GenerateOptions};
use odmoe::model::{Logits, Model};
use odmoe::sampling::SamplingParams;
use odmoe::tokenizer::Tokenizer;

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/odmoe-demo-shakespeare-Q8_0.gguf")
}

#[test]
fn logits_agree_with_llama_cpp() {
    let r = common::Reference::load("demo.llamacpp.json");
    let m = Model::open(demo()).unwrap();
    let tok = Tokenizer::from_gguf(m.metadata()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(common::fixture("ref/demo.llamacpp.json")).unwrap()).unwrap();
    // odmoe's tokenizer gives llama.cpp's tokens for the prompt
    assert_eq!(tok.encode(v["prompt"].as_str().unwrap(), true, false).unwrap(), r.tokens);
    let mut c = m.new_cache(256);
    let got = m.forward(&r.tokens, &mut c, Logits::All).unwrap();
    let (d, max_ref) = common::max_abs_diff(&got, &r.logits);
    eprintln!("demo: max |Δ| vs llama.cpp {d:.3e} (max |logit| {max_ref:.2})");
    assert!(d <= 0.01 * max_ref.max(1.0), "max |Δ| {d} exceeds 1% of the largest logit {max_ref}");
    let n = r.n_vocab;
    let ours = common::argmax_rows(&got, n);
    let theirs = common::argmax_rows(&r.logits, n);
    for (i, row) in r.logits.chunks_exact(n).enumerate() {
        let mut s = row.to_vec();
        s.sort_by(|a, b| b.total_cmp(a));
        if s[0] - s[1] > 0.05 {
            assert_eq!(ours[i], theirs[i], "top-1 differs at position {i}");
        }
    }
}

#[test]
fn greedy_text_equals_llama_cpp() {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(common::fixture("ref/demo.llamacpp.json")).unwrap()).unwrap();
    let m = Model::open(demo()).unwrap();
    let tok = Tokenizer::from_gguf(m.metadata()).unwrap();
    let prompt = tok.encode(v["greedy_prompt"].as_str().unwrap(), true, false).unwrap();
    let opts = GenerateOptions { max_tokens: 80, stop: vec![], sampling: SamplingParams { temperature: 0.0, ..Default::default() }, max_context: 256 };
    let g = generate(&m, &tok, &prompt, &opts, |_| true).unwrap();
    assert_eq!(g.text, v["greedy_text"].as_str().unwrap());
}

#[test]
fn greedy_text_looks_like_the_corpus() {
    let m = Model::open(demo()).unwrap();
    let tok = Tokenizer::from_gguf(m.metadata()).unwrap();
    let prompt = tok.encode("ROMEO:\n", true, false).unwrap();
    let opts = GenerateOptions { max_tokens: 60, stop: vec![], sampling: SamplingParams { temperature: 0.0, ..Default::default() }, max_context: 256 };
    let g = generate(&m, &tok, &prompt, &opts, |_| true).unwrap();
    eprintln!("ROMEO:\n{}", g.text);
    let words: Vec<&str> = g.text.split_whitespace().collect();
    assert!(words.len() >= 20, "too little text: {:?}", g.text);
    // mostly real English words of the plays: letters with light punctuation
    let wordlike = words.iter().filter(|w| w.trim_matches(|c: char| c.is_ascii_punctuation()).chars().all(|c| c.is_alphabetic() || c == '\'')).count();
    assert!(wordlike * 10 >= words.len() * 8, "not word-like: {:?}", g.text);
}
