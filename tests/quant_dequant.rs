//! Dequantization of every tensor of real quantized GGUFs (made by llama.cpp's quantizer)
//! matches the `gguf` Python package's `dequantize` bit for bit (compared by SHA-256 of
//! the f32 little-endian bytes; the first values are kept for readable failures).

mod common;

use odmoe::gguf::GgufModel;
use odmoe::quant::dequantize;
use sha2::{Digest, Sha256};

/// Every `<model>.<type>` that has a `ref/<model>.<type>.dequant.json`.
fn fixtures() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(common::fixture("ref"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".dequant.json").map(String::from))
        .collect();
    v.sort();
    v
}

fn check(stem: &str) -> Vec<String> {
    let q = stem;
    let g = GgufModel::open(common::fixture(&format!("models/{stem}.gguf"))).unwrap();
    let path = common::fixture(&format!("ref/{stem}.dequant.json"));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tensors = v["tensors"].as_object().unwrap();
    assert_eq!(tensors.len(), g.tensors().count());
    let mut types = Vec::new();
    for t in g.tensors() {
        let r = &tensors[&t.name];
        assert_eq!(r["type"].as_str().unwrap(), t.ggml_type.name(), "{q} {}", t.name);
        let (_, data) = g.tensor_data(&t.name).unwrap();
        let mut out = vec![0.0f32; t.n_elements() as usize];
        dequantize(t.ggml_type, data, &mut out);
        let first: Vec<f32> = r["first"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(&out[..first.len()], &first[..], "{q} {}: first values differ", t.name);
        let mut h = Sha256::new();
        for x in &out {
            h.update(x.to_le_bytes());
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, r["sha256"].as_str().unwrap(), "{q} {} ({}): dequantization differs from gguf-py", t.name, t.ggml_type);
        types.push(t.ggml_type.name().to_string());
    }
    types
}

#[test]
fn every_block_type_matches_gguf_py_bit_for_bit() {
    let mut seen = std::collections::BTreeSet::new();
    let stems = fixtures();
    assert!(stems.len() >= 12, "dequantization fixtures missing: {stems:?}");
    for stem in &stems {
        seen.extend(check(stem));
    }
    // every computable type occurs in at least one of the files
    for ty in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"] {
        assert!(seen.contains(ty), "no tensor of type {ty} in the fixtures (saw {seen:?})");
    }
}
