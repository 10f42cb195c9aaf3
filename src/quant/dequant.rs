//! Dequantization of every computable block format to f32.
//!
//! Each routine follows the arithmetic of gguf-py's `dequantize` (one rounding per
//! multiply and per add, in the same order), so results match it bit for bit.

#![allow(clippy::needless_range_loop)] // index loops mirror the block layouts

use super::blocks::*;
use super::GgmlType;

/// Unpacks the eight 6-bit scales and eight 6-bit mins of a Q4_K/Q5_K block.
///
/// Layout: bytes 0..4 hold scales 0..4 (low 6 bits) and the top 2 bits of scales 4..8;
/// bytes 4..8 the same for the mins; bytes 8..12 the low 4 bits of scales and mins 4..8.
#[inline(always)]
pub fn k4_scales_mins(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const TOP2: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a, b, c) = (w(0), w(1), w(2));
    let sc_lo = a & LOW6;
    let sc_hi = (c & LOW4) | (((a >> 6) & TOP2) << 4);
    let m_lo = b & LOW6;
    let m_hi = ((c >> 4) & LOW4) | (((b >> 6) & TOP2) << 4);
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    sc[..4].copy_from_slice(&sc_lo.to_le_bytes());
    sc[4..].copy_from_slice(&sc_hi.to_le_bytes());
    m[..4].copy_from_slice(&m_lo.to_le_bytes());
    m[4..].copy_from_slice(&m_hi.to_le_bytes());
    (sc, m)
}

/// Unpacks the sixteen 6-bit signed scales of a Q3_K block (already minus 32).
#[inline(always)]
///
/// Scale `i`'s low four bits are the low (`i < 8`) or high nibble of byte `i % 8`, its top
/// two bits bits `2 (i / 4)..` of byte `8 + i % 4`; done four scales to a 32-bit word.
pub fn q3k_scales(s: &[u8; 12]) -> [i8; 16] {
    const LOW4: u32 = 0x0f0f_0f0f;
    const TOP2: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a, b, high) = (w(0), w(1), w(2));
    let words = [(a & LOW4) | ((high & TOP2) << 4), (b & LOW4) | (((high >> 2) & TOP2) << 4), ((a >> 4) & LOW4) | (((high >> 4) & TOP2) << 4), ((b >> 4) & LOW4) | (((high >> 6) & TOP2) << 4)];
    let mut out = [0i8; 16];
    for (o, word) in out.chunks_exact_mut(4).zip(words) {
        for (o, byte) in o.iter_mut().zip(word.to_le_bytes()) {
            *o = (byte as i8).wrapping_sub(32);
        }
    }
    out
}

fn q4_0(b: &[BlockQ4_0], y: &mut [f32]) {
    for (blk, y) in b.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_le(blk.d);
        for j in 0..16 {
            y[j] = d * (((blk.qs[j] & 0x0F) as i8 - 8) as f32);
            y[j + 16] = d * (((blk.qs[j] >> 4) as i8 - 8) as f32);
        }
    }
}

fn q4_1(b: &[BlockQ4_1], y: &mut [f32]) {
    for (blk, y) in b.iter().zip(y.chunks_exact_mut(QK)) {
        let (d, m) = (f16_le(blk.d), f16_le(blk.m));
        for j in 0..16 {
            y[j] = d * ((blk.qs[j] & 0x0F) as f32) + m;
            y[j + 16] = d * ((blk.qs[j] >> 4) as f32) + m;
        }
    }
}

#[inline(always)]
fn q5_value(qs: &[u8; 16], qh: u32, j: usize) -> u8 {
    let low = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
    low | ((((qh >> j) & 1) as u8) << 4)
}

fn q5_0(b: &[BlockQ5_0], y: &mut [f32]) {
    for (blk, y) in b.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_le(blk.d);
        let qh = u32::from_le_bytes(blk.qh);
        for (j, y) in y.iter_mut().enumerate() {
            *y = d * ((q5_value(&blk.qs, qh, j) as i8 - 16) as f32);
        }
    }
}

fn q5_1(b: &[BlockQ5_1], y: &mut [f32]) {
    for (blk, y) in b.iter().zip(y.chunks_exact_mut(QK)) {
        let (d, m) = (f16_le(blk.d), f16_le(blk.m));
        let qh = u32::from_le_bytes(blk.qh);
        for (j, y) in y.iter_mut().enumerate() {
            *y = d * (q5_value(&blk.qs, qh, j) as f32) + m;
        }
    }
}

fn q8_0(b: &[BlockQ8_0], y: &mut [f32]) {
    for (blk, y) in b.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_le(blk.d);
        for j in 0..QK {
            y[j] = blk.qs[j] as f32 * d;
        }
    }
}

fn q2_k(b: &[BlockQ2_K], y: &mut [f32]) {
    for (blk, y) in b.iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_le(blk.d), f16_le(blk.dmin));
        for (e, y) in y.iter_mut().enumerate() {
            let (half, s, l) = (e / 128, (e % 128) / 32, e % 32);
            let q = (blk.qs[half * 32 + l] >> (2 * s)) & 3;
            let sc = blk.scales[e / 16];
            let dl = d * ((sc & 0x0F) as f32);
            let ml = dmin * ((sc >> 4) as f32);
            *y = dl * q as f32 - ml;
        }
    }
}

fn q3_k(b: &[BlockQ3_K], y: &mut [f32]) {
    for (blk, y) in b.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(blk.d);
        let scales = q3k_scales(&blk.scales);
        for (e, y) in y.iter_mut().enumerate() {
            let (half, s, l) = (e / 128, (e % 128) / 32, e % 32);
            let low = ((blk.qs[half * 32 + l] >> (2 * s)) & 3) as i8;
            let hbit = (blk.hmask[l] >> (half * 4 + s)) & 1;
            let q = low - (((hbit ^ 1) << 2) as i8);
            let dl = d * scales[e / 16] as f32;
            *y = dl * q as f32;
        }
    }
}

fn q4_k(b: &[BlockQ4_K], y: &mut [f32]) {
    for (blk, y) in b.iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_le(blk.d), f16_le(blk.dmin));
        let (sc, m) = k4_scales_mins(&blk.scales);
        for (e, y) in y.iter_mut().enumerate() {
            let (j, nib, l) = (e / 64, (e % 64) / 32, e % 32);
            let q = (blk.qs[j * 32 + l] >> (4 * nib)) & 0x0F;
            let g = e / 32;
            *y = (d * sc[g] as f32) * q as f32 - dmin * m[g] as f32;
        }
    }
}

fn q5_k(b: &[BlockQ5_K], y: &mut [f32]) {
    for (blk, y) in b.iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_le(blk.d), f16_le(blk.dmin));
        let (sc, m) = k4_scales_mins(&blk.scales);
        for (e, y) in y.iter_mut().enumerate() {
            let (j, nib, l) = (e / 64, (e % 64) / 32, e % 32);
            let low = (blk.qs[j * 32 + l] >> (4 * nib)) & 0x0F;
            let high = (blk.qh[l] >> (e / 32)) & 1;
            let q = low | (high << 4);
            let g = e / 32;
            *y = (d * sc[g] as f32) * q as f32 - dmin * m[g] as f32;
        }
    }
}

fn q6_k(b: &[BlockQ6_K], y: &mut [f32]) {
    for (blk, y) in b.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(blk.d);
        for (e, y) in y.iter_mut().enumerate() {
            let (half, r) = (e / 128, e % 128);
            let low = (blk.ql[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
            let high = (blk.qh[half * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
            let q = (low | (high << 4)) as i8 - 32;
            *y = (d * blk.scales[e / 16] as f32) * q as f32;
        }
    }
}

/// Dequantizes `bytes` of type `ty` into `out` (`out.len()` elements).
///
/// Panics if the type is not computable or the sizes disagree; callers validate both
/// when the model is loaded.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let expect = ty.row_bytes(out.len() as u64).expect("whole blocks") as usize;
    assert_eq!(bytes.len(), expect, "{ty}: {} bytes for {} elements", bytes.len(), out.len());
    fn b<B: Block>(bytes: &[u8]) -> &[B] {
        as_blocks(bytes).expect("whole blocks")
    }
    match ty {
        GgmlType::F32 => {
            for (y, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *y = f32::from_le_bytes(c.try_into().unwrap());
            }
        }
        GgmlType::F16 => {
            for (y, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *y = f16_le([c[0], c[1]]);
            }
        }
        GgmlType::BF16 => {
            for (y, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *y = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        GgmlType::Q4_0 => q4_0(b(bytes), out),
        GgmlType::Q4_1 => q4_1(b(bytes), out),
        GgmlType::Q5_0 => q5_0(b(bytes), out),
        GgmlType::Q5_1 => q5_1(b(bytes), out),
        GgmlType::Q8_0 => q8_0(b(bytes), out),
        GgmlType::Q2_K => q2_k(b(bytes), out),
        GgmlType::Q3_K => q3_k(b(bytes), out),
        GgmlType::Q4_K => q4_k(b(bytes), out),
        GgmlType::Q5_K => q5_k(b(bytes), out),
        GgmlType::Q6_K => q6_k(b(bytes), out),
        other => panic!("dequantize: {other} is not a computable type"),
    }
}
