//! Generation through the KV cache agrees with recomputing the whole sequence: with greedy
//! sampling every generated token is the argmax of a full forward pass over the text so
//! far, for every architecture. Also: bad requests get clear errors.

mod common;

use odmoe::generate::{generate, FinishReason, GenerateOptions};
use odmoe::model::{Logits, Model};
use odmoe::sampling::SamplingParams;
use odmoe::tokenizer::Tokenizer;

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions { max_tokens, stop: vec![], sampling: SamplingParams { temperature: 0.0, ..Default::default() }, max_context: 64 }
}

#[test]
fn greedy_generation_matches_full_recompute() {
    for name in ["mixtral", "qwen2moe", "qwen3moe", "olmoe", "deepseek2", "deepseek2lite", "deepseek3", "kimik2"] {
        let m = Model::open(common::fixture(&format!("models/{name}.f32.gguf"))).unwrap();
        let tok = Tokenizer::from_gguf(m.metadata()).unwrap();
        let prompt = tok.encode("the quick brown fox", false, false).unwrap();
        let g = generate(&m, &tok, &prompt, &greedy(8), |_| true).unwrap();
        assert_eq!(g.generated_tokens, 8, "{name}");
        assert_eq!(g.finish, FinishReason::Length);
        // replay: each next token is the argmax of a full forward over everything so far
        let mut seq = prompt.clone();
        for _ in 0..8 {
            let mut c = m.new_cache(64);
            let logits = m.forward(&seq, &mut c, Logits::Last).unwrap();
            let next = common::argmax_rows(&logits, logits.len())[0] as u32;
            seq.push(next);
        }
        let replay: Vec<u8> = seq[prompt.len()..].iter().flat_map(|&t| tok.token_bytes(t, false)).collect();
        assert_eq!(g.text, String::from_utf8_lossy(&replay), "{name}");
    }
}

#[test]
fn bad_requests_are_refused() {
    let m = Model::open(common::fixture("models/qwen3moe.f32.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(m.metadata()).unwrap();
    let e = generate(&m, &tok, &[], &greedy(4), |_| true).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let long = vec![5u32; 64];
    let e = generate(&m, &tok, &long, &greedy(4), |_| true).unwrap_err().to_string();
    assert!(e.contains("context"), "{e}");
    let mut bad = greedy(4);
    bad.sampling.top_p = 1.5;
    let e = generate(&m, &tok, &[5], &bad, |_| true).unwrap_err().to_string();
    assert!(e.contains("top_p"), "{e}");
}

#[test]
fn cancelling_stops_generation() {
    let m = Model::open(common::fixture("models/mixtral.f32.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(m.metadata()).unwrap();
    let mut pieces = 0;
    let g = generate(&m, &tok, &[5, 6], &greedy(50), |_| {
        pieces += 1;
        pieces < 3
    })
    .unwrap();
    assert_eq!(g.finish, FinishReason::Cancelled);
    assert!(g.generated_tokens < 50);
}
