//! Fused dequant-dot GEMV throughput (Q8_0, Q4_K, Q5_K, Q6_K, Q2_K, Q3_K, F16, BF16) on a 4096 × 14336 matrix (larger
//! than the last-level cache), next to a plain streaming read of the same bytes on the
//! same threads. Criterion reports bytes/s for each; the ratio GEMV / read is the number
//! to watch (target ≥ 0.7). Where the CPU has AVX-512 VNNI, each is also timed in the
//! interleaved layout resident weights are packed into (`gemv_packed`), and sixteen
//! tokens through a cache-resident 2048 × 768 matrix in both layouts (`batch16_*`, Q5_K
//! too; multiply-adds per second).
//!
//! Run: `cargo bench --bench gemv`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use odmoe::compute::{cpu, QMatrix};
use odmoe::quant::GgmlType;
use rayon::prelude::*;

// 4 × 14336 rows: 4 × larger than the 32 MiB last-level cache even for Q4_K.
const ROWS: usize = 4 * 14336;
const COLS: usize = 4096;

/// Deterministic pseudo-random block bytes with finite, modest f16 scales.
fn random_matrix(ty: GgmlType) -> QMatrix {
    let rb = ty.row_bytes(COLS as u64).unwrap() as usize;
    let mut data = vec![0u8; rb * ROWS];
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in data.iter_mut() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *b = s as u8;
    }
    if matches!(ty, GgmlType::F16 | GgmlType::BF16) {
        // plain halves: clear the top exponent bits, so every value is finite and modest
        for h in data.chunks_exact_mut(2) {
            h[1] &= 0x3b;
        }
        return QMatrix::new(ty, ROWS, COLS, data.into());
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
    QMatrix::new(ty, ROWS, COLS, data.into())
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

fn bench(c: &mut Criterion) {
    let x: Vec<f32> = (0..COLS).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    for ty in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::F16, GgmlType::BF16] {
        let m = random_matrix(ty);
        let mut g = c.benchmark_group(format!("gemv_{ty}"));
        g.throughput(Throughput::Bytes(m.data.len() as u64));
        g.sample_size(20);
        g.bench_function("read", |b| b.iter(|| black_box(streaming_read(&m.data))));
        g.bench_function("gemv", |b| b.iter(|| black_box(cpu::matmul(&m, &x))));
        let mut packed = m.clone();
        packed.pack();
        if packed.packed.is_some() {
            // the interleaved layout resident weights get on AVX-512 VNNI CPUs
            g.bench_function("gemv_packed", |b| b.iter(|| black_box(cpu::matmul(&packed, &x))));
        }
        g.finish();
    }
    // batched steps: sixteen tokens through an expert-sized matrix (2048 × 768, in
    // cache), where arithmetic rather than reading bounds the product
    let (rows, cols, n) = (2048, 768, 16);
    let x: Vec<f32> = (0..n * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    for ty in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let full = random_matrix(ty);
        let m = full.slice_rows(0, rows * cols / COLS);
        let m = QMatrix::new(ty, rows, cols, m.data.clone());
        let mut g = c.benchmark_group(format!("batch16_{ty}"));
        g.throughput(Throughput::Elements((rows * cols * n) as u64));
        g.sample_size(30);
        g.bench_function("rows", |b| b.iter(|| black_box(cpu::matmul(&m, &x))));
        let mut packed = m.clone();
        packed.pack();
        if packed.packed.is_some() {
            g.bench_function("packed", |b| b.iter(|| black_box(cpu::matmul(&packed, &x))));
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
