//! Fused dequantize-and-dot products of one weight row with one activation row.
//!
//! The integer parts follow llama.cpp's reference `ggml_vec_dot_*` routines (weights
//! times 8-bit activations, summed exactly in integers, scaled once per group), so the
//! results track llama.cpp closely. Loops are written so the compiler vectorizes them;
//! [`dot_rows`] compiles them once more with AVX2 enabled and picks that version at run
//! time when the CPU has it.
//!
//! **One order of float operations for every kernel.** Each block's integer sum `I` is
//! exact, so kernels can only differ in how they scale and add the blocks. All of them —
//! these portable loops, the AVX2 kernels, the packed AVX-512 VNNI kernels — do it the
//! same way, block after block: `acc = fma(I, d_w · d_a, acc)`, then for the formats with
//! a minimum or offset term a second `acc = fma(-M, m_w · d_a, acc)` ([`block_fma`]). So
//! a model gives the same bits on every CPU, whichever kernels it has: what the test
//! suite checks on one machine is what every machine computes, and an activation
//! rounded to 8 bits never lands on the other side of a tie because of the CPU (such a
//! step is 1/127 of a block's scale, and a random-weight model amplifies it).

#![allow(clippy::needless_range_loop)] // index loops mirror the block layouts

use super::activations::ActRow;
use super::blocks::*;
use super::dequant::{k4_scales_mins, q3k_scales};
use super::out_grid::OutGrid;
use super::GgmlType;

#[inline(always)]
fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let (wc, wr) = w.split_at(w.len() / L * L);
    let (xc, xr) = x.split_at(wc.len());
    for (a, b) in wc.chunks_exact(L).zip(xc.chunks_exact(L)) {
        for i in 0..L {
            acc[i] += a[i] * b[i];
        }
    }
    let mut s = 0.0;
    for (a, b) in wr.iter().zip(xr) {
        s += a * b;
    }
    acc.iter().sum::<f32>() + s
}

#[inline(always)]
fn dot_f32_bytes(w: &[u8], x: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    for (a, b) in w.chunks_exact(4 * L).zip(x.chunks_exact(L)) {
        for i in 0..L {
            acc[i] += f32::from_le_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]) * b[i];
        }
    }
    let done = x.len() / L * L;
    let mut s = 0.0;
    for i in done..x.len() {
        s += f32::from_le_bytes(w[4 * i..4 * i + 4].try_into().unwrap()) * x[i];
    }
    acc.iter().sum::<f32>() + s
}

#[inline(always)]
fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (a, b) in w.chunks_exact(16).zip(x.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += f16_le([a[2 * i], a[2 * i + 1]]) * b[i];
        }
    }
    let done = x.len() / 8 * 8;
    let mut s = 0.0;
    for i in done..x.len() {
        s += f16_le([w[2 * i], w[2 * i + 1]]) * x[i];
    }
    acc.iter().sum::<f32>() + s
}

/// A little-endian BF16 value's two bytes as an f32 (exact: a shift).
#[inline(always)]
fn bf(a: u8, b: u8) -> f32 {
    f32::from_bits((u16::from_le_bytes([a, b]) as u32) << 16)
}

#[inline(always)]
fn dot_bf16(w: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (a, b) in w.chunks_exact(16).zip(x.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += bf(a[2 * i], a[2 * i + 1]) * b[i];
        }
    }
    let done = x.len() / 8 * 8;
    let mut s = 0.0;
    for i in done..x.len() {
        s += bf(w[2 * i], w[2 * i + 1]) * x[i];
    }
    acc.iter().sum::<f32>() + s
}

#[inline(always)]
fn isum32(q: &[i8; 32], a: &[i8; 32]) -> i32 {
    let mut s = 0i32;
    for i in 0..32 {
        s += q[i] as i32 * a[i] as i32;
    }
    s
}

/// One block's step of every quantized dot product: `acc + i · scale` with one rounding
/// (see the module's doc). `f32::mul_add` is an instruction where the target has FMA and
/// a correctly rounded library call elsewhere: the same bits either way.
#[inline(always)]
pub(crate) fn block_fma(i: i32, scale: f32, acc: f32) -> f32 {
    (i as f32).mul_add(scale, acc)
}

#[inline(always)]
fn dot_q8_0(w: &[BlockQ8_0], a: &[ActQ8_0]) -> f32 {
    let mut s = 0.0f32;
    for (b, y) in w.iter().zip(a) {
        s = block_fma(isum32(&b.qs, &y.qs), f16_le(b.d) * y.d, s);
    }
    s
}

#[inline(always)]
fn nibbles(qs: &[u8; 16], offset: i8) -> [i8; 32] {
    let mut q = [0i8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0F) as i8 - offset;
        q[j + 16] = (qs[j] >> 4) as i8 - offset;
    }
    q
}

#[inline(always)]
fn fives(qs: &[u8; 16], qh: [u8; 4], offset: i8) -> [i8; 32] {
    let h = u32::from_le_bytes(qh);
    let mut q = [0i8; 32];
    for j in 0..16 {
        q[j] = ((qs[j] & 0x0F) | ((((h >> j) & 1) as u8) << 4)) as i8 - offset;
        q[j + 16] = ((qs[j] >> 4) | ((((h >> (j + 16)) & 1) as u8) << 4)) as i8 - offset;
    }
    q
}

#[inline(always)]
fn dot_q4_0(w: &[BlockQ4_0], a: &[ActQ8_0]) -> f32 {
    let mut s = 0.0f32;
    for (b, y) in w.iter().zip(a) {
        s = block_fma(isum32(&nibbles(&b.qs, 8), &y.qs), f16_le(b.d) * y.d, s);
    }
    s
}

#[inline(always)]
fn dot_q4_1(w: &[BlockQ4_1], a: &[ActQ8_0]) -> f32 {
    let mut s = 0.0f32;
    for (b, y) in w.iter().zip(a) {
        let i = isum32(&nibbles(&b.qs, 0), &y.qs);
        s = f16_le(b.m).mul_add(y.s, block_fma(i, f16_le(b.d) * y.d, s));
    }
    s
}

#[inline(always)]
fn dot_q5_0(w: &[BlockQ5_0], a: &[ActQ8_0]) -> f32 {
    let mut s = 0.0f32;
    for (b, y) in w.iter().zip(a) {
        s = block_fma(isum32(&fives(&b.qs, b.qh, 16), &y.qs), f16_le(b.d) * y.d, s);
    }
    s
}

#[inline(always)]
fn dot_q5_1(w: &[BlockQ5_1], a: &[ActQ8_0]) -> f32 {
    let mut s = 0.0f32;
    for (b, y) in w.iter().zip(a) {
        let i = isum32(&fives(&b.qs, b.qh, 0), &y.qs);
        s = f16_le(b.m).mul_add(y.s, block_fma(i, f16_le(b.d) * y.d, s));
    }
    s
}

#[inline(always)]
fn dot_q2_k(w: &[BlockQ2_K], a: &[ActQ8_K]) -> f32 {
    let mut sumf = 0.0f32;
    for (b, y) in w.iter().zip(a) {
        let mut summs = 0i32;
        for j in 0..16 {
            summs += (b.scales[j] >> 4) as i32 * y.bsums[j] as i32;
        }
        let mut isum = 0i32;
        for g in 0..16 {
            let (half, s, l0) = (g / 8, (g % 8) / 2, (g % 2) * 16);
            let mut t = 0i32;
            for l in 0..16 {
                let q = (b.qs[half * 32 + l0 + l] >> (2 * s)) & 3;
                t += q as i32 * y.qs[g * 16 + l] as i32;
            }
            isum += (b.scales[g] & 0x0F) as i32 * t;
        }
        sumf = block_fma(-summs, f16_le(b.dmin) * y.d, block_fma(isum, f16_le(b.d) * y.d, sumf));
    }
    sumf
}

#[inline(always)]
fn dot_q3_k(w: &[BlockQ3_K], a: &[ActQ8_K]) -> f32 {
    let mut sumf = 0.0f32;
    for (b, y) in w.iter().zip(a) {
        let scales = q3k_scales(&b.scales);
        let mut q = [0i8; 256];
        for half in 0..2 {
            for s in 0..4 {
                for l in 0..32 {
                    let low = ((b.qs[half * 32 + l] >> (2 * s)) & 3) as i8;
                    let hbit = (b.hmask[l] >> (half * 4 + s)) & 1;
                    q[half * 128 + s * 32 + l] = low - (((hbit ^ 1) << 2) as i8);
                }
            }
        }
        let mut isum = 0i32;
        for g in 0..16 {
            let mut t = 0i32;
            for l in 0..16 {
                t += q[g * 16 + l] as i32 * y.qs[g * 16 + l] as i32;
            }
            isum += scales[g] as i32 * t;
        }
        sumf = block_fma(isum, f16_le(b.d) * y.d, sumf);
    }
    sumf
}

/// The shared body of Q4_K and Q5_K: `quant(j, l)` gives the two weights of byte `l` in
/// chunk `j` (group `2j` and group `2j+1`), both unsigned; `acc` plus the super-block.
#[inline(always)]
fn dot_k4_family(d: [u8; 2], dmin: [u8; 2], scales: &[u8; 12], y: &ActQ8_K, acc: f32, quant: impl Fn(usize, usize) -> (u8, u8)) -> f32 {
    let (sc, m) = k4_scales_mins(scales);
    let mut mins = 0i32;
    for j in 0..8 {
        mins += m[j] as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
    }
    let mut isum = 0i32;
    for j in 0..4 {
        let (mut lo, mut hi) = (0i32, 0i32);
        for l in 0..32 {
            let (q0, q1) = quant(j, l);
            lo += q0 as i32 * y.qs[j * 64 + l] as i32;
            hi += q1 as i32 * y.qs[j * 64 + 32 + l] as i32;
        }
        isum += sc[2 * j] as i32 * lo + sc[2 * j + 1] as i32 * hi;
    }
    block_fma(-mins, f16_le(dmin) * y.d, block_fma(isum, f16_le(d) * y.d, acc))
}

#[inline(always)]
fn dot_q4_k(w: &[BlockQ4_K], a: &[ActQ8_K]) -> f32 {
    let mut sumf = 0.0f32;
    for (b, y) in w.iter().zip(a) {
        sumf = dot_k4_family(b.d, b.dmin, &b.scales, y, sumf, |j, l| {
            let q = b.qs[j * 32 + l];
            (q & 0x0F, q >> 4)
        });
    }
    sumf
}

#[inline(always)]
fn dot_q5_k(w: &[BlockQ5_K], a: &[ActQ8_K]) -> f32 {
    let mut sumf = 0.0f32;
    for (b, y) in w.iter().zip(a) {
        sumf = dot_k4_family(b.d, b.dmin, &b.scales, y, sumf, |j, l| {
            let (q, h) = (b.qs[j * 32 + l], b.qh[l]);
            ((q & 0x0F) | (((h >> (2 * j)) & 1) << 4), (q >> 4) | (((h >> (2 * j + 1)) & 1) << 4))
        });
    }
    sumf
}

#[inline(always)]
fn dot_q6_k(w: &[BlockQ6_K], a: &[ActQ8_K]) -> f32 {
    let mut sumf = 0.0f32;
    for (b, y) in w.iter().zip(a) {
        let mut isum = 0i32;
        for half in 0..2 {
            let ql = &b.ql[half * 64..half * 64 + 64];
            let qh = &b.qh[half * 32..half * 32 + 32];
            let ys = &y.qs[half * 128..half * 128 + 128];
            let mut t = [0i32; 8];
            for l in 0..32 {
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                let g = l / 16;
                t[g] += q1 * ys[l] as i32;
                t[2 + g] += q2 * ys[l + 32] as i32;
                t[4 + g] += q3 * ys[l + 64] as i32;
                t[6 + g] += q4 * ys[l + 96] as i32;
            }
            for (k, &tk) in t.iter().enumerate() {
                // group k covers 16 values starting at half*128 + (k/2)*32 + (k%2)*16
                isum += b.scales[half * 8 + k] as i32 * tk;
            }
        }
        sumf = block_fma(isum, f16_le(b.d) * y.d, sumf);
    }
    sumf
}

/// Dot product of one weight row (`w`, in format `ty`) with one activation row.
#[inline(always)]
pub fn dot(ty: GgmlType, w: &[u8], x: ActRow<'_>) -> f32 {
    fn b<B: Block>(w: &[u8]) -> &[B] {
        as_blocks(w).expect("whole blocks")
    }
    match (ty, x) {
        (GgmlType::F32, ActRow::F32(x)) => {
            if (w.as_ptr() as usize).is_multiple_of(4) {
                // SAFETY: aligned, length checked by the caller's row size, f32 has no invalid bits.
                let wf = unsafe { std::slice::from_raw_parts(w.as_ptr() as *const f32, w.len() / 4) };
                if cfg!(target_endian = "little") {
                    return dot_f32(wf, x);
                }
            }
            dot_f32_bytes(w, x)
        }
        (GgmlType::F16, ActRow::F32(x)) => dot_f16(w, x),
        (GgmlType::BF16, ActRow::F32(x)) => dot_bf16(w, x),
        (GgmlType::Q8_0, ActRow::Q8_0(a)) => dot_q8_0(b(w), a),
        (GgmlType::Q4_0, ActRow::Q8_0(a)) => dot_q4_0(b(w), a),
        (GgmlType::Q4_1, ActRow::Q8_0(a)) => dot_q4_1(b(w), a),
        (GgmlType::Q5_0, ActRow::Q8_0(a)) => dot_q5_0(b(w), a),
        (GgmlType::Q5_1, ActRow::Q8_0(a)) => dot_q5_1(b(w), a),
        (GgmlType::Q2_K, ActRow::Q8K(a)) => dot_q2_k(b(w), a),
        (GgmlType::Q3_K, ActRow::Q8K(a)) => dot_q3_k(b(w), a),
        (GgmlType::Q4_K, ActRow::Q8K(a)) => dot_q4_k(b(w), a),
        (GgmlType::Q5_K, ActRow::Q8K(a)) => dot_q5_k(b(w), a),
        (GgmlType::Q6_K, ActRow::Q8K(a)) => dot_q6_k(b(w), a),
        (ty, _) => panic!("dot: no kernel for {ty} with these activations"),
    }
}

#[inline(always)]
fn dot_rows_body(ty: GgmlType, rows: &[u8], row_bytes: usize, acts: &super::Activations, out: &mut OutGrid) {
    let n = acts.n_rows();
    for (r, w) in rows.chunks_exact(row_bytes).enumerate() {
        for t in 0..n {
            out.set(r, t, dot(ty, w, acts.row(t)));
        }
    }
}

/// Q8_0 rows times every token: eight rows at a time (the last group padded with its own
/// last row), up to four tokens at a time, with the VNNI kernel where the CPU has it
/// (the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_q8_0(rows: &[u8], row_bytes: usize, acts: &super::Activations, out: &mut OutGrid) {
    use super::dot_avx2::dot_q8_0_rows;
    use super::dot_vnni::dot_q8_0_rows_vnni;
    let n = acts.n_rows();
    let vnni = has_vnni();
    let w: Vec<&[BlockQ8_0]> = rows.chunks_exact(row_bytes).map(|w| as_blocks(w).expect("whole blocks")).collect();
    let a = |t: usize| acts.q8_0_row(t);
    let u = |t: usize| acts.row_unsigned(t);
    fn put<const T: usize>(out: &mut OutGrid, r0: usize, real: usize, t0: usize, z: &[[f32; 8]; T]) {
        for (t, z) in z.iter().enumerate() {
            for (r, &v) in z[..real].iter().enumerate() {
                out.set(r0 + r, t0 + t, v);
            }
        }
    }
    for r0 in (0..w.len()).step_by(8) {
        let real = (w.len() - r0).min(8);
        let rs: [&[BlockQ8_0]; 8] = std::array::from_fn(|i| w[r0 + i.min(real - 1)]);
        let mut t = 0;
        // tokens t + k for each k given
        macro_rules! tile {
            ($($k:literal),+) => {{
                // SAFETY: the VNNI features were detected (has_vnni); AVX2 by the caller.
                let z = if vnni { dot_q8_0_rows_vnni(rs, [$(a(t + $k)),+], [$(u(t + $k)),+]) } else { dot_q8_0_rows(rs, [$(a(t + $k)),+]) };
                put(out, r0, real, t, &z);
            }};
        }
        while t + 4 <= n {
            tile!(0, 1, 2, 3);
            t += 4;
        }
        match n - t {
            3 => tile!(0, 1, 2),
            2 => tile!(0, 1),
            1 => tile!(0),
            _ => {}
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn dot_rows_avx2(ty: GgmlType, rows: &[u8], row_bytes: usize, acts: &super::Activations, out: &mut OutGrid) {
    use super::dot_avx2 as k;
    fn b<B: Block>(w: &[u8]) -> &[B] {
        as_blocks(w).expect("whole blocks")
    }
    let n = acts.n_rows();
    match ty {
        GgmlType::Q8_0 => dot_rows_q8_0(rows, row_bytes, acts, out),
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K if n >= 2 => {
            // a row's super-blocks unpacked once for up to four tokens
            let row = |t: usize| match acts.row(t) {
                ActRow::Q8K(a) => a,
                _ => unreachable!("K-quant weights take Q8_K activations"),
            };
            fn tokens<const T: usize>(ty: GgmlType, w: &[u8], a: [&[ActQ8_K]; T]) -> [f32; T] {
                // SAFETY: reached only from dot_rows_avx2, after the CPU features were checked.
                unsafe {
                    match ty {
                        GgmlType::Q4_K => super::dot_avx2::dot_q4_k_tokens(b(w), a),
                        GgmlType::Q5_K => super::dot_avx2::dot_q5_k_tokens(b(w), a),
                        _ => super::dot_avx2::dot_q6_k_tokens(b(w), a),
                    }
                }
            }
            for (r, w) in rows.chunks_exact(row_bytes).enumerate() {
                let mut t = 0;
                let mut put = |t: usize, ys: &[f32]| {
                    for (i, &v) in ys.iter().enumerate() {
                        out.set(r, t + i, v);
                    }
                };
                while t + 4 <= n {
                    put(t, &tokens(ty, w, [row(t), row(t + 1), row(t + 2), row(t + 3)]));
                    t += 4;
                }
                match n - t {
                    3 => put(t, &tokens(ty, w, [row(t), row(t + 1), row(t + 2)])),
                    2 => put(t, &tokens(ty, w, [row(t), row(t + 1)])),
                    1 => put(t, &tokens(ty, w, [row(t)])),
                    _ => {}
                }
            }
        }
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            for (r, w) in rows.chunks_exact(row_bytes).enumerate() {
                for t in 0..n {
                    let v = match (ty, acts.row(t)) {
                        (GgmlType::Q2_K, ActRow::Q8K(a)) => k::dot_q2_k(b(w), a),
                        (GgmlType::Q3_K, ActRow::Q8K(a)) => k::dot_q3_k(b(w), a),
                        (GgmlType::Q4_K, ActRow::Q8K(a)) => k::dot_q4_k(b(w), a),
                        (GgmlType::Q5_K, ActRow::Q8K(a)) => k::dot_q5_k(b(w), a),
                        (GgmlType::Q6_K, ActRow::Q8K(a)) => k::dot_q6_k(b(w), a),
                        _ => unreachable!("activation kind follows the weight type"),
                    };
                    out.set(r, t, v);
                }
            }
        }
        GgmlType::F16 => dot_rows_f16(rows, row_bytes, acts, out),
        _ => dot_rows_body(ty, rows, row_bytes, acts, out),
    }
}

/// F16 rows times every token, four rows at a time (BF16's portable code, a shift per
/// value, the compiler vectorizes as well as this would: 24–26 GiB/s either way).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_f16(rows: &[u8], row_bytes: usize, acts: &super::Activations, out: &mut OutGrid) {
    use super::dot_avx2::dot_f16_rows;
    let w: Vec<&[u8]> = rows.chunks_exact(row_bytes).collect();
    let x = |t: usize| match acts.row(t) {
        ActRow::F32(x) => x,
        _ => unreachable!("F16 weights take f32 activations"),
    };
    let mut r = 0;
    while r + 4 <= w.len() {
        for t in 0..acts.n_rows() {
            for (i, v) in dot_f16_rows([w[r], w[r + 1], w[r + 2], w[r + 3]], x(t)).into_iter().enumerate() {
                out.set(r + i, t, v);
            }
        }
        r += 4;
    }
    for r in r..w.len() {
        for t in 0..acts.n_rows() {
            out.set(r, t, dot_f16_rows([w[r]], x(t))[0]);
        }
    }
}

/// Whether the AVX2 kernels can run (checked once; `ODMOE_NO_SIMD=1` forces the portable ones).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::env::var_os("ODMOE_NO_SIMD").is_none()
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
            && std::is_x86_feature_detected!("bmi2")
    })
}

/// Whether the AVX-512 VNNI Q8_0 kernel can run (checked once; `ODMOE_NO_VNNI=1` turns it
/// off, to compare). Its results are bit-identical to the AVX2 kernel's.
#[cfg(target_arch = "x86_64")]
pub fn has_vnni() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        has_avx2()
            && std::env::var_os("ODMOE_NO_VNNI").is_none()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
    })
}

/// Dots each weight row in `rows` (consecutive rows of `row_bytes` bytes) with every
/// activation row; `out[r * n_tokens + t]` receives row `r` times token `t`.
pub fn dot_rows(ty: GgmlType, rows: &[u8], row_bytes: usize, acts: &super::Activations, out: &mut [f32]) {
    let n_rows = rows.len() / row_bytes;
    dot_rows_into(ty, rows, row_bytes, acts, &mut OutGrid::row_major(out, n_rows, acts.n_rows()))
}

/// [`dot_rows`] writing row `r` times token `t` to entry `(r, t)` of `out`, whatever its
/// layout (matrix products write token-major windows of their output from each thread).
pub fn dot_rows_into(ty: GgmlType, rows: &[u8], row_bytes: usize, acts: &super::Activations, out: &mut OutGrid) {
    assert_eq!(rows.len() % row_bytes, 0, "weight bytes are not whole rows");
    assert!(out.rows() == rows.len() / row_bytes && out.n() == acts.n_rows(), "output grid of the wrong shape");
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2() {
            // SAFETY: the required CPU features were detected at run time.
            unsafe { dot_rows_avx2(ty, rows, row_bytes, acts, out) };
            return;
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::env::var_os("ODMOE_NO_SIMD").is_none() && matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K) {
            dot_rows_neon(ty, rows, row_bytes, acts, out);
            return;
        }
    }
    dot_rows_body(ty, rows, row_bytes, acts, out)
}

/// Q8_0, Q4_K and Q6_K rows times every token with the NEON kernels (the same bits as
/// the portable ones).
#[cfg(target_arch = "aarch64")]
fn dot_rows_neon(ty: GgmlType, rows: &[u8], row_bytes: usize, acts: &super::Activations, out: &mut OutGrid) {
    use super::dot_neon as k;
    fn b<B: Block>(w: &[u8]) -> &[B] {
        as_blocks(w).expect("whole blocks")
    }
    for (r, w) in rows.chunks_exact(row_bytes).enumerate() {
        for t in 0..acts.n_rows() {
            // SAFETY: NEON is part of every AArch64 CPU; rows and activations have the same width.
            let v = unsafe {
                match (ty, acts.row(t)) {
                    (GgmlType::Q8_0, ActRow::Q8_0(a)) => k::dot_q8_0(b(w), a),
                    (GgmlType::Q4_K, ActRow::Q8K(a)) => k::dot_q4_k(b(w), a),
                    (GgmlType::Q6_K, ActRow::Q8K(a)) => k::dot_q6_k(b(w), a),
                    _ => unreachable!("activation kind follows the weight type"),
                }
            };
            out.set(r, t, v);
        }
    }
}
