//! Causal grouped-query attention over a KV cache on the GPU (`shaders/attention.wgsl`):
//! scores, softmax and weighted values in one dispatch (a workgroup per token and head)
//! over a scratch buffer of `n × heads × len` scores. The CPU reference is the CPU backend's
//! [`crate::compute::cpu::attend_head`], applied head by head.
//!
//! The scratch grows with the prompt chunk times the context; chunked prefill keeps it
//! bounded. Latent (MLA) attention is not here yet.

use super::recorder::Recorder;
use super::kernel::{Kernel, MAX_GROUPS};
use super::Gpu;
use crate::{Error, Result};

/// The compiled attention kernel, for f32 caches and for f16 ones.
pub struct Attention {
    kernel: Kernel,
    half: Kernel,
}

/// The kernel's source for a cache of packed f16 pairs.
fn half_source() -> &'static str {
    static SOURCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SOURCE.get_or_init(|| {
        let src = include_str!("../../../shaders/attention.wgsl");
        let (flag, alias) = ("const HALF: bool = false;", "alias Kv = f32;");
        assert!(src.contains(flag) && src.contains(alias), "attention.wgsl declares its HALF switch and Kv type");
        src.replace(flag, "const HALF: bool = true;").replace(alias, "alias Kv = u32;")
    })
}

/// The shape of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// New tokens.
    pub n: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Query and key values per head.
    pub head_dim: usize,
    /// Value values per head.
    pub value_dim: usize,
    /// Position of the first new token (cached positions before it).
    pub pos0: usize,
    /// Score scale (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Row of the first new token in the query and output buffers (other sequences of a
    /// batch have the rows around it).
    pub row0: usize,
    /// Values from one cached position to the next: `kv_heads × value_dim`, or more where
    /// each position's values are the first part of a wider row (latent attention reads
    /// its values from the compressed key rows).
    pub value_stride: usize,
    /// The cache holds f16 values, two to a word (first in the low half), rather than f32.
    pub half: bool,
}

/// A 2-D grid of `total` items, `per` per workgroup: (groups x, groups y, items per row).
fn grid(total: usize, per: usize) -> ([u32; 3], u32) {
    let groups = total.div_ceil(per).max(1);
    let gx = groups.min(MAX_GROUPS as usize);
    ([gx as u32, groups.div_ceil(gx) as u32, 1], (gx * per) as u32)
}

impl Attention {
    /// Compiles the kernel.
    pub fn new(gpu: &Gpu) -> Attention {
        let src = include_str!("../../../shaders/attention.wgsl");
        Attention { kernel: Kernel::new(gpu, "attention", src, "main"), half: Kernel::new(gpu, "attention_f16", half_source(), "main") }
    }

    /// Records attention of `q`'s rows `row0..row0 + n` over the cache `k`, `v` (holding
    /// `pos0 + n` positions) into the same rows of `out` (`heads × value_dim` each), using
    /// `scratch` (at least `n × heads × (pos0 + n)` f32).
    #[allow(clippy::too_many_arguments)]
    pub fn record(&self, rec: &mut Recorder, sh: Shape, q: &wgpu::Buffer, k: &wgpu::Buffer, v: &wgpu::Buffer, scratch: &wgpu::Buffer, out: &wgpu::Buffer) -> Result<()> {
        if sh.kv_heads == 0 || !sh.heads.is_multiple_of(sh.kv_heads) {
            return Err(Error::Invalid(format!("attention: {} query heads over {} key/value heads", sh.heads, sh.kv_heads)));
        }
        let len = sh.pos0 + sh.n;
        if scratch.size() < (sh.n * sh.heads * len * 4) as u64 {
            return Err(Error::Invalid(format!("attention: scratch of {} bytes, {} needed", scratch.size(), sh.n * sh.heads * len * 4)));
        }
        let dims = |per_y: u32| [sh.n as u32, sh.heads as u32, sh.kv_heads as u32, sh.head_dim as u32, sh.value_dim as u32, len as u32, sh.pos0 as u32, sh.scale.to_bits(), per_y, sh.row0 as u32, sh.value_stride as u32];
        let (g, per) = grid(sh.n * sh.heads, 1);
        let kernel = if sh.half { &self.half } else { &self.kernel };
        kernel.record(rec, &[q, k, v, scratch, out], &dims(per), g)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gpu_or_skip, values};
    use super::*;
    use crate::compute::cpu;

    #[test]
    fn gpu_attention_matches_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        let k = Attention::new(&gpu);
        // prefill from empty, decode after a long cache, grouped heads, value width unlike
        // the key width, a chunk in the middle of a sequence, rows after another
        // sequence's in a batch (row0), values read from the key rows (latent attention)
        for sh in [
            Shape { n: 5, heads: 4, kv_heads: 2, head_dim: 16, value_dim: 16, pos0: 0, scale: 0.25, row0: 0, value_stride: 32, half: false },
            Shape { n: 1, heads: 8, kv_heads: 1, head_dim: 64, value_dim: 64, pos0: 300, scale: 0.125, row0: 0, value_stride: 64, half: false },
            Shape { n: 3, heads: 6, kv_heads: 3, head_dim: 24, value_dim: 40, pos0: 70, scale: 0.2, row0: 3, value_stride: 120, half: false },
            Shape { n: 2, heads: 2, kv_heads: 1, head_dim: 18, value_dim: 10, pos0: 2, scale: 0.3, row0: 0, value_stride: 10, half: false },
            Shape { n: 2, heads: 2, kv_heads: 2, head_dim: 8, value_dim: 300, pos0: 5, scale: 0.3, row0: 1, value_stride: 600, half: false },
            // latent: the values are the first value_dim of each key row (one shared head)
            Shape { n: 3, heads: 4, kv_heads: 1, head_dim: 24, value_dim: 16, pos0: 6, scale: 0.2, row0: 2, value_stride: 24, half: false },
            Shape { n: 1, heads: 2, kv_heads: 1, head_dim: 310, value_dim: 300, pos0: 4, scale: 0.05, row0: 0, value_stride: 310, half: false },
            // f16 caches: a grouped and a wide-value one, with a head size not a
            // multiple of four
            Shape { n: 3, heads: 6, kv_heads: 3, head_dim: 24, value_dim: 40, pos0: 70, scale: 0.2, row0: 3, value_stride: 120, half: true },
            Shape { n: 2, heads: 2, kv_heads: 1, head_dim: 18, value_dim: 300, pos0: 9, scale: 0.3, row0: 0, value_stride: 300, half: true },
        ] {
            let len = sh.pos0 + sh.n;
            let q_all = values((sh.row0 + sh.n) * sh.heads * sh.head_dim, 1);
            let q = &q_all[sh.row0 * sh.heads * sh.head_dim..];
            // an f16 cache holds the values rounded to f16: the CPU reference attends over
            // the same rounded values (widening them back is exact)
            let rounded = |v: Vec<f32>| if sh.half { v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect() } else { v };
            let kc = rounded(values(len * sh.kv_heads * sh.head_dim, 2));
            let latent = sh.value_stride != sh.kv_heads * sh.value_dim;
            let vc = if latent { kc.clone() } else { rounded(values(len * sh.kv_heads * sh.value_dim, 3)) };
            let mut want = vec![0.0f32; sh.n * sh.heads * sh.value_dim];
            let mut scores = Vec::new();
            let group = sh.heads / sh.kv_heads;
            for t in 0..sh.n {
                for h in 0..sh.heads {
                    let kvh = h / group;
                    let qh = &q[(t * sh.heads + h) * sh.head_dim..(t * sh.heads + h + 1) * sh.head_dim];
                    let o = &mut want[(t * sh.heads + h) * sh.value_dim..(t * sh.heads + h + 1) * sh.value_dim];
                    cpu::attend_head(qh, &kc[kvh * sh.head_dim..], sh.kv_heads * sh.head_dim, &vc[kvh * sh.value_dim..], sh.value_stride, sh.pos0 + t + 1, sh.scale, &mut scores, o);
                }
            }
            let cache = |v: &[f32]| if sh.half { gpu.storage("cache", bytemuck::cast_slice(&super::super::half_rows::to_half_words(v))).unwrap() } else { gpu.upload("cache", v).unwrap() };
            let (qb, kb, vb) = (gpu.upload("q", &q_all).unwrap(), cache(&kc), cache(&vc));
            let skip = sh.row0 * sh.heads * sh.value_dim;
            let (scratch, out) = (gpu.output("scores", sh.n * sh.heads * len), gpu.output("out", skip + want.len()));
            let mut enc = Recorder::new(&gpu);
            k.record(&mut enc, sh, &qb, &kb, &vb, &scratch, &out).unwrap();
            enc.submit();
            for (i, (a, b)) in gpu.read_f32(&out, skip + want.len()).unwrap()[skip..].iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{sh:?} [{i}]: gpu {a} vs cpu {b}");
            }
        }
    }
}
