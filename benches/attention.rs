//! Attention over one key-value head's cache: its four query heads one at a time
//! (`attend_head`) against all four at once (`attend_group`, each key and value read once
//! for the group), at 150, 2,000 and 8,000 positions (head size 64, four key-value heads
//! interleaved as in the cache), one thread, best of five rounds.
//! `cargo bench --bench attention`.

use odmoe::compute::cpu::{attend_group, attend_head};
fn main() {
    let (hd, nkv, g) = (64usize, 4usize, 4usize);
    let stride = nkv * hd;
    for len in [150usize, 2000, 8000] {
        let k: Vec<f32> = (0..len * stride).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01).collect();
        let v: Vec<f32> = (0..len * stride).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.01).collect();
        let q: Vec<f32> = (0..g * hd).map(|i| (i as f32 - 30.0) * 0.02).collect();
        let mut scores = Vec::new();
        let mut out = vec![0.0f32; g * hd];
        let (mut best1, mut best2) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..5 {
            let iters = 4_000_000 / len;
            let t = std::time::Instant::now();
            for i in 0..iters {
                let h = i % nkv;
                for j in 0..g {
                    attend_head(&q[j * hd..(j + 1) * hd], &k[h * hd..], stride, &v[h * hd..], stride, len, 0.125, &mut scores, &mut out[j * hd..(j + 1) * hd]);
                }
                std::hint::black_box(&out);
            }
            best1 = best1.min(t.elapsed().as_secs_f64() / iters as f64);
            let t = std::time::Instant::now();
            for i in 0..iters {
                let h = i % nkv;
                attend_group(&q, g, &k[h * hd..], stride, &v[h * hd..], stride, len, 0.125, &mut scores, &mut out);
                std::hint::black_box(&out);
            }
            best2 = best2.min(t.elapsed().as_secs_f64() / iters as f64);
        }
        println!("len {len}: head by head {:.2} ns per position-head, grouped {:.2} ({:.2}x)", best1 * 1e9 / (len * g) as f64, best2 * 1e9 / (len * g) as f64, best1 / best2);
    }
}
