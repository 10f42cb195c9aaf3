//! Latent attention's inner products for a group of heads (DeepSeek's MLA in absorbed
//! form): every head attends over the same cached rows (compressed KV, then the shared
//! rope key), so a group's scores are a small matrix product of its queries with the
//! rows, and its latent sums one of its weights with them.
//!
//! The vector code tiles four heads by two positions (scores) or four heads by sixteen
//! latent values (sums), loading each cached value once per tile instead of once per
//! head, and performs each head's operations exactly as [`dot`] and [`axpy`] do (a
//! score's eight lanes multiplied and added chunk by chunk, then summed lane after lane;
//! a latent value's products added position after position), so every head gets the
//! bits it gets from those functions one by one.

#![allow(clippy::needless_range_loop)] // index loops mirror the (head, position) tiles

use super::{axpy, dot};

/// Heads per tile.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the x86 kernels' tile
const HEADS: usize = 4;

/// `scores[h · len + s] = (dot(q_abs_h, c_s[..lora]) + dot(q_pe_h, c_s[lora..])) · scale`
/// for `heads = q_abs.len() / lora` heads and positions `s < len`, where `c_s` is row
/// `s` of `cache` (`lora + rope` values each, `rope = q_pe.len() / heads`).
pub fn latent_scores(q_abs: &[f32], q_pe: &[f32], cache: &[f32], lora: usize, len: usize, scale: f32, scores: &mut [f32]) {
    let heads = q_abs.len() / lora;
    let rope = q_pe.len() / heads;
    let width = lora + rope;
    assert!(q_abs.len() == heads * lora && q_pe.len() == heads * rope && scores.len() == heads * len, "latent_scores: sizes disagree");
    assert!(cache.len() >= len * width, "latent cache shorter than {len} positions");
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))] // advanced by the x86 kernels only
    let mut h0 = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::quant::has_avx2() {
        while h0 + HEADS <= heads {
            let mut s = 0;
            while s + 2 <= len {
                let rows = [&cache[s * width..(s + 1) * width], &cache[(s + 1) * width..(s + 2) * width]];
                let qa: [&[f32]; HEADS] = std::array::from_fn(|j| &q_abs[(h0 + j) * lora..(h0 + j + 1) * lora]);
                let qp: [&[f32]; HEADS] = std::array::from_fn(|j| &q_pe[(h0 + j) * rope..(h0 + j + 1) * rope]);
                // SAFETY: the CPU features were detected at run time; every slice has its length.
                let (a, p) = unsafe { (avx2::dots(qa, [&rows[0][..lora], &rows[1][..lora]]), avx2::dots(qp, [&rows[0][lora..], &rows[1][lora..]])) };
                for j in 0..HEADS {
                    for k in 0..2 {
                        scores[(h0 + j) * len + s + k] = (a[j][k] + p[j][k]) * scale;
                    }
                }
                s += 2;
            }
            if s < len {
                let row = &cache[s * width..(s + 1) * width];
                for j in h0..h0 + HEADS {
                    scores[j * len + s] = (dot(&q_abs[j * lora..(j + 1) * lora], &row[..lora]) + dot(&q_pe[j * rope..(j + 1) * rope], &row[lora..])) * scale;
                }
            }
            h0 += HEADS;
        }
    }
    for j in h0..heads {
        for s in 0..len {
            let row = &cache[s * width..(s + 1) * width];
            scores[j * len + s] = (dot(&q_abs[j * lora..(j + 1) * lora], &row[..lora]) + dot(&q_pe[j * rope..(j + 1) * rope], &row[lora..])) * scale;
        }
    }
}

/// `lat_h = Σ_s weights[h · len + s] · c_s[..lora]` for `heads = lat.len() / lora` heads,
/// summed as [`axpy`] from zero position after position would; `cache` rows are
/// `width` values apart.
pub fn latent_mix(weights: &[f32], cache: &[f32], width: usize, len: usize, lat: &mut [f32], lora: usize) {
    let heads = lat.len() / lora;
    assert!(lat.len() == heads * lora && weights.len() == heads * len && lora <= width, "latent_mix: sizes disagree");
    assert!(cache.len() >= len.saturating_sub(1) * width + lora, "latent cache shorter than {len} positions");
    lat.fill(0.0);
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))] // advanced by the x86 kernels only
    let mut h0 = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::quant::has_avx2() {
        while h0 + HEADS <= heads {
            let w: [&[f32]; HEADS] = std::array::from_fn(|j| &weights[(h0 + j) * len..(h0 + j + 1) * len]);
            // SAFETY: the CPU features were detected at run time; sizes checked above.
            unsafe { avx2::mix(w, cache, width, len, &mut lat[h0 * lora..(h0 + HEADS) * lora], lora) };
            h0 += HEADS;
        }
    }
    for j in h0..heads {
        let l = &mut lat[j * lora..(j + 1) * lora];
        for s in 0..len {
            axpy(l, weights[j * len + s], &cache[s * width..s * width + lora]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::HEADS;
    use std::arch::x86_64::*;

    /// `dot(q[j], c[k])` for four queries and two rows of the same length, by `dot`'s
    /// order: lane `i` sums `q[d]·c[d]` over `d ≡ i (mod 8)` (multiply, then add), the
    /// lanes are summed in order, then the leftover values one by one.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dots(q: [&[f32]; HEADS], c: [&[f32]; 2]) -> [[f32; 2]; HEADS] {
        let len = c[0].len();
        let n = len / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); 2]; HEADS];
        for d in (0..n).step_by(8) {
            let cv = [_mm256_loadu_ps(c[0].as_ptr().add(d)), _mm256_loadu_ps(c[1].as_ptr().add(d))];
            for j in 0..HEADS {
                let qv = _mm256_loadu_ps(q[j].as_ptr().add(d));
                for k in 0..2 {
                    acc[j][k] = _mm256_add_ps(acc[j][k], _mm256_mul_ps(qv, cv[k]));
                }
            }
        }
        std::array::from_fn(|j| {
            std::array::from_fn(|k| {
                let mut lanes = [0.0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[j][k]);
                let mut s: f32 = lanes.iter().sum();
                for d in n..len {
                    s += q[j][d] * c[k][d];
                }
                s
            })
        })
    }

    /// Four heads' latent sums (`lat`: four runs of `lora` values, zeroed): sixteen
    /// values of each head at a time, positions in order, multiply then add (as `axpy`).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn mix(w: [&[f32]; HEADS], cache: &[f32], width: usize, len: usize, lat: &mut [f32], lora: usize) {
        let cp = cache.as_ptr();
        let lp = lat.as_mut_ptr();
        let mut v = 0;
        while v + 16 <= lora {
            let mut acc = [[_mm256_setzero_ps(); 2]; HEADS];
            for s in 0..len {
                let row = cp.add(s * width + v);
                let x = [_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8))];
                for j in 0..HEADS {
                    let a = _mm256_set1_ps(*w[j].get_unchecked(s));
                    for k in 0..2 {
                        acc[j][k] = _mm256_add_ps(acc[j][k], _mm256_mul_ps(a, x[k]));
                    }
                }
            }
            for j in 0..HEADS {
                for k in 0..2 {
                    _mm256_storeu_ps(lp.add(j * lora + v + 8 * k), acc[j][k]);
                }
            }
            v += 16;
        }
        // the last values (fewer than sixteen) one by one, in the same order
        for j in 0..HEADS {
            for i in v..lora {
                let mut y = 0.0f32;
                for s in 0..len {
                    y += w[j][s] * cache[s * width + i];
                }
                lat[j * lora + i] = y;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::compute::cpu::test_values as data;

    #[test]
    fn grouped_scores_and_sums_have_the_bits_of_dot_and_axpy() {
        for heads in [1usize, 3, 4, 5, 8, 9] {
            for (lora, rope) in [(32usize, 8usize), (512, 64), (20, 4), (24, 13)] {
                let width = lora + rope + 3;
                for len in [1usize, 2, 3, 8, 17] {
                    let (qa, qp, cache) = (data(heads * lora, 1), data(heads * rope, 2), data(len * width, 3));
                    // scores read rows of exactly lora + rope values; sums take any row width
                    let packed: Vec<f32> = (0..len).flat_map(|s| cache[s * width..s * width + lora + rope].to_vec()).collect();
                    let mut got_packed = vec![f32::NAN; heads * len];
                    latent_scores(&qa, &qp, &packed, lora, len, 0.3, &mut got_packed);
                    for h in 0..heads {
                        for s in 0..len {
                            let row = &packed[s * (lora + rope)..(s + 1) * (lora + rope)];
                            let want = (dot(&qa[h * lora..(h + 1) * lora], &row[..lora]) + dot(&qp[h * rope..(h + 1) * rope], &row[lora..])) * 0.3;
                            assert_eq!(got_packed[h * len + s].to_bits(), want.to_bits(), "scores: heads {heads} lora {lora} rope {rope} len {len} head {h} pos {s}");
                        }
                    }
                    let weights = data(heads * len, 4);
                    let mut lat = vec![f32::NAN; heads * lora];
                    latent_mix(&weights, &cache, width, len, &mut lat, lora);
                    for h in 0..heads {
                        let mut want = vec![0.0f32; lora];
                        for s in 0..len {
                            axpy(&mut want, weights[h * len + s], &cache[s * width..s * width + lora]);
                        }
                        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&lat[h * lora..(h + 1) * lora]), bits(&want), "sums: heads {heads} lora {lora} len {len} head {h}");
                    }
                }
            }
        }
    }
}
