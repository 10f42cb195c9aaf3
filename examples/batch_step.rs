use odmoe::model::{Logits, Model, Sequence};
fn main() {
    let m = Model::open("models/odmoe-demo-shakespeare-Q8_0.gguf").unwrap();
    let n: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let mut caches: Vec<_> = (0..n).map(|_| m.new_cache(1024)).collect();
    for (i, c) in caches.iter_mut().enumerate() { m.forward(&[1, 10 + i as u32], c, Logits::Last).unwrap(); }
    let t = std::time::Instant::now();
    let steps = 256;
    for s in 0..steps {
        let toks: Vec<[u32;1]> = (0..n).map(|i| [((s * 7 + i * 13) % 4000) as u32]).collect();
        let mut seqs: Vec<Sequence> = caches.iter_mut().zip(&toks).map(|(c, t)| Sequence { tokens: t, cache: c, logits: Logits::Last }).collect();
        m.forward_batch(&mut seqs).unwrap();
    }
    let dt = t.elapsed().as_secs_f64();
    println!("n={n}: {:.3} ms/step, {:.0} tokens/s", dt / steps as f64 * 1e3, (steps * n) as f64 / dt);
}
