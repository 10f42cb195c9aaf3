//! The GPU backend's forward pass against the CPU backend: every position's logits within
//! 1e-3 × max(1, max |logit|) on the fixtures of the grouped-query architectures in every
//! format with a GPU kernel (F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q2_K, Q3_K_M, Q4_K_M, Q5_K_M,
//! Q6_K) but
//! one: mixtral_h256.Q4_K_M, whose logits differ by about 1% of the largest at three of
//! seven positions (3, 5, 6) although its every matrix agrees with the CPU's to 5e-7
//! (tests/gpu_matrices.rs). There an input differs in the last bit after an attention or
//! an exp computed in another order, the 8-bit activation rounding before a K-quant
//! product turns that into a whole step, and this small random-weight model amplifies
//! the step. (The other files agree to about 3e-7 since the device's activation
//! quantization divides exactly: before, an ulp from the driver's division or unfused
//! `fma` moved values across rounding ties, which a normalized Q4_0 embedding puts one
//! activation in eight on.) Skipped (with
//! the reason printed) where the machine has no GPU adapter, unless ODMOE_REQUIRE_GPU is
//! set (CI installs lavapipe and sets it).

#![cfg(feature = "gpu")]

mod common;

use odmoe::compute::gpu::Gpu;
use odmoe::model::{GpuModel, Logits, Model};

const TOKENS: [u32; 7] = [1, 17, 300, 42, 511, 7, 99];

fn gpu_or_skip() -> Option<Gpu> {
    let gpu = Gpu::open().unwrap();
    if gpu.is_none() {
        let why = "no GPU adapter (on Linux, mesa-vulkan-drivers provides lavapipe)";
        assert!(std::env::var_os("ODMOE_REQUIRE_GPU").is_none(), "{why}");
        eprintln!("skipped: {why}");
    }
    gpu
}

#[test]
fn gpu_decoding_with_its_kv_cache_matches_the_cpu_backend() {
    let Some(gpu) = gpu_or_skip() else { return };
    for name in ["mixtral.f32", "qwen3moe.f32", "qwen2moe.f32", "mixtral_h256.Q8_0", "mixtral_h256.F16", "mixtral_h256.BF16", "mixtral_h256.Q4_0", "mixtral_h256.Q5_0", "mixtral_h256.Q2_K", "mixtral_h256.Q3_K_M", "mixtral_h256.Q5_K_M", "mixtral_h256.Q6_K", "qwen3moe_h256.Q4_K_M"] {
        let m = Model::open(common::fixture(&format!("models/{name}.gguf"))).unwrap();
        let want = m.forward(&TOKENS, &mut m.new_cache(TOKENS.len()), Logits::All).unwrap();
        let v = m.config().n_vocab;
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        // a prompt of three tokens, then one token at a time, each step's last logits
        let g = GpuModel::new(&m, &gpu).unwrap();
        let mut cache = g.new_cache(TOKENS.len());
        let mut got = g.forward(&TOKENS[..3], &mut cache, Logits::Last).unwrap();
        for &t in &TOKENS[3..] {
            got.extend(g.forward(&[t], &mut cache, Logits::Last).unwrap());
        }
        assert_eq!((cache.len(), got.len()), (TOKENS.len(), (TOKENS.len() - 2) * v), "{name}");
        let worst = got.iter().zip(&want[2 * v..]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-3 * scale, "{name}: largest difference {worst} (logits up to {scale})");
        // a chunk that would overflow the cache is refused and leaves it as it was
        assert!(g.forward(&[1], &mut cache, Logits::Last).unwrap_err().to_string().contains("context overflow"));
        assert_eq!(cache.len(), TOKENS.len());
        // every expert fits the default budget: all resident, routed on the device
        assert!(g.experts_resident(), "{name}");
        assert_eq!(g.expert_uploads(), 0, "{name}: nothing fetched while decoding");
        // one byte short of all experts: they are fetched as routed and kept, so the
        // same tokens again upload none; with no room every step uploads its experts,
        // and the logits are the same
        let all = g.all_expert_bytes().unwrap();
        let part = GpuModel::with_expert_budget(&m, &gpu, all - 1).unwrap();
        assert!(!part.experts_resident(), "{name}");
        let fetched = part.forward(&TOKENS, &mut part.new_cache(TOKENS.len()), Logits::All).unwrap();
        let worst = fetched.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-3 * scale, "{name}, experts fetched: largest difference {worst} (logits up to {scale})");
        let uploads = part.expert_uploads();
        part.forward(&TOKENS, &mut part.new_cache(TOKENS.len()), Logits::All).unwrap();
        assert_eq!(part.expert_uploads(), uploads, "{name}");
        let none = GpuModel::with_expert_budget(&m, &gpu, 0).unwrap();
        let fresh = none.forward(&TOKENS, &mut none.new_cache(TOKENS.len()), Logits::All).unwrap();
        let first = none.expert_uploads();
        assert!(first > 0);
        none.forward(&TOKENS, &mut none.new_cache(TOKENS.len()), Logits::All).unwrap();
        assert_eq!(none.expert_uploads(), 2 * first, "{name}: nothing kept, everything uploaded again");
        assert_eq!(fetched, fresh, "{name}");
    }
}

#[test]
fn gpu_logits_match_the_cpu_backend() {
    let Some(gpu) = gpu_or_skip() else { return };
    eprintln!("adapter: {}", gpu.describe());
    for name in ["mixtral.f32", "qwen2moe.f32", "qwen3moe.f32", "olmoe.f32", "qwen3moe_h256.Q8_0", "mixtral_h256.Q8_0", "mixtral_h256.F16", "mixtral_h256.BF16", "mixtral_h256.Q4_0", "mixtral_h256.Q5_0", "mixtral_h256.Q2_K", "mixtral_h256.Q3_K_M", "mixtral_h256.Q5_K_M", "mixtral_h256.Q6_K", "qwen3moe_h256.Q4_K_M"] {
        let m = Model::open(common::fixture(&format!("models/{name}.gguf"))).unwrap();
        let mut cache = m.new_cache(TOKENS.len());
        let want = m.forward(&TOKENS, &mut cache, Logits::All).unwrap();
        let got = m.logits_gpu(&gpu, &TOKENS).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.len(), want.len(), "{name}");
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-3 * scale, "{name}: largest difference {worst} (logits up to {scale})");
        eprintln!("{name}: largest difference {worst:.2e} (logits up to {scale:.2})");
    }
    // what the GPU backend does not cover yet is refused, not computed wrongly
    let m = Model::open(common::fixture("models/deepseek2.f32.gguf")).unwrap();
    assert!(m.logits_gpu(&gpu, &TOKENS).unwrap_err().to_string().contains("latent attention"));
}
