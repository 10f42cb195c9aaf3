//! How an expert's product slows as more of a step's tokens route to it: packed Q8_0
//! matrices of a Mixtral-shaped expert's gate and up (3584 × 1024 each, multiplied
//! together as the model does) times 1 to 8 tokens, on the thread pool, streamed from
//! memory (`ODMOE_BENCH_EXPERTS` pairs, default 32: 250 MB, beyond the last-level cache)
//! and from the last-level cache (two pairs, 16 MB, repeated).
//!
//! Why: one token's decode step reads two experts of eight per layer, a 16-token step
//! every expert, with about four tokens each (Binomial(16, 1/4)). If an expert's read
//! cost the same whatever its tokens, 16 sessions would gain what the bytes allow (4.4×
//! on the Mixtral-shaped model); the table says what the tokens cost on top, and the
//! last lines weigh it by how many tokens an expert gets when `n` tokens each pick `k` of
//! `e` experts at random (each expert's count is then Binomial(n, k/e)).
//!
//! The token counts take turns, `ODMOE_BENCH_REPS` rounds (default 15), and each reports
//! its median round. `cargo bench --bench expert_tokens`.

use odmoe::compute::{cpu, QMatrix};
use odmoe::quant::GgmlType;

const COLS: usize = 1024;

/// Deterministic pseudo-random Q8_0 rows with a modest scale, packed.
fn matrix(rows: usize, seed: u64) -> QMatrix {
    let rb = GgmlType::Q8_0.row_bytes(COLS as u64).unwrap() as usize;
    let mut data = vec![0u8; rb * rows];
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    for b in data.iter_mut() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *b = s as u8;
    }
    for blk in data.chunks_exact_mut(34) {
        blk[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
    }
    let mut m = QMatrix::new(GgmlType::Q8_0, rows, COLS, data.into());
    m.pack();
    m
}

/// Seconds to multiply every pair `reps` times by `x`, the gate and up of an expert
/// together (one parallel loop over both, as the model runs them).
fn pass(pairs: &[(QMatrix, QMatrix)], x: &[f32], reps: usize) -> f64 {
    let t = std::time::Instant::now();
    for _ in 0..reps {
        for (g, u) in pairs {
            std::hint::black_box(cpu::matmul_many([g, u], x));
        }
    }
    t.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// P(X = t) for X ~ Binomial(n, p).
fn binomial(n: usize, p: f64, t: usize) -> f64 {
    let choose = (0..t).fold(1.0, |c, i| c * (n - i) as f64 / (i + 1) as f64);
    choose * p.powi(t as i32) * (1.0 - p).powi((n - t) as i32)
}

fn main() {
    if !odmoe::quant::packing_available() {
        println!("skipped: this CPU has no AVX-512 VNNI (the packed kernels measured here)");
        return;
    }
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (experts, rounds) = (env("ODMOE_BENCH_EXPERTS", 32), env("ODMOE_BENCH_REPS", 15));
    let far: Vec<_> = (0..experts as u64).map(|i| (matrix(3584, 2 * i), matrix(3584, 2 * i + 1))).collect();
    let near: Vec<_> = (0..2).map(|i| (matrix(3584, 1000 + 2 * i), matrix(3584, 1001 + 2 * i))).collect();
    let bytes = |pairs: &[(QMatrix, QMatrix)]| pairs.iter().map(|(g, u)| g.data.len() + u.data.len()).sum::<usize>() as f64;
    // in-cache passes repeated to about the far passes' bytes
    let near_reps = (bytes(&far) / bytes(&near)).ceil() as usize;
    let tokens: Vec<usize> = (1..=8).collect();
    let (mut t_far, mut t_near) = (vec![Vec::new(); tokens.len()], vec![Vec::new(); tokens.len()]);
    for _ in 0..rounds {
        for (i, &t) in tokens.iter().enumerate() {
            let x: Vec<f32> = (0..t * COLS).map(|j| ((j * 17 % 31) as f32 - 15.0) / 9.0).collect();
            pass(&near, &x, 1);
            t_near[i].push(pass(&near, &x, near_reps));
            t_far[i].push(pass(&far, &x, 1));
        }
    }
    let far_s: Vec<f64> = t_far.iter_mut().map(|v| median(v)).collect();
    let near_s: Vec<f64> = t_near.iter_mut().map(|v| median(v)).collect();
    println!("| tokens | from memory | time vs 1 token | from the last-level cache | multiply-adds there |");
    println!("| --- | --- | --- | --- | --- |");
    for (i, &t) in tokens.iter().enumerate() {
        let gb_far = bytes(&far) / far_s[i] / 1e9;
        let gb_near = bytes(&near) * near_reps as f64 / near_s[i] / 1e9;
        // Q8_0: 34 bytes per 32 weights
        let macs = bytes(&near) * near_reps as f64 / 34.0 * 32.0 * t as f64 / near_s[i] / 1e9;
        println!("| {t} | {gb_far:.1} GB/s | {:.2}× | {gb_near:.1} GB/s | {macs:.0} G/s |", far_s[i] / far_s[0]);
    }
    // an expert's expected read time, relative to one token's, when n tokens each pick k
    // of e experts (an expert with no token is not read; more than 8 tokens, rare here,
    // are counted as passes of 8)
    let cost = |t: usize| if t <= 8 { far_s[t - 1] / far_s[0] } else { t as f64 / 8.0 * far_s[7] / far_s[0] };
    for (n, k, e) in [(4usize, 2usize, 8usize), (16, 2, 8), (16, 8, 128)] {
        let p = k as f64 / e as f64;
        let read: f64 = (1..=n).map(|t| binomial(n, p, t)).sum();
        let time: f64 = (1..=n).map(|t| binomial(n, p, t) * cost(t)).sum();
        println!("{n} tokens, {k} of {e} experts each: {:.0}% of experts read, each taking {:.2}x a one-token read on average", read * 100.0, time / read);
    }
}
