//! Fused dequant-dot products per weight format, on the thread pool.
//!
//! - `memory`: one token through a 57344 × 4096 matrix (larger than the last-level cache
//!   even for Q2_K), next to a plain streaming read of the same bytes on the same
//!   threads; the ratio GEMV / read is the number to watch (target ≥ 0.7).
//! - `cache 1` / `cache 16`: one and sixteen tokens through a 2048 × 768 matrix that stays
//!   in cache, where arithmetic rather than reading bounds the product (multiply-adds
//!   per second).
//!
//! Where the CPU has AVX-512 VNNI the packed layout that resident weights get is timed
//! beside the file's layout (`packed`); `ODMOE_NO_VNNI=1` times the AVX2 kernels alone,
//! `ODMOE_NO_SIMD=1` the portable ones. The variants of a row take turns,
//! `ODMOE_BENCH_REPS` rounds (default 9), and each reports its median round: on a shared
//! machine whose memory bandwidth drifts, only figures of the same run compare.
//! `ODMOE_BENCH_TYPES=Q8_0,Q4_K` limits the formats.
//!
//! Run: `cargo bench --bench gemv`

use std::hint::black_box;
use std::time::Instant;

use odmoe::compute::{cpu, QMatrix};
use odmoe::quant::GgmlType;
use rayon::prelude::*;

// 4 × 14336 rows: 4 × larger than a 32 MiB last-level cache even for Q4_K.
const ROWS: usize = 4 * 14336;
const COLS: usize = 4096;

/// Deterministic pseudo-random blocks of `ty` with finite, modest f16 scales.
fn random_matrix(ty: GgmlType, rows: usize, cols: usize) -> QMatrix {
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    let mut data = vec![0u8; rb * rows];
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in data.iter_mut() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *b = s as u8;
    }
    if ty == GgmlType::F16 {
        // plain halves: clear the top exponent bits, so every value is finite and modest
        for h in data.chunks_exact_mut(2) {
            h[1] &= 0x3b;
        }
        return QMatrix::new(ty, rows, cols, data.into());
    }
    if ty == GgmlType::BF16 {
        // exponents 120..=127 (values 2^-7..2: no subnormals, which the CPU multiplies
        // many times slower and trained weights do not hold), random signs and mantissas
        for h in data.chunks_exact_mut(2) {
            h[1] = (h[1] & 0x83) | 0x3c;
        }
        return QMatrix::new(ty, rows, cols, data.into());
    }
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    let (bsz, offsets): (usize, &[usize]) = match ty {
        GgmlType::Q8_0 => (34, &[0]),
        GgmlType::Q4_K => (144, &[0, 2]),
        GgmlType::Q5_K => (176, &[0, 2]),
        GgmlType::Q2_K => (84, &[80, 82]),
        GgmlType::Q3_K => (110, &[108]),
        GgmlType::Q6_K => (210, &[208]),
        _ => unreachable!(),
    };
    for blk in data.chunks_exact_mut(bsz) {
        for &o in offsets {
            blk[o..o + 2].copy_from_slice(&scale);
        }
    }
    QMatrix::new(ty, rows, cols, data.into())
}

fn streaming_read(bytes: &[u8]) -> u64 {
    bytes
        .par_chunks(1 << 20)
        .map(|c| {
            let mut acc = [0u64; 8];
            for w in c.chunks_exact(64) {
                for i in 0..8 {
                    acc[i] = acc[i].wrapping_add(u64::from_le_bytes(w[8 * i..8 * i + 8].try_into().unwrap()));
                }
            }
            acc.iter().fold(0, |a, b| a ^ b)
        })
        .reduce(|| 0, |a, b| a ^ b)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs each of `variants` `reps` times per round, the variants taking turns, for
/// `rounds` rounds; returns each variant's median seconds per call.
fn take_turns(variants: &mut [&mut dyn FnMut()], reps: usize, rounds: usize) -> Vec<f64> {
    let mut times = vec![Vec::new(); variants.len()];
    for f in variants.iter_mut() {
        f(); // warm up: page in, fill caches
    }
    for _ in 0..rounds {
        for (i, f) in variants.iter_mut().enumerate() {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            times[i].push(t.elapsed().as_secs_f64() / reps as f64);
        }
    }
    times.iter_mut().map(|t| median(t)).collect()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse
    let rounds: usize = std::env::var("ODMOE_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(9);
    let types: Vec<GgmlType> = match std::env::var("ODMOE_BENCH_TYPES") {
        Ok(v) => v.split(',').map(|t| GgmlType::from_name(t.trim()).expect("a GGML type name")).collect(),
        Err(_) => vec![GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::F16, GgmlType::BF16],
    };
    let layout = if odmoe::quant::packing_available() { "AVX-512 VNNI" } else if std::env::var_os("ODMOE_NO_SIMD").is_some() { "portable" } else { "AVX2" };
    println!("Kernels: {layout}, {} threads, median of {rounds} rounds. `memory`: one token, GB/s (and ÷ the streaming read of the same bytes); `cache N`: N tokens, G multiply-adds/s.\n", rayon::current_num_threads());
    println!("| format | case | streaming read | file layout | ÷ read | packed | ÷ read |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for &ty in &types {
        let m = random_matrix(ty, ROWS, COLS);
        let x: Vec<f32> = (0..COLS).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let mut packed = m.clone();
        packed.pack();
        let bytes = m.data.len() as f64;
        let t = if packed.packed.is_some() {
            take_turns(&mut [&mut || { black_box(streaming_read(&m.data)); }, &mut || drop(black_box(cpu::matmul(&m, &x))), &mut || drop(black_box(cpu::matmul(&packed, &x)))], 2, rounds)
        } else {
            take_turns(&mut [&mut || { black_box(streaming_read(&m.data)); }, &mut || drop(black_box(cpu::matmul(&m, &x)))], 2, rounds)
        };
        let gbs = |s: f64| bytes / s / 1e9;
        let packed_cols = t.get(2).map_or("– | –".to_string(), |&p| format!("{:.1} | {:.2}", gbs(p), t[0] / p));
        println!("| {ty} | memory | {:.1} | {:.1} | {:.2} | {packed_cols} |", gbs(t[0]), gbs(t[1]), t[0] / t[1]);
        drop((m, packed));
        // in cache: an expert-sized matrix, one token and sixteen
        let (rows, cols) = (2048, 768);
        let m = random_matrix(ty, rows, cols);
        let mut packed = m.clone();
        packed.pack();
        for n in [1usize, 16] {
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let reps = if n == 1 { 400 } else { 40 };
            let t = if packed.packed.is_some() {
                take_turns(&mut [&mut || drop(black_box(cpu::matmul(&m, &x))), &mut || drop(black_box(cpu::matmul(&packed, &x)))], reps, rounds)
            } else {
                take_turns(&mut [&mut || drop(black_box(cpu::matmul(&m, &x)))], reps, rounds)
            };
            let gmacs = |s: f64| (rows * cols * n) as f64 / s / 1e9;
            let packed_cols = t.get(1).map_or("–".to_string(), |&p| format!("{:.1}", gmacs(p)));
            println!("| {ty} | cache {n} | | {:.1} | | {packed_cols} | |", gmacs(t[0]));
        }
    }
}
