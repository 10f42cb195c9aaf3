//! Experts read on demand into a byte-budgeted cache give bit-identical logits to the
//! memory-mapped run (its experts left in the file's layout, as paged ones are), whatever
//! the budget: no limit, a quarter of the routed-expert bytes, and a single expert per
//! layer; and the same logits to rounding as a mapped run whose experts are packed.

mod common;

use odmoe::experts::PagerOptions;
use odmoe::model::{ExpertMode, Logits, Model, PackExperts, Prefetch};

const TOKENS: [u32; 12] = [1, 17, 300, 42, 511, 7, 99, 256, 128, 3, 450, 77];

fn run(path: &std::path::Path, mode: &ExpertMode) -> (Vec<f32>, Model) {
    run_with(path, mode, Prefetch::Off)
}

fn run_with(path: &std::path::Path, mode: &ExpertMode, prefetch: Prefetch) -> (Vec<f32>, Model) {
    run_packing(path, mode, prefetch, PackExperts::Never)
}

fn run_packing(path: &std::path::Path, mode: &ExpertMode, prefetch: Prefetch, pack: PackExperts) -> (Vec<f32>, Model) {
    let mut m = Model::open_with_packing(path, mode, pack).unwrap();
    m.set_prefetch(prefetch);
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
        // mapped experts in the CPU's interleaved layout (where it has one): every kernel
        // adds the blocks in one order, so the same bits
        let (packed, _) = run_packing(&path, &ExpertMode::Mapped, Prefetch::Off, PackExperts::Always);
        assert!(packed == want, "{name}: packed experts' logits differ from the file layout's");
        // bytes an unlimited cache reads, buffered and direct (direct reads include alignment slack)
        let unlimited = |direct_io: bool| run(&path, &ExpertMode::Paged(PagerOptions { budget: u64::MAX, read_threads: 2, direct_io, ..Default::default() })).1;
        let (buffered, probe) = (unlimited(false), unlimited(true));
        let pager = probe.pager().unwrap();
        let unlimited_read = [buffered.pager().unwrap().stats().bytes_read, pager.stats().bytes_read];
        let total = pager.total_expert_bytes();
        let one_per_layer = (0..probe.config().n_layer).map(|l| pager.expert_bytes(l)).max().unwrap() * probe.config().n_layer as u64;
        for (label, budget) in [("unlimited", u64::MAX), ("quarter", total / 4), ("one expert per layer", one_per_layer)] {
            for (threads, prefetch, direct_io) in [(1, Prefetch::Off, false), (3, Prefetch::Off, false), (3, Prefetch::Gate { depth: 1 }, false), (2, Prefetch::Gate { depth: 1 }, true)] {
                let (got, m) = run_with(&path, &ExpertMode::Paged(PagerOptions { budget, read_threads: threads, direct_io, ..Default::default() }), prefetch);
                assert!(got == want, "{name}, budget {label}, {threads} threads, prefetch {prefetch:?}, direct {direct_io}: logits differ from the mapped run");
                let p = m.pager().unwrap();
                let s = p.stats();
                assert!(s.misses > 0 && s.bytes_read > 0, "{name}: nothing was read");
                if prefetch != Prefetch::Off {
                    assert!(s.prefetch_reads + s.prefetch_cancelled > 0, "{name} {label}: no prefetch was issued");
                }
                if budget != u64::MAX {
                    assert!(p.cached_bytes() <= budget, "{name} {label}: cache holds {} > budget {budget}", p.cached_bytes());
                    assert!(s.bytes_read >= unlimited_read[direct_io as usize], "{name} {label}: read less than the unlimited run");
                } else {
                    assert_eq!(s.evictions, 0);
                    assert!(s.hits > 0, "{name}: an unlimited cache must hit");
                }
            }
        }
    }
}

fn pager_model(budget: u64, read_threads: usize, prefetch_in_flight: usize) -> Model {
    let path = common::fixture("models/mixtral.f32.gguf");
    Model::open_with(&path, &ExpertMode::Paged(PagerOptions { budget, read_threads, prefetch_in_flight, direct_io: false })).unwrap()
}

fn wait_for_reads(p: &odmoe::experts::PagedExperts, n: u64) {
    let t = std::time::Instant::now();
    while p.stats().reads < n {
        assert!(t.elapsed().as_secs() < 10, "reads did not finish");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn prefetched_experts_serve_later_demands() {
    use odmoe::experts::ExpertSource;
    let m = pager_model(u64::MAX, 2, 2);
    let p = m.pager().unwrap();
    p.prefetch(1, &[0, 3]);
    let got = p.experts(1, &[0, 3, 5]).unwrap();
    for (w, e) in got.iter().zip([0, 3, 5]) {
        let [gate, up, down] = file_expert(1, e);
        assert!(w.gate.data == gate && w.up.data == up && w.down.data == down, "expert {e}: bytes differ from the file's");
    }
    let s = p.stats();
    // whether the prefetch had finished, was reading or still queued, the demand used it
    assert_eq!(s.prefetch_hits, 2, "{s:?}");
    assert_eq!(s.hits + s.misses, 3);
    assert_eq!(s.reads, 3, "single flight: one read per expert");
    // a prefetch of cached experts is a no-op
    p.prefetch(1, &[0, 3, 5]);
    assert_eq!(p.stats().prefetch_reads, s.prefetch_reads);
}

/// Expert `e` of `layer` as the model file holds it: the e-th slice of each stacked tensor.
fn file_expert(layer: usize, e: usize) -> [Vec<u8>; 3] {
    let g = odmoe::gguf::GgufModel::open(common::fixture("models/mixtral.f32.gguf")).unwrap();
    ["gate", "up", "down"].map(|p| {
        let (info, data) = g.tensor_data(&format!("blk.{layer}.ffn_{p}_exps.weight")).unwrap();
        let stride = data.len() / info.dims[2] as usize;
        data[e * stride..(e + 1) * stride].to_vec()
    })
}

#[test]
fn cancelled_prefetches_are_not_read_and_unused_ones_count_as_waste() {
    use odmoe::experts::ExpertSource;
    let m = pager_model(u64::MAX, 1, 1);
    let p = m.pager().unwrap();
    let n_expert = p.layer_shape(0).unwrap().0;
    let all: Vec<usize> = (0..n_expert).collect();
    p.prefetch(0, &all);
    p.cancel_prefetches(Some(0));
    wait_for_reads(p, p.stats().prefetch_reads);
    let s = p.stats();
    assert_eq!(s.prefetch_reads + s.prefetch_cancelled, n_expert as u64, "{s:?}");
    assert!(s.prefetch_cancelled > 0, "one reader cannot have started every prefetch: {s:?}");
    // cancelling another layer's prefetches leaves these alone
    p.prefetch(1, &all);
    p.cancel_prefetches(Some(0));
    wait_for_reads(p, s.reads + n_expert as u64);
    assert_eq!(p.stats().prefetch_cancelled, s.prefetch_cancelled);

    // a budget of one expert per layer: the second prefetch evicts the first, unused
    let one = p.expert_bytes(0) * m.config().n_layer as u64;
    let m = pager_model(one, 1, 1);
    let p = m.pager().unwrap();
    p.prefetch(0, &[0]);
    wait_for_reads(p, 1);
    p.prefetch(0, &[1]);
    wait_for_reads(p, 2);
    let s = p.stats();
    assert_eq!(s.prefetch_wasted_bytes, p.expert_bytes(0), "{s:?}");
    assert!(p.cached_bytes() <= one);
}
