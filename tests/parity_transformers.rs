//! f32 GGUFs converted by llama.cpp's converter must reproduce Hugging Face transformers'
//! logits at every position: max |Δ| ≤ 1e-4 × max(1, max|ref|).
//!
//! Fixtures come from `tests/fixtures/gen/gen_models.py` (tiny random-weight models of
//! every supported architecture).

mod common;

use odmoe::model::{Logits, Model};

fn check(name: &str) {
    let reference = common::Reference::load(&format!("{name}.transformers.json"));
    let model = Model::open(common::fixture(&format!("models/{name}.f32.gguf"))).expect("model loads");
    let mut cache = model.new_cache(64);
    let got = model.forward(&reference.tokens, &mut cache, Logits::All).expect("forward");
    let (max_diff, max_ref) = common::max_abs_diff(&got, &reference.logits);
    let tol = 1e-4 * max_ref.max(1.0);
    eprintln!("{name}: max |Δ| = {max_diff:.3e} (max |ref| = {max_ref:.3}, tolerance {tol:.1e})");
    assert!(max_diff <= tol, "{name}: max |Δ| {max_diff:e} exceeds {tol:e}");

    // Incremental decoding (one token at a time through the KV cache) gives the same logits.
    let mut cache = model.new_cache(64);
    let mut inc = Vec::new();
    for &t in &reference.tokens {
        inc.extend(model.forward(&[t], &mut cache, Logits::Last).expect("step"));
    }
    let (inc_diff, _) = common::max_abs_diff(&inc, &reference.logits);
    assert!(inc_diff <= tol, "{name}: incremental max |Δ| {inc_diff:e} exceeds {tol:e}");
}

#[test]
fn mixtral() {
    check("mixtral");
}

#[test]
fn qwen2moe() {
    check("qwen2moe");
}

#[test]
fn qwen3moe() {
    check("qwen3moe");
}

#[test]
fn olmoe() {
    check("olmoe");
}

#[test]
fn deepseek2_group_limited() {
    check("deepseek2");
}

#[test]
fn deepseek2_lite_yarn() {
    check("deepseek2lite");
}

#[test]
fn deepseek3_sigmoid_bias_yarn() {
    check("deepseek3");
}

#[test]
fn kimi_k2_like() {
    check("kimik2");
}
