//! Helpers shared by the integration tests: fixture paths and reference files.
#![allow(dead_code)]

use std::path::PathBuf;

/// Path of a file under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// Reference logits produced by another implementation.
pub struct Reference {
    pub tokens: Vec<u32>,
    /// Row-major, `tokens.len() × n_vocab`.
    pub logits: Vec<f32>,
    pub n_vocab: usize,
}

impl Reference {
    /// Loads `tests/fixtures/ref/<file>`, optionally one of several keyed logit sets.
    pub fn load(file: &str) -> Reference {
        Self::load_key(file, "logits")
    }

    pub fn load_key(file: &str, key: &str) -> Reference {
        let path = fixture(&format!("ref/{file}"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let v: serde_json::Value = serde_json::from_str(&text).expect("reference JSON");
        let tokens = v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let rows = v[key].as_array().unwrap_or_else(|| panic!("{file}: no {key}"));
        let n_vocab = rows[0].as_array().unwrap().len();
        let logits = rows.iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32)).collect();
        Reference { tokens, logits, n_vocab }
    }
}

/// (max |a - b|, max |b|).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let m = b.iter().map(|y| y.abs()).fold(0.0f32, f32::max);
    (d, m)
}

/// Index of the largest value in each row of `n`-wide rows.
pub fn argmax_rows(x: &[f32], n: usize) -> Vec<usize> {
    x.chunks_exact(n)
        .map(|r| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0)
        .collect()
}

/// The first GPU adapter, or `None` with the reason printed: the test is skipped where
/// the machine has none, unless ODMOE_REQUIRE_GPU is set (CI installs lavapipe and sets it).
#[cfg(feature = "gpu")]
pub fn gpu_or_skip() -> Option<odmoe::compute::gpu::Gpu> {
    let gpu = odmoe::compute::gpu::Gpu::open().unwrap();
    if gpu.is_none() {
        let why = "no GPU adapter (on Linux, mesa-vulkan-drivers provides lavapipe)";
        assert!(std::env::var_os("ODMOE_REQUIRE_GPU").is_none(), "{why}");
        eprintln!("skipped: {why}");
    }
    gpu
}
