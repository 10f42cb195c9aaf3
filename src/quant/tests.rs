//! Fused dot products agree with "dequantize both sides, then dot in f64" for every block
//! format, on random blocks. (Dequantization itself is checked bit for bit against
//! gguf-py on real files in `tests/quant_dequant.rs`.)

#![allow(clippy::needless_range_loop)] // index loops mirror the block layouts

use super::blocks::{ActQ8_0, ActQ8_K};
use super::*;

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

/// Random blocks of `ty` with finite, modest f16 scales at the given byte offsets.
pub(crate) fn random_row(ty: GgmlType, cols: usize, seed: u64) -> Vec<u8> {
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    let mut b = random_bytes(rb, seed);
    let scale_offsets: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        GgmlType::F16 => {
            for c in b.chunks_exact_mut(2) {
                c.copy_from_slice(&half::f16::from_f32((c[0] as f32 - 128.0) / 64.0).to_le_bytes());
            }
            return b;
        }
        GgmlType::BF16 => {
            for c in b.chunks_exact_mut(2) {
                c.copy_from_slice(&half::bf16::from_f32((c[0] as f32 - 128.0) / 64.0).to_le_bytes());
            }
            return b;
        }
        _ => unreachable!(),
    };
    let bs = ty.type_size();
    for (i, blk) in b.chunks_exact_mut(bs).enumerate() {
        for (k, &o) in scale_offsets.iter().enumerate() {
            let v = 0.01 + 0.003 * ((i + k) % 7) as f32;
            blk[o..o + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    b
}

fn deq_act_q8_0(a: &[ActQ8_0]) -> Vec<f64> {
    a.iter().flat_map(|b| b.qs.iter().map(move |&q| q as f64 * b.d as f64)).collect()
}

fn deq_act_q8_k(a: &[ActQ8_K]) -> Vec<f64> {
    a.iter().flat_map(|b| b.qs.iter().map(move |&q| q as f64 * b.d as f64)).collect()
}

#[test]
fn fused_dot_matches_dequantized_dot() {
    let cols = 512;
    let x: Vec<f32> = (0..cols).map(|i| ((i * 97 % 61) as f32 - 30.0) / 17.0).collect();
    for ty in [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        for seed in 1..6u64 {
            let row = random_row(ty, cols, seed * 7919);
            let mut w = vec![0.0f32; cols];
            dequantize(ty, &row, &mut w);
            let acts = Activations::new(ActKind::for_weights(ty), &x, cols);
            let got = dot(ty, &row, acts.row(0)) as f64;
            // The fused kernel multiplies by the quantized activations: so does the reference.
            let xa: Vec<f64> = match acts.row(0) {
                ActRow::F32(v) => v.iter().map(|&v| v as f64).collect(),
                ActRow::Q8_0(a) => deq_act_q8_0(a),
                ActRow::Q8K(a) => deq_act_q8_k(a),
            };
            let want: f64 = w.iter().zip(&xa).map(|(&a, &b)| a as f64 * b).sum();
            let mag: f64 = w.iter().zip(&xa).map(|(&a, &b)| (a as f64 * b).abs()).sum();
            assert!((got - want).abs() <= 1e-5 * mag.max(1e-3), "{ty} seed {seed}: fused {got} vs reference {want} (magnitude {mag})");
        }
    }
}

#[test]
fn activation_quantization_is_close() {
    let x: Vec<f32> = (0..256).map(|i| ((i * 31 % 53) as f32 - 26.0) / 9.0).collect();
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let k = quantize_q8_k(&x);
    for (q, v) in k.qs.iter().zip(&x) {
        assert!((*q as f32 * k.d - v).abs() <= amax / 127.0);
    }
    assert_eq!(k.bsums[3], k.qs[48..64].iter().map(|&q| q as i16).sum::<i16>());
    let b = quantize_q8_0(&x[..32]);
    for (q, v) in b.qs.iter().zip(&x[..32]) {
        assert!((*q as f32 * b.d - v).abs() <= 1.01 * b.d);
    }
}

#[test]
fn simd_rows_equal_portable_kernels_bit_for_bit() {
    // dot_rows takes the SIMD path where the CPU has one; dot is the portable kernel.
    // Every kernel scales and adds the blocks in one order (see dot.rs), so the same bits;
    // 13 rows: a group of eight and a padded one; 7 tokens: groups of four and the rest.
    let cols = 1024;
    let rows = 13;
    let n = 7;
    let x: Vec<f32> = (0..n * cols).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect();
    for ty in [GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q5_K, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::F32, GgmlType::F16] {
        let w: Vec<u8> = match ty {
            GgmlType::F32 => (0..rows * cols).flat_map(|i| (((i * 7) % 19) as f32 / 19.0 - 0.5).to_le_bytes()).collect(),
            _ => (0..rows).flat_map(|r| random_row(ty, cols, 31 + r as u64)).collect(),
        };
        let rb = ty.row_bytes(cols as u64).unwrap() as usize;
        let acts = Activations::new(ActKind::for_weights(ty), &x, cols);
        let mut out = vec![0.0f32; rows * n];
        dot_rows(ty, &w, rb, &acts, &mut out);
        for r in 0..rows {
            for t in 0..n {
                let want = dot(ty, &w[r * rb..(r + 1) * rb], acts.row(t));
                let got = out[r * n + t];
                assert_eq!(got.to_bits(), want.to_bits(), "{ty} row {r} token {t}: {got} vs {want}");
            }
        }
    }
}

#[test]
fn many_token_rows_equal_one_token_rows_bit_for_bit() {
    // several tokens at once (the batched kernels take four at a time) give each token
    // exactly what it gets alone; odd block counts cover the kernels' tails
    for cols in [288usize, 1024] {
        let n = 7;
        let x: Vec<f32> = (0..n * cols).map(|i| ((i * 17 % 31) as f32 - 15.0) / 9.0).collect();
        for ty in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
            if !cols.is_multiple_of(ty.block_size()) {
                continue;
            }
            let rows = 3;
            let w: Vec<u8> = (0..rows).flat_map(|r| random_row(ty, cols, 7 + r as u64)).collect();
            let rb = ty.row_bytes(cols as u64).unwrap() as usize;
            let mut all = vec![0.0f32; rows * n];
            dot_rows(ty, &w, rb, &Activations::new(ActKind::for_weights(ty), &x, cols), &mut all);
            for t in 0..n {
                let mut one = vec![0.0f32; rows];
                dot_rows(ty, &w, rb, &Activations::new(ActKind::for_weights(ty), &x[t * cols..(t + 1) * cols], cols), &mut one);
                for r in 0..rows {
                    assert_eq!(all[r * n + t].to_bits(), one[r].to_bits(), "{ty} cols {cols} row {r} token {t}");
                }
            }
        }
    }
}

#[test]
fn q3_k_scales_unpack_by_the_definition() {
    for seed in 0..300 {
        let s: [u8; 12] = random_bytes(12, seed).try_into().unwrap();
        let got = crate::quant::dequant::q3k_scales(&s);
        for i in 0..16 {
            // llama.cpp's layout, one scale at a time
            let low = if i < 8 { s[i] & 0x0F } else { s[i - 8] >> 4 };
            let high = (s[8 + (i % 4)] >> (2 * (i / 4))) & 0x03;
            assert_eq!(got[i], ((low | (high << 4)) as i8).wrapping_sub(32), "scale {i} of {s:?}");
        }
    }
}

#[test]
fn half_float_rows_equal_the_portable_kernel_bit_for_bit() {
    // rows in fours and a remainder; widths with and without a tail past the last eight
    for ty in [GgmlType::F16, GgmlType::BF16] {
        for cols in [1024usize, 1003] {
            let (rows, n) = (7, 3);
            let v = |i: usize| ((i * 7919 % 2003) as f32 - 1001.0) / 517.0;
            let w: Vec<u8> = match ty {
                GgmlType::F16 => (0..rows * cols).flat_map(|i| half::f16::from_f32(v(i)).to_le_bytes()).collect(),
                _ => (0..rows * cols).flat_map(|i| half::bf16::from_f32(v(i)).to_le_bytes()).collect(),
            };
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect();
            let rb = ty.row_bytes(cols as u64).unwrap() as usize;
            let acts = Activations::new(ActKind::F32, &x, cols);
            let mut out = vec![0.0f32; rows * n];
            dot_rows(ty, &w, rb, &acts, &mut out);
            for r in 0..rows {
                for t in 0..n {
                    let want = dot(ty, &w[r * rb..(r + 1) * rb], acts.row(t));
                    assert_eq!(out[r * n + t].to_bits(), want.to_bits(), "{ty} cols {cols} row {r} token {t}");
                }
            }
        }
    }
}
