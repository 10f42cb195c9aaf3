//! Quantized GGUFs against llama.cpp on the same file.
//!
//! For each file made by llama.cpp's quantizer the fixture holds llama.cpp's logits and the
//! logits of the *dequantized reference*: the same weights dequantized to f32 by gguf-py
//! and run by llama.cpp in f32 (which matches transformers to ~5e-6 on this model).
//!
//! - odmoe's distance from the dequantized reference may be at most [`FACTOR`] times
//!   llama.cpp's own distance (both quantize activations to 8 bits, as llama.cpp does).
//! - odmoe must pick llama.cpp's top-1 token at every *decisive* position: one where the
//!   reference's top-1 leads its runner-up by more than twice llama.cpp's own distance
//!   from the reference, so that quantization noise cannot decide it. (This random-weight
//!   model has flat logits; at a near-tie llama.cpp itself disagrees with the reference.)
//! - F16 and BF16 weights are multiplied with f32 activations (llama.cpp rounds the
//!   activations to 16 bits), so there odmoe must match the dequantized reference itself:
//!   max |Δ| ≤ 1e-4 × max(1, max|ref|), and its top-1 everywhere.

mod common;

use odmoe::model::{Logits, Model};

/// How much further from the dequantized reference than llama.cpp odmoe may be.
const FACTOR: f32 = 2.0;

const QUANTIZED: [&str; 14] = [
    "mixtral_h256.Q8_0",
    "mixtral_h256.Q4_0",
    "mixtral_h256.Q4_1",
    "mixtral_h256.Q5_0",
    "mixtral_h256.Q5_1",
    "mixtral_h256.Q2_K",
    "mixtral_h256.Q3_K_M",
    "mixtral_h256.Q4_K_M",
    "mixtral_h256.Q5_K_M",
    "mixtral_h256.Q6_K",
    "qwen3moe_h256.Q8_0",
    "qwen3moe_h256.Q4_K_M",
    "deepseek3_h256.Q8_0",
    "deepseek3_h256.Q4_K_M",
];

struct Run {
    odmoe: Vec<f32>,
    llama: common::Reference,
    deq: common::Reference,
}

fn run(q: &str) -> Run {
    let file = format!("{q}.llamacpp.json");
    let llama = common::Reference::load_key(&file, "logits");
    let deq = common::Reference::load_key(&file, "dequantized_logits");
    let m = Model::open(common::fixture(&format!("models/{q}.gguf"))).unwrap();
    let mut c = m.new_cache(64);
    let odmoe = m.forward(&llama.tokens, &mut c, Logits::All).unwrap();
    Run { odmoe, llama, deq }
}

/// Top-1 margin (best minus runner-up) of each row.
fn margins(x: &[f32], n: usize) -> Vec<f32> {
    x.chunks_exact(n)
        .map(|r| {
            let mut v = r.to_vec();
            v.sort_by(|a, b| b.total_cmp(a));
            v[0] - v[1]
        })
        .collect()
}

fn check_quantized(q: &str) -> Result<(), String> {
    let Run { odmoe, llama, deq } = run(q);
    let n = llama.n_vocab;
    let ours = common::max_abs_diff(&odmoe, &deq.logits).0;
    let theirs = common::max_abs_diff(&llama.logits, &deq.logits).0;
    let top_o = common::argmax_rows(&odmoe, n);
    let top_l = common::argmax_rows(&llama.logits, n);
    let decisive: Vec<usize> = margins(&deq.logits, n).iter().enumerate().filter(|(_, &m)| m > 2.0 * theirs).map(|(i, _)| i).collect();
    let disagree: Vec<usize> = decisive.iter().copied().filter(|&i| top_o[i] != top_l[i]).collect();
    eprintln!(
        "{q:22} odmoe–ref {ours:.3e}  llama.cpp–ref {theirs:.3e} (ratio {:.2})  odmoe–llama.cpp {:.3e}  top-1 agrees at {}/{} positions ({} decisive)",
        ours / theirs.max(1e-9),
        common::max_abs_diff(&odmoe, &llama.logits).0,
        top_o.iter().zip(&top_l).filter(|(a, b)| a == b).count(),
        top_o.len(),
        decisive.len()
    );
    if !disagree.is_empty() {
        return Err(format!("{q}: top-1 differs from llama.cpp at decisive positions {disagree:?}"));
    }
    if ours > FACTOR * theirs.max(1e-6) {
        return Err(format!("{q}: {ours:e} from the dequantized reference, llama.cpp is at {theirs:e}"));
    }
    Ok(())
}

#[test]
fn quantized_models_agree_with_llama_cpp() {
    let failures: Vec<String> = QUANTIZED.iter().filter_map(|q| check_quantized(q).err()).collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn float16_models_match_the_dequantized_reference() {
    for q in ["mixtral_h256.F16", "mixtral_h256.BF16"] {
        let Run { odmoe, llama, deq } = run(q);
        let (d, max_ref) = common::max_abs_diff(&odmoe, &deq.logits);
        let tol = 1e-4 * max_ref.max(1.0);
        eprintln!("{q:22} odmoe–ref {d:.3e} (tolerance {tol:.1e}); llama.cpp–ref {:.3e}", common::max_abs_diff(&llama.logits, &deq.logits).0);
        assert!(d <= tol, "{q}: {d:e} > {tol:e}");
        assert_eq!(common::argmax_rows(&odmoe, deq.n_vocab), common::argmax_rows(&deq.logits, deq.n_vocab), "{q}");
    }
}
