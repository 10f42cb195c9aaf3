//! Rotary position embedding with linear and YaRN scaling, as llama.cpp computes it.

use super::config::{RopeConfig, RopeStyle};

/// Precomputed rotation for one position: `cos[i]`, `sin[i]` for each pair `i`.
pub struct Rotation {
    cos: Vec<f32>,
    sin: Vec<f32>,
    style: RopeStyle,
}

fn corr_dim(n_dims: usize, n_ctx_orig: usize, n_rot: f32, base: f32) -> f32 {
    n_dims as f32 * (n_ctx_orig as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln() / (2.0 * base.ln())
}

impl Rotation {
    /// The rotation for position `pos`.
    pub fn new(cfg: &RopeConfig, pos: usize) -> Rotation {
        let n = cfg.n_rot;
        let half = n / 2;
        let (low, high) = if cfg.ext_factor != 0.0 {
            let lo = corr_dim(n, cfg.n_ctx_orig, cfg.beta_fast, cfg.freq_base).floor().max(0.0);
            let hi = corr_dim(n, cfg.n_ctx_orig, cfg.beta_slow, cfg.freq_base).ceil().min(n as f32 - 1.0);
            (lo, hi)
        } else {
            (0.0, 0.0)
        };
        let mut cos = Vec::with_capacity(half);
        let mut sin = Vec::with_capacity(half);
        for i in 0..half {
            let inv_freq = (cfg.freq_base as f64).powf(-2.0 * i as f64 / n as f64);
            let extrap = pos as f64 * inv_freq;
            let interp = cfg.freq_scale as f64 * extrap;
            let theta = if cfg.ext_factor != 0.0 {
                let y = (i as f32 - low) / (high - low).max(0.001);
                let ramp = (1.0 - y.clamp(0.0, 1.0)) * cfg.ext_factor;
                interp * (1.0 - ramp as f64) + extrap * ramp as f64
            } else {
                interp
            };
            cos.push((theta.cos() * cfg.mscale as f64) as f32);
            sin.push((theta.sin() * cfg.mscale as f64) as f32);
        }
        Rotation { cos, sin, style: cfg.style }
    }

    /// The rotation's cosines and sines, one pair of dimensions each (what the GPU's rope
    /// kernel applies, so both backends rotate by the same numbers).
    pub fn table(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    /// How dimensions are paired.
    pub fn style(&self) -> RopeStyle {
        self.style
    }

    /// Rotates the first `n_rot` values of `x` (one head) in place.
    pub fn apply(&self, x: &mut [f32]) {
        let half = self.cos.len();
        match self.style {
            RopeStyle::Interleaved => {
                for i in 0..half {
                    let (a, b) = (x[2 * i], x[2 * i + 1]);
                    x[2 * i] = a * self.cos[i] - b * self.sin[i];
                    x[2 * i + 1] = a * self.sin[i] + b * self.cos[i];
                }
            }
            RopeStyle::Neox => {
                for i in 0..half {
                    let (a, b) = (x[i], x[i + half]);
                    x[i] = a * self.cos[i] - b * self.sin[i];
                    x[i + half] = a * self.sin[i] + b * self.cos[i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(style: RopeStyle) -> RopeConfig {
        RopeConfig { style, n_rot: 8, freq_base: 10000.0, freq_scale: 1.0, ext_factor: 0.0, mscale: 1.0, beta_fast: 32.0, beta_slow: 1.0, n_ctx_orig: 4096 }
    }

    #[test]
    fn position_zero_is_identity() {
        let r = Rotation::new(&cfg(RopeStyle::Neox), 0);
        let mut x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let orig = x;
        r.apply(&mut x);
        assert_eq!(x, orig);
    }

    #[test]
    fn rotation_preserves_norm() {
        let r = Rotation::new(&cfg(RopeStyle::Interleaved), 17);
        let mut x = [1.0f32, -2.0, 3.0, 0.5, 5.0, 6.0, -7.0, 8.0];
        let n0: f32 = x.iter().map(|v| v * v).sum();
        r.apply(&mut x);
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4);
    }
}
