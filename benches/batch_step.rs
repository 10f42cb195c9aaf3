//! Batched decode steps on the demo model: milliseconds per step and tokens/s for 1, 4, 16
//! and 64 sequences decoding together (`Model::forward_batch`, no server), to separate
//! the engine's batching gain from the server's. Contexts grow from 2 to 258 positions
//! over the 256 steps of each level. `cargo bench --bench batch_step`.

use odmoe::model::{Logits, Model, Sequence};

fn main() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/odmoe-demo-shakespeare-Q8_0.gguf");
    let m = Model::open(path).unwrap();
    let steps = 256;
    let mut single = None;
    for n in [1usize, 4, 16, 64] {
        let mut caches: Vec<_> = (0..n).map(|_| m.new_cache(1024)).collect();
        for (i, c) in caches.iter_mut().enumerate() {
            m.forward(&[1, 10 + i as u32], c, Logits::Last).unwrap();
        }
        let t = std::time::Instant::now();
        for s in 0..steps {
            let toks: Vec<[u32; 1]> = (0..n).map(|i| [((s * 7 + i * 13) % 4000) as u32]).collect();
            let mut seqs: Vec<Sequence> = caches.iter_mut().zip(&toks).map(|(c, t)| Sequence { tokens: t, cache: c, logits: Logits::Last }).collect();
            m.forward_batch(&mut seqs).unwrap();
        }
        let dt = t.elapsed().as_secs_f64();
        let rate = (steps * n) as f64 / dt;
        let single = *single.get_or_insert(rate);
        println!("{n:>3} sequences: {:.3} ms/step, {rate:.0} tokens/s, {:.2}x one sequence", dt / steps as f64 * 1e3, rate / single);
    }
}
