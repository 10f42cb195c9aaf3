//! NEON versions of the hot fused dot products (Q8_0, Q4_K, Q6_K) for 64-bit ARM (Apple
//! Silicon, Graviton, …): each block's integer sum made sixteen products at a time
//! (`smull`/`sadalp`, in every ARMv8 core), then scaled and added in the portable
//! kernels' order ([`super::dot::block_fma`]), so the results are their bits.
//!
//! Checked against the portable kernels bit for bit under emulation (`qemu-aarch64`);
//! their speed on ARM hardware has not been measured.

use std::arch::aarch64::*;

use super::blocks::{ActQ8_0, ActQ8_K, BlockQ4_K, BlockQ6_K, BlockQ8_0};
use super::dequant::k4_scales_mins;
use super::dot::block_fma;

/// The sum of the products of sixteen pairs of signed bytes.
#[inline(always)]
unsafe fn dot16(a: int8x16_t, b: int8x16_t) -> i32 {
    let s = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    vaddvq_s32(vpadalq_s16(s, vmull_high_s8(a, b)))
}

/// The sum of the products of 32 pairs (`a[i]` · `b[i]`), `b` signed bytes.
#[inline(always)]
unsafe fn dot32(a: [int8x16_t; 2], b: &[i8]) -> i32 {
    debug_assert!(b.len() >= 32);
    let s = vpaddlq_s16(vmull_s8(vget_low_s8(a[0]), vld1_s8(b.as_ptr())));
    let s = vpadalq_s16(s, vmull_high_s8(a[0], vld1q_s8(b.as_ptr())));
    let s = vpadalq_s16(s, vmull_s8(vget_low_s8(a[1]), vld1_s8(b.as_ptr().add(16))));
    vaddvq_s32(vpadalq_s16(s, vmull_high_s8(a[1], vld1q_s8(b.as_ptr().add(16)))))
}

/// A Q8_0 row times a token.
///
/// # Safety
/// NEON (every AArch64 CPU); `w` and `a` of the same length.
#[target_feature(enable = "neon")]
pub unsafe fn dot_q8_0(w: &[BlockQ8_0], a: &[ActQ8_0]) -> f32 {
    let mut acc = 0.0f32;
    for (b, y) in w.iter().zip(a) {
        let q = [vld1q_s8(b.qs.as_ptr()), vld1q_s8(b.qs.as_ptr().add(16))];
        acc = block_fma(dot32(q, &y.qs), super::blocks::f16_le(b.d) * y.d, acc);
    }
    acc
}

/// A Q4_K row times a token.
///
/// # Safety
/// NEON; `w` and `a` of the same length.
#[target_feature(enable = "neon")]
pub unsafe fn dot_q4_k(w: &[BlockQ4_K], a: &[ActQ8_K]) -> f32 {
    let low = vdupq_n_u8(0x0F);
    let mut acc = 0.0f32;
    for (b, y) in w.iter().zip(a) {
        let (sc, m) = k4_scales_mins(&b.scales);
        let mut mins = 0i32;
        for j in 0..8 {
            mins += m[j] as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
        }
        let mut isum = 0i32;
        for j in 0..4 {
            let q = [vld1q_u8(b.qs.as_ptr().add(32 * j)), vld1q_u8(b.qs.as_ptr().add(32 * j + 16))];
            let lo = q.map(|v| vreinterpretq_s8_u8(vandq_u8(v, low)));
            let hi = q.map(|v| vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)));
            isum += sc[2 * j] as i32 * dot32(lo, &y.qs[64 * j..]) + sc[2 * j + 1] as i32 * dot32(hi, &y.qs[64 * j + 32..]);
        }
        let (d, dmin) = (super::blocks::f16_le(b.d), super::blocks::f16_le(b.dmin));
        acc = block_fma(-mins, dmin * y.d, block_fma(isum, d * y.d, acc));
    }
    acc
}

/// A Q6_K row times a token.
///
/// # Safety
/// NEON; `w` and `a` of the same length.
#[target_feature(enable = "neon")]
pub unsafe fn dot_q6_k(w: &[BlockQ6_K], a: &[ActQ8_K]) -> f32 {
    let (low, two) = (vdupq_n_u8(0x0F), vdupq_n_u8(0x03));
    let offset = vdupq_n_s8(32);
    let mut acc = 0.0f32;
    for (b, y) in w.iter().zip(a) {
        let mut isum = 0i32;
        for half in 0..2 {
            let (ql, qh, ys) = (b.ql.as_ptr().add(64 * half), b.qh.as_ptr().add(32 * half), &y.qs[128 * half..]);
            // for each 16 values (group g = l / 16 of the 32): the four six-bit quants
            for g in 0..2 {
                let (l0, l1, h) = (vld1q_u8(ql.add(16 * g)), vld1q_u8(ql.add(32 + 16 * g)), vld1q_u8(qh.add(16 * g)));
                let six = |nibbles: uint8x16_t, top: uint8x16_t| vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(nibbles, vshlq_n_u8::<4>(vandq_u8(top, two)))), offset);
                let q = [
                    six(vandq_u8(l0, low), h),
                    six(vandq_u8(l1, low), vshrq_n_u8::<2>(h)),
                    six(vshrq_n_u8::<4>(l0), vshrq_n_u8::<4>(h)),
                    six(vshrq_n_u8::<4>(l1), vshrq_n_u8::<6>(h)),
                ];
                for (k, qk) in q.into_iter().enumerate() {
                    let t = dot16(qk, vld1q_s8(ys.as_ptr().add(32 * k + 16 * g)));
                    isum += b.scales[half * 8 + 2 * k + g] as i32 * t;
                }
            }
        }
        acc = block_fma(isum, super::blocks::f16_le(b.d) * y.d, acc);
    }
    acc
}
