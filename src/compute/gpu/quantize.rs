//! Activation rows quantized on the GPU (`shaders/quantize.wgsl`) once per matrix
//! product, so the integer GEMV kernels read packed bytes instead of re-deriving each
//! block's scale in every workgroup: Q8_0 blocks of 32 for Q8_0 weights, Q8_K blocks of
//! 256 (with sums of each 32) for the K-quants — exactly as the CPU backend quantizes
//! (`crate::quant::quantize_q8_0`, `quantize_q8_k`), which the test checks.

use super::recorder::Recorder;
use super::kernel::grid;
use crate::{Error, Result};

/// How activations are quantized for a weight format.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActFormat {
    /// Blocks of 32 with an f16-rounded scale (for Q8_0 weights).
    Q8_0,
    /// Blocks of 256 with scale 1/iscale and sums per 32 (for Q4_K and the other K-quants).
    Q8_K,
}

impl ActFormat {
    /// Values per block.
    pub fn block(self) -> usize {
        match self {
            ActFormat::Q8_0 => 32,
            ActFormat::Q8_K => 256,
        }
    }
}

/// Quantized activation rows on the device.
pub struct QuantizedRows {
    /// Signed bytes, four per word, in the order of the input.
    pub xq: wgpu::Buffer,
    /// One scale per block.
    pub xs: wgpu::Buffer,
    /// Q8_K only: the sum of each group of 32 quantized values (one word otherwise).
    pub bsums: wgpu::Buffer,
}

const SOURCE: &str = concat!(include_str!("../../../shaders/exact.wgsl"), include_str!("../../../shaders/quantize.wgsl"));

/// Records the quantization of `len` values of `x` (whole rows whose length is a
/// multiple of the format's block) into new buffers.
pub fn record(rec: &mut Recorder, format: ActFormat, x: &wgpu::Buffer, len: usize) -> Result<QuantizedRows> {
    record_inner(rec, format, x, None, len)
}

/// [`record`] of silu(g) · u (SwiGLU, as `Elementwise::swiglu` computes it), `len`
/// values of each: the product is never stored in f32.
pub fn record_swiglu(rec: &mut Recorder, format: ActFormat, g: &wgpu::Buffer, u: &wgpu::Buffer, len: usize) -> Result<QuantizedRows> {
    record_inner(rec, format, g, Some(u), len)
}

fn record_inner(rec: &mut Recorder, format: ActFormat, x: &wgpu::Buffer, u: Option<&wgpu::Buffer>, len: usize) -> Result<QuantizedRows> {
    let block = format.block();
    if len == 0 || !len.is_multiple_of(block) {
        return Err(Error::Invalid(format!("quantize: {len} values are not whole blocks of {block}")));
    }
    let blocks = len / block;
    let out = QuantizedRows { xq: rec.output("quantized x", len / 4), xs: rec.output("x scales", blocks), bsums: rec.output("x sums", if format == ActFormat::Q8_K { len / 32 } else { 1 }) };
    let zero = rec.gpu().zero_word.clone();
    let u_buf = u.unwrap_or(&zero);
    let swiglu = u.is_some() as u32;
    match format {
        ActFormat::Q8_0 => {
            let (gx, gy) = grid(blocks.div_ceil(8));
            let k = rec.gpu().kernel("quantize_q8_0", SOURCE, "q8_0");
            k.record_bound(rec, &[(0, x), (1, &out.xq), (2, &out.xs), (5, u_buf)], 4, &[blocks as u32, gx as u32, swiglu], [gx as u32, gy as u32, 1])?;
        }
        ActFormat::Q8_K => {
            let (gx, gy) = grid(blocks);
            let k = rec.gpu().kernel("quantize_q8_k", SOURCE, "q8_k");
            k.record_bound(rec, &[(0, x), (1, &out.xq), (2, &out.xs), (3, &out.bsums), (5, u_buf)], 4, &[blocks as u32, gx as u32, swiglu], [gx as u32, gy as u32, 1])?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gpu_or_skip, values};
    use super::*;
    use super::super::Gpu;
    use crate::quant::{quantize_q8_0, quantize_q8_k};

    fn read_i8(gpu: &Gpu, buf: &wgpu::Buffer, len: usize) -> Vec<i8> {
        let words = gpu.read_f32(buf, len / 4).unwrap();
        words.iter().flat_map(|w| w.to_bits().to_le_bytes()).map(|b| b as i8).collect()
    }

    fn read_i32(gpu: &Gpu, buf: &wgpu::Buffer, len: usize) -> Vec<i32> {
        gpu.read_f32(buf, len).unwrap().iter().map(|w| w.to_bits() as i32).collect()
    }

    /// Quantized values and scales equal the CPU's, bit for bit.
    fn assert_same(what: &str, got: &[i8], want: &[i8], got_s: &[f32], want_s: &[f32]) {
        if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
            let off = got.iter().zip(want).filter(|(a, b)| a != b).count();
            panic!("{what}: {off} of {} values differ, the first at {i}: gpu {} vs cpu {}", got.len(), got[i], want[i]);
        }
        for (i, (a, b)) in got_s.iter().zip(want_s).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{what}: scale {i}: gpu {a} vs cpu {b}");
        }
    }

    #[test]
    fn gpu_quantization_matches_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        // 3 rows of 512 with a zero block, a row count not a multiple of 8 blocks, and
        // values on rounding ties: multiples of one step, as a normalized row of a Q4_0
        // embedding holds (x / (8 c) · 127 = 63.5 for x = 4 c; the CPU's quotient decides)
        for (len, ties) in [(3 * 512, false), (32, false), (256 * 9, false), (1024, true)] {
            let mut x = values(len.max(1024), len as u64);
            x[256..512].fill(0.0);
            x[700] = -9.0; // a negative value of largest magnitude
            x.truncate(len);
            if ties {
                for (i, v) in x.iter_mut().enumerate().filter(|(i, _)| !(256..512).contains(i) && *i != 700) {
                    let step = 0.21546571f32 * (1.0 + (i / 32) as f32 * 0.0137);
                    *v = step * ((i * 7 % 16) as f32 - 8.0);
                }
                x[1] = 0.86186284;
                x[2] = 1.7237257;
            }
            let xb = gpu.upload("x", &x).unwrap();
            let mut enc = Recorder::new(&gpu);
            let q0 = record(&mut enc, ActFormat::Q8_0, &xb, len).unwrap();
            let qk = (len % 256 == 0).then(|| record(&mut enc, ActFormat::Q8_K, &xb, len).unwrap());
            enc.submit();

            let cpu0: Vec<_> = x.chunks(32).map(quantize_q8_0).collect();
            let want: Vec<i8> = cpu0.iter().flat_map(|b| b.qs).collect();
            let want_s: Vec<f32> = cpu0.iter().map(|b| b.d).collect();
            assert_same("q8_0", &read_i8(&gpu, &q0.xq, len), &want, &gpu.read_f32(&q0.xs, len / 32).unwrap(), &want_s);

            // the SwiGLU product quantized in the same pass: as quantizing the product
            let up = values(len, 77);
            let ub = gpu.upload("u", &up).unwrap();
            let mut enc = Recorder::new(&gpu);
            let qs = record_swiglu(&mut enc, ActFormat::Q8_0, &xb, &ub, len).unwrap();
            enc.submit();
            let prod: Vec<f32> = x.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let cpu_s: Vec<_> = prod.chunks(32).map(quantize_q8_0).collect();
            let want: Vec<i8> = cpu_s.iter().flat_map(|b| b.qs).collect();
            let want_s: Vec<f32> = cpu_s.iter().map(|b| b.d).collect();
            assert_same("q8_0 of swiglu", &read_i8(&gpu, &qs.xq, len), &want, &gpu.read_f32(&qs.xs, len / 32).unwrap(), &want_s);

            if let Some(qk) = qk {
                let cpuk: Vec<_> = x.chunks(256).map(quantize_q8_k).collect();
                let want: Vec<i8> = cpuk.iter().flat_map(|b| b.qs).collect();
                let want_s: Vec<f32> = cpuk.iter().map(|b| b.d).collect();
                let got = read_i8(&gpu, &qk.xq, len);
                assert_same("q8_k", &got, &want, &gpu.read_f32(&qk.xs, len / 256).unwrap(), &want_s);
                // the sums are of the GPU's own values, per 32
                let sums: Vec<i32> = got.chunks(32).map(|c| c.iter().map(|&q| q as i32).sum()).collect();
                assert_eq!(read_i32(&gpu, &qk.bsums, len / 32), sums);
                assert!(want_s[1] == 0.0 && want_s[0] != 0.0, "the fixture has a zero block and a non-zero one");
            }
        }
    }
}
