//! Batched decode steps on the demo model: milliseconds per step and tokens/s for 1, 4, 16
//! and 64 sequences decoding together (`Model::forward_batch`, no server), to separate
//! the engine's batching gain from the server's. Contexts grow from 2 to 258 positions
//! over the 256 steps of each level. `cargo bench --bench batch_step`.
//!
//! The levels take turns, `ODMOE_BENCH_REPS` rounds (default 3), and each reports its
//! fastest round: on a shared machine the slow rounds measure the neighbours.
//! `ODMOE_BENCH_LEVELS=16` (comma-separated) runs only the levels named, for profiling;
//! `ODMOE_BENCH_MODEL=PATH` runs another model, `ODMOE_BENCH_STEPS` sets the steps per
//! round (256), `ODMOE_BENCH_KV=f16` keeps the caches in f16. `ODMOE_BENCH_BACKEND=gpu`
//! runs the GPU backend's batched pass instead (`GpuModel::forward_batch`, every expert
//! resident where the device holds them; on lavapipe the figures only show it runs), with
//! each level also run with the expert pairs always grouped by expert and never
//! (`ODMOE_BENCH_PROFILE=1`: then one step per level profiled, per kernel).

use odmoe::model::{Logits, Model, Sequence};

fn main() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/models/odmoe-demo-shakespeare-Q8_0.gguf");
    let path = std::env::var("ODMOE_BENCH_MODEL").unwrap_or(demo.to_string());
    let mut m = Model::open(&path).unwrap();
    if std::env::var("ODMOE_BENCH_KV").is_ok_and(|v| v == "f16") {
        m.set_kv_type(odmoe::model::KvType::F16);
    }
    let steps: usize = std::env::var("ODMOE_BENCH_STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let reps: usize = std::env::var("ODMOE_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let levels: Vec<usize> = match std::env::var("ODMOE_BENCH_LEVELS") {
        Ok(v) => v.split(',').map(|l| l.trim().parse().expect("ODMOE_BENCH_LEVELS: numbers")).collect(),
        Err(_) => vec![1, 4, 16, 64],
    };
    let vocab = m.config().n_vocab;
    let token = move |s: usize, i: usize| [((s * 7 + i * 13) % 4000 % vocab) as u32];
    let mut best = vec![f64::INFINITY; levels.len()];
    if std::env::var("ODMOE_BENCH_BACKEND").is_ok_and(|v| v == "gpu") {
        gpu_levels(&m, &levels, steps, reps, &token, &mut best);
    } else {
        for _ in 0..reps {
            for (li, &n) in levels.iter().enumerate() {
                let mut caches: Vec<_> = (0..n).map(|_| m.new_cache(steps + 2)).collect();
                for (i, c) in caches.iter_mut().enumerate() {
                    m.forward(&[1, (10 + i) as u32 % vocab as u32], c, Logits::Last).unwrap();
                }
                let t = std::time::Instant::now();
                for s in 0..steps {
                    let toks: Vec<[u32; 1]> = (0..n).map(|i| token(s, i)).collect();
                    let mut seqs: Vec<Sequence> = caches.iter_mut().zip(&toks).map(|(c, t)| Sequence { tokens: t, cache: c, logits: Logits::Last }).collect();
                    m.forward_batch(&mut seqs).unwrap();
                }
                best[li] = best[li].min(t.elapsed().as_secs_f64() / steps as f64);
            }
        }
    }
    for (li, &n) in levels.iter().enumerate() {
        let rate = n as f64 / best[li];
        let vs = if levels[0] == 1 { format!(", {:.2}x one sequence", rate * best[0]) } else { String::new() };
        println!("{n:>3} sequences: {:.3} ms/step, {rate:.0} tokens/s{vs}", best[li] * 1e3);
    }
}

/// The levels on the GPU backend, every expert resident if the device takes them.
#[cfg(feature = "gpu")]
fn gpu_levels(m: &Model, levels: &[usize], steps: usize, reps: usize, token: &dyn Fn(usize, usize) -> [u32; 1], best: &mut [f64]) {
    use odmoe::model::{GpuModel, GpuSequence};
    let gpu = odmoe::compute::gpu::Gpu::open().expect("opening the GPU").expect("no GPU adapter");
    println!("adapter: {}", gpu.describe());
    let g = GpuModel::with_expert_budget(m, &gpu, u64::MAX).unwrap();
    println!("experts resident: {}", g.experts_resident());
    let vocab = m.config().n_vocab as u32;
    // the default's steps (`best`), then the same with the expert pairs always grouped by
    // expert and always taken one by one, for comparison
    use odmoe::model::ExpertGrouping;
    let mut other = [vec![f64::INFINITY; levels.len()], vec![f64::INFINITY; levels.len()]];
    for _ in 0..reps {
        for (li, &n) in levels.iter().enumerate() {
            for (k, grouping) in [ExpertGrouping::WhenItPays, ExpertGrouping::Always, ExpertGrouping::Never].into_iter().enumerate() {
                if k > 0 && n == 1 {
                    continue; // one token's pairs are never grouped
                }
                g.set_expert_grouping(grouping);
                let mut caches: Vec<_> = (0..n).map(|_| g.new_cache(steps + 2)).collect();
                for (i, c) in caches.iter_mut().enumerate() {
                    g.forward(&[1, (10 + i as u32) % vocab], c, Logits::Last).unwrap();
                }
                let t = std::time::Instant::now();
                for s in 0..steps {
                    let toks: Vec<[u32; 1]> = (0..n).map(|i| token(s, i)).collect();
                    let mut seqs: Vec<GpuSequence> = caches.iter_mut().zip(&toks).map(|(c, t)| GpuSequence { tokens: t, cache: c, logits: Logits::Last }).collect();
                    g.forward_batch(&mut seqs).unwrap();
                }
                let per_step = t.elapsed().as_secs_f64() / steps as f64;
                let slot = if k == 0 { &mut best[li] } else { &mut other[k - 1][li] };
                *slot = slot.min(per_step);
            }
        }
    }
    g.set_expert_grouping(ExpertGrouping::WhenItPays);
    for (li, &n) in levels.iter().enumerate() {
        if n > 1 {
            println!("{n:>3} sequences, expert pairs always grouped by expert: {:.3} ms/step, always one by one: {:.3} ms/step (grouped {:.2}x faster)", other[0][li] * 1e3, other[1][li] * 1e3, other[1][li] / other[0][li]);
        }
    }
    if std::env::var_os("ODMOE_BENCH_PROFILE").is_none() {
        return;
    }
    // `ODMOE_BENCH_PROFILE=1`: where one step's time goes at each level: this thread's
    // time on a CPU (recording, submitting, waiting) and the device time per kernel (one
    // pass per dispatch, so small kernels look slower than they are)
    let on_cpu = || std::fs::read_to_string("/proc/thread-self/schedstat").ok().and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok()).unwrap_or(0);
    for &n in levels {
        let mut caches: Vec<_> = (0..n).map(|_| g.new_cache(steps + 2)).collect();
        for (i, c) in caches.iter_mut().enumerate() {
            g.forward(&[1, (10 + i as u32) % vocab], c, Logits::Last).unwrap();
        }
        let mut step = |s: usize| {
            let toks: Vec<[u32; 1]> = (0..n).map(|i| token(s, i)).collect();
            let mut seqs: Vec<GpuSequence> = caches.iter_mut().zip(&toks).map(|(c, t)| GpuSequence { tokens: t, cache: c, logits: Logits::Last }).collect();
            g.forward_batch(&mut seqs).unwrap();
        };
        step(0);
        let (t, cpu0) = (std::time::Instant::now(), on_cpu());
        step(1);
        let (wall, cpu) = (t.elapsed().as_secs_f64() * 1e3, (on_cpu() - cpu0) as f64 / 1e6);
        g.set_profiling(true);
        step(2);
        let mut report = g.take_profile().unwrap_or_default();
        g.set_profiling(false);
        report.sort_by(|a, b| b.1.total_cmp(&a.1));
        let device: f64 = report.iter().map(|e| e.1).sum::<f64>() / 1e6;
        let top: Vec<String> = report.iter().take(10).map(|(k, ns, c)| format!("{k} {:.2} ms/{c}", ns / 1e6)).collect();
        println!("{n:>3} sequences, one step: {wall:.2} ms, {cpu:.2} ms of it on this thread's CPU; profiled device time {device:.2} ms: {}", top.join(", "));
    }
}

#[cfg(not(feature = "gpu"))]
fn gpu_levels(_: &Model, _: &[usize], _: usize, _: usize, _: &dyn Fn(usize, usize) -> [u32; 1], _: &mut [f64]) {
    panic!("built without the gpu feature");
}
