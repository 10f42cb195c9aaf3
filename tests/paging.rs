//! Experts read on demand into a byte-budgeted cache give bit-identical logits to the
//! memory-mapped run, whatever the budget: no limit, a quarter of the routed-expert bytes,
//! and a single expert per layer.

mod common;

use odmoe::model::{ExpertMode, Logits, Model};

const TOKENS: [u32; 12] = [1, 17, 300, 42, 511, 7, 99, 256, 128, 3, 450, 77];

fn run(path: &std::path::Path, mode: &ExpertMode) -> (Vec<f32>, Model) {
    let m = Model::open_with(path, mode).unwrap();
    let mut c = m.new_cache(32);
    // prefill, then token-by-token decoding, so both batch and single-token paths page
    let mut out = m.forward(&TOKENS[..8], &mut c, Logits::All).unwrap();
    for &t in &TOKENS[8..] {
        out.extend(m.forward(&[t], &mut c, Logits::Last).unwrap());
    }
    (out, m)
}

#[test]
fn paged_logits_equal_mapped_logits_bit_for_bit() {
    let files = [
        "mixtral.f32", "qwen2moe.f32", "qwen3moe.f32", "olmoe.f32", "deepseek2.f32", "deepseek2lite.f32", "deepseek3.f32", "kimik2.f32",
        "mixtral_h256.Q4_K_M", "deepseek3_h256.Q4_K_M", "qwen3moe_h256.Q8_0",
    ];
    for name in files {
        let path = common::fixture(&format!("models/{name}.gguf"));
        let (want, _) = run(&path, &ExpertMode::Mapped);
        let (_, probe) = run(&path, &ExpertMode::Paged { budget: u64::MAX, read_threads: 2 });
        let pager = probe.pager().unwrap();
        let unlimited_read = pager.stats().bytes_read;
        let total = pager.total_expert_bytes();
        let one_per_layer = (0..probe.config().n_layer).map(|l| pager.expert_bytes(l)).max().unwrap() * probe.config().n_layer as u64;
        for (label, budget) in [("unlimited", u64::MAX), ("quarter", total / 4), ("one expert per layer", one_per_layer)] {
            for threads in [1, 3] {
                let (got, m) = run(&path, &ExpertMode::Paged { budget, read_threads: threads });
                assert!(got == want, "{name}, budget {label}, {threads} threads: logits differ from the mapped run");
                let p = m.pager().unwrap();
                let s = p.stats();
                assert!(s.misses > 0 && s.bytes_read > 0, "{name}: nothing was read");
                if budget != u64::MAX {
                    assert!(p.cached_bytes() <= budget, "{name} {label}: cache holds {} > budget {budget}", p.cached_bytes());
                    assert!(s.bytes_read >= unlimited_read, "{name} {label}: read less than the unlimited run");
                } else {
                    assert_eq!(s.evictions, 0);
                    assert!(s.hits > 0, "{name}: an unlimited cache must hit");
                }
            }
        }
    }
}
