//! Attention over one key-value head's cache: its four query heads one at a time
//! (`attend_head`) against all four at once (`attend_group`, each key and value read once
//! for the group), at 150, 2,000 and 8,000 positions (head size 64, four key-value heads
//! interleaved position by position), one thread, best of five rounds: the cache stays
//! in the processor's caches (so no position is marked cold). Then the caches of
//! sixteen sequences in memory, as when sixteen sessions decode (the weights streaming
//! through each step evict them): one layer's attention on the thread pool, the caches
//! laid out position by position (every head's slice of a row) or head by head (the
//! cache's layout: each head's positions one run), a 64 MiB read between layers,
//! median of 296 layers.
//! `cargo bench --bench attention`.

use odmoe::compute::cpu::{attend_group, attend_head};
use rayon::prelude::*;

fn main() {
    in_cache();
    for len in [100usize, 400] {
        in_memory(len);
    }
}

fn in_cache() {
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
                    attend_head(&q[j * hd..(j + 1) * hd], &k[h * hd..], stride, &v[h * hd..], stride, len, 0, 0.125, &mut scores, &mut out[j * hd..(j + 1) * hd]);
                }
                std::hint::black_box(&out);
            }
            best1 = best1.min(t.elapsed().as_secs_f64() / iters as f64);
            let t = std::time::Instant::now();
            for i in 0..iters {
                let h = i % nkv;
                attend_group(&q, g, &k[h * hd..], stride, &v[h * hd..], stride, len, 0, 0.125, &mut scores, &mut out);
                std::hint::black_box(&out);
            }
            best2 = best2.min(t.elapsed().as_secs_f64() / iters as f64);
        }
        println!("len {len}: head by head {:.2} ns per position-head, grouped {:.2} ({:.2}x)", best1 * 1e9 / (len * g) as f64, best2 * 1e9 / (len * g) as f64, best1 / best2);
    }
}

fn in_memory(len: usize) {
    let (seqs, layers, nkv, hd, g) = (16usize, 8usize, 4usize, 64usize, 4usize);
    let value = |i: usize, salt: usize| (((i * 7 + salt) % 13) as f32 - 6.0) * 0.01;
    // per (sequence, layer): keys and values, `len × nkv × hd` each, in either layout
    let caches: Vec<(Vec<f32>, Vec<f32>)> = (0..seqs * layers).map(|c| ((0..len * nkv * hd).map(|i| value(i, c)).collect(), (0..len * nkv * hd).map(|i| value(i, c + 1)).collect())).collect();
    let q: Vec<f32> = (0..nkv * g * hd).map(|i| (i as f32 - 30.0) * 0.002).collect();
    let evict = vec![1u64; 8 << 20];
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..40 {
        for l in 0..layers {
            for (layout, times) in times.iter_mut().enumerate() {
                std::hint::black_box(evict.par_chunks(1 << 16).map(|c| c.iter().sum::<u64>()).sum::<u64>());
                let t = std::time::Instant::now();
                let outs: Vec<Vec<f32>> = (0..seqs)
                    .into_par_iter()
                    .map(|s| {
                        let (k, v) = &caches[s * layers + l];
                        let (mut out, mut scores) = (vec![0.0f32; nkv * g * hd], Vec::new());
                        for h in 0..nkv {
                            // position-major: head h's slice of each row; head-major: head h's run
                            let (at, stride) = if layout == 0 { (h * hd, nkv * hd) } else { (h * len * hd, hd) };
                            attend_group(&q[h * g * hd..(h + 1) * g * hd], g, &k[at..], stride, &v[at..], stride, len, len, 0.125, &mut scores, &mut out[h * g * hd..(h + 1) * g * hd]);
                        }
                        out
                    })
                    .collect();
                std::hint::black_box(outs);
                if round >= 3 {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
    }
    let median = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let (rows, runs) = (median(&mut times[0]), median(&mut times[1]));
    let gb = (seqs * nkv * len * hd * 2 * 4) as f64 / 1e9;
    println!("16 sequences' caches in memory, {len} positions: one layer position-major {:.0} us ({:.1} GB/s), head-major {:.0} us ({:.1} GB/s)", rows * 1e6, gb / rows, runs * 1e6, gb / runs);
}
