//! `eˣ` for the arguments softmax and SiLU need (`x ≤ 0`), as a polynomial the vector
//! unit evaluates eight lanes at a time instead of a libm call per value. The scalar
//! version performs the vector version's operations in the same order (fused
//! multiply-adds where it uses them), so both give the same bits.

/// `eˣ` for `x ≤ 0` (softmax arguments less their maximum), to about one unit in the last
/// place: `x = n·ln 2 + r`, `eʳ` by Cephes' polynomial, times `2ⁿ`. Below -87 it returns
/// a number under 2⁻¹²⁵ rather than exactly 0, which a softmax sum of at least 1 absorbs.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = x.mul_add(std::f32::consts::LOG2_E, ROUND) - ROUND;
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p.mul_add(r, *c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Adding and then subtracting 1.5 · 2²³ rounds an f32 of magnitude under 2²² to an integer.
const ROUND: f32 = 12_582_912.0;
/// ln 2 in two parts, the first exact in few bits, so `x - n ln 2` loses nothing.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' `expf` polynomial for `(eʳ - 1 - r) / r²` on `|r| ≤ ln2 / 2`, highest power first.
#[allow(clippy::excessive_precision)]
const EXP_POLY: [f32; 6] = [1.987_569_15e-4, 1.398_199_950_7e-3, 8.333_451_907_3e-3, 4.166_579_589_4e-2, 1.666_666_545_9e-1, 5.000_000_120_1e-1];

/// The AVX2 version.
#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// Eight lanes of [`exp_nonpositive`], operation for operation.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA (the caller's `target_feature`s).
    #[inline(always)]
    pub unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let round = _mm256_set1_ps(ROUND);
        let n = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), round), round);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulps_of_libm() {
        for i in 0..200_000 {
            let x = -(i as f32) * 0.000_43;
            let (got, want) = (exp_nonpositive(x), x.exp());
            let ulp = (want.to_bits() as i64 - got.to_bits() as i64).abs();
            assert!(ulp <= 2 || want < 1e-37, "exp({x}) = {got}, libm {want}");
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(f32::NEG_INFINITY) < 1e-37);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_and_scalar_exp_agree_bit_for_bit() {
        if !crate::quant::has_avx2() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let xs: Vec<f32> = (0..80_000).map(|i| -(i as f32) * 0.0013).chain([0.0, -0.0, -87.0, -200.0, f32::NEG_INFINITY]).collect();
        for c in xs.chunks(8) {
            let mut lanes = [0.0f32; 8];
            lanes[..c.len()].copy_from_slice(c);
            let mut got = [0.0f32; 8];
            // SAFETY: AVX2 and FMA detected above.
            unsafe {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn run(x: &[f32; 8], out: &mut [f32; 8]) {
                    use std::arch::x86_64::*;
                    _mm256_storeu_ps(out.as_mut_ptr(), avx2::exp8(_mm256_loadu_ps(x.as_ptr())));
                }
                run(&lanes, &mut got);
            }
            for (g, x) in got.iter().zip(&lanes) {
                assert_eq!(g.to_bits(), exp_nonpositive(*x).to_bits(), "exp({x})");
            }
        }
    }
}
