//! A weight matrix on the GPU in whichever block format it has a kernel for — F32
//! (`shaders/gemv_f32.wgsl`), F16 and BF16 ([`super::gemv_f16`]), Q8_0 ([`super::gemv_q8_0`]), Q2_K ([`super::gemv_q2_k`]), Q3_K ([`super::gemv_q3_k`]), Q4_K ([`super::gemv_q4_k`]),
//! Q5_K ([`super::gemv_q5_k`]) or Q6_K ([`super::gemv_q6_k`]) — so the forward pass records `y = x · Wᵀ` without
//! caring which. A matrix may also be a stack of a layer's experts
//! ([`GpuMatrix::stacked`]): one dispatch then multiplies each output row group by the
//! expert an id buffer names for it ([`Experts`]), however many experts were chosen.

use super::recorder::Recorder;
use super::kernel::Kernel;
use super::quantize::{self, ActFormat, QuantizedRows};
use super::Gpu;
use crate::compute::QMatrix;
use crate::quant::GgmlType;
use crate::{Error, Result};
use std::sync::Arc;

use super::expert_tiles::Tiles;
use super::lane_layout::{lane_kernel, tokens_kernel, LaneLayout, GROUP};
use super::gemv_q8_0::Q8_0Packed;

/// A matrix (or a stack of equally shaped expert matrices) resident on the GPU with the
/// kernel for its format.
pub struct GpuMatrix {
    /// Block format.
    ty: GgmlType,
    /// Rows of one matrix (one expert's, for a stack).
    rows: usize,
    cols: usize,
    /// Matrices in the stack (1 for a plain matrix).
    count: usize,
    /// What the kernel walks per row: columns (F32) or blocks.
    per_row: usize,
    /// The weights as the kernel reads them (two buffers for Q8_0: quants, scales).
    weights: Vec<wgpu::Buffer>,
    kernel: Arc<Kernel>,
    /// The kernel taking several activation rows per workgroup (reading the weights once
    /// for all of them), where the format has one: used for plain matrices.
    tokens_kernel: Option<Arc<Kernel>>,
    /// How the kernels spread rows over a workgroup's invocations.
    layout: LaneLayout,
    /// How the kernel wants its activations quantized first (`None`: read as f32).
    acts: Option<ActFormat>,
    /// Whether the kernel also reads the activations' sums per 32 (Q4_K's and Q5_K's minimums).
    sums: bool,
}

/// Which expert of a stack each output row group uses: `ids[z]` for output rows
/// `z · rows ..`, reading activation row `z / act_div` (so `k` experts chosen per token
/// read the token's row with `act_div = k`, and a down projection reads its own rows with
/// `act_div = 1`).
#[derive(Clone, Copy)]
pub struct Experts<'a> {
    /// One u32 expert index per output row group.
    pub ids: &'a wgpu::Buffer,
    /// Output row groups per activation row.
    pub act_div: usize,
    /// The same pairs grouped by expert ([`super::expert_tiles`]): where the format has a
    /// several-row kernel, it then reads each expert once per tile instead of once per
    /// output row group (the same outputs, bit for bit).
    pub tiles: Option<&'a Tiles>,
}

/// Activation rows one workgroup of a `main_tokens` kernel takes (`TOKENS` in
/// `gemv_lanes.wgsl`).
const TOKENS_PER_GROUP: usize = 8;

/// The block formats with a GPU kernel, as error messages list them.
pub const GPU_FORMATS: &str = "F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K";

/// Whether weights of type `ty` have a GPU kernel.
pub fn has_gpu_kernel(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K)
}

/// Bytes `w` takes on the device once uploaded (Q8_0 blocks become 32 quant bytes and an
/// f32 scale, Q4_0 and Q5_0 are widened to that, Q3_K and Q6_K blocks are padded to a
/// multiple of 4 bytes; other formats keep their size): what device memory budgets count.
pub fn device_bytes(w: &QMatrix) -> u64 {
    let blocks = |size: usize| (w.data.len() / size) as u64;
    match w.ty {
        GgmlType::Q8_0 => blocks(34) * 36,
        GgmlType::Q4_0 => blocks(18) * 36,
        GgmlType::Q5_0 => blocks(22) * 36,
        GgmlType::Q3_K | GgmlType::Q6_K => blocks(w.ty.type_size()) * w.ty.type_size().next_multiple_of(4) as u64,
        _ => w.data.len() as u64,
    }
}

/// The `block`-byte blocks of `data`, each followed by zero bytes up to a multiple of 4
/// (GGUF's Q3_K and Q6_K blocks are 110 and 210 bytes; the kernels read words).
pub fn pad_blocks(data: &[u8], block: usize) -> Vec<u8> {
    let slot = block.next_multiple_of(4);
    let mut out = Vec::with_capacity(data.len() / block * slot);
    for b in data.chunks_exact(block) {
        out.extend_from_slice(b);
        out.resize(out.len() + slot - block, 0);
    }
    out
}

/// `w`'s bytes as the kernel for its format reads them, one vector per buffer; an error
/// naming the format for one without a kernel.
fn packed(w: &QMatrix) -> Result<Vec<Vec<u8>>> {
    Ok(match w.ty {
        GgmlType::F32 | GgmlType::Q2_K | GgmlType::Q4_K | GgmlType::Q5_K => vec![w.data.to_vec()],
        // two values to a word: rows of an odd length would straddle words
        GgmlType::F16 | GgmlType::BF16 if w.cols % 2 == 1 => return Err(Error::Gpu(format!("{} rows of odd length ({}) have no GPU kernel", w.ty, w.cols))),
        GgmlType::F16 | GgmlType::BF16 => vec![w.data.to_vec()],
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => {
            let p = if w.ty == GgmlType::Q8_0 { Q8_0Packed::pack(w)? } else { Q8_0Packed::widen(w)? };
            vec![bytemuck::cast_slice(&p.quants).to_vec(), bytemuck::cast_slice(&p.scales).to_vec()]
        }
        GgmlType::Q3_K | GgmlType::Q6_K => vec![pad_blocks(&w.data, w.ty.type_size())],
        ty => return Err(Error::Gpu(format!("no GPU kernel for {ty} weights yet ({} have one)", GPU_FORMATS))),
    })
}

/// The lane kernel of a format with a kernel: its base name, its source, the values per
/// unit its rows are walked in (a column, a pair of halves, a block), work items per unit,
/// and how it wants the activations quantized (`None`: read as f32).
fn format_kernel(ty: GgmlType) -> (&'static str, &'static str, usize, usize, Option<ActFormat>) {
    match ty {
        GgmlType::F32 => ("gemv_f32", include_str!("../../../shaders/gemv_f32.wgsl"), 1, 1, None),
        GgmlType::F16 => ("gemv_f16", include_str!("../../../shaders/gemv_f16.wgsl"), 2, 1, None),
        GgmlType::BF16 => ("gemv_bf16", super::gemv_f16::bf16_source(), 2, 1, None),
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => ("gemv_q8_0", include_str!("../../../shaders/gemv_q8_0.wgsl"), 32, 1, Some(ActFormat::Q8_0)),
        GgmlType::Q2_K => ("gemv_q2_k", include_str!("../../../shaders/gemv_q2_k.wgsl"), 256, 16, Some(ActFormat::Q8_K)),
        GgmlType::Q3_K => ("gemv_q3_k", include_str!("../../../shaders/gemv_q3_k.wgsl"), 256, 16, Some(ActFormat::Q8_K)),
        GgmlType::Q4_K => ("gemv_q4_k", include_str!("../../../shaders/gemv_q4_k.wgsl"), 256, 4, Some(ActFormat::Q8_K)),
        GgmlType::Q5_K => ("gemv_q5_k", super::gemv_q5_k::source(), 256, 4, Some(ActFormat::Q8_K)),
        GgmlType::Q6_K => ("gemv_q6_k", include_str!("../../../shaders/gemv_q6_k.wgsl"), 256, 16, Some(ActFormat::Q8_K)),
        ty => unreachable!("packed refuses {ty}"),
    }
}

impl GpuMatrix {
    /// Uploads `w`; formats without a GPU kernel yet are an error naming the format.
    pub fn new(gpu: &Gpu, w: &QMatrix) -> Result<GpuMatrix> {
        Self::stacked(gpu, std::slice::from_ref(w))
    }

    /// Uploads equally shaped matrices (a layer's experts) into one stack, in order;
    /// [`GpuMatrix::record_quantized`] with [`Experts`] then picks one per output row group.
    pub fn stacked(gpu: &Gpu, ws: &[QMatrix]) -> Result<GpuMatrix> {
        Self::stacked_with(gpu, ws, None)
    }

    /// This matrix (the same device buffers) with its kernels in `layout` rather than
    /// its own: for measuring layouts against each other.
    pub fn with_layout(&self, gpu: &Gpu, layout: LaneLayout) -> Result<GpuMatrix> {
        layout.check(gpu, self.ty)?;
        let (base, source, ..) = format_kernel(self.ty);
        let kernel = lane_kernel(gpu, base, source, layout);
        let tokens_kernel = self.tokens_kernel.as_ref().map(|_| tokens_kernel(gpu, base, source, layout));
        Ok(GpuMatrix { kernel, tokens_kernel, layout, weights: self.weights.clone(), ..*self })
    }

    fn stacked_with(gpu: &Gpu, ws: &[QMatrix], layout: Option<LaneLayout>) -> Result<GpuMatrix> {
        let first = ws.first().ok_or_else(|| Error::Invalid("an empty stack of matrices".into()))?;
        let m = Self::slab_with(gpu, first, ws.len(), layout)?;
        for (i, w) in ws.iter().enumerate() {
            m.write(gpu, i, w)?;
        }
        Ok(m)
    }

    /// A stack of `count` slots for matrices shaped like `like` (same format, rows and
    /// columns), filled later by [`GpuMatrix::write`]: the device's slots for experts
    /// fetched as routed.
    pub fn slab(gpu: &Gpu, like: &QMatrix, count: usize) -> Result<GpuMatrix> {
        Self::slab_with(gpu, like, count, None)
    }

    fn slab_with(gpu: &Gpu, like: &QMatrix, count: usize, layout: Option<LaneLayout>) -> Result<GpuMatrix> {
        let parts = packed(like)?; // refuses a format without a kernel
        let (base, source, per_unit, items, acts) = format_kernel(like.ty);
        let per_row = like.cols / per_unit;
        let layout = layout.unwrap_or_else(|| LaneLayout::for_matrix(gpu, like.ty, like.rows, per_row * items));
        layout.check(gpu, like.ty)?;
        // one buffer per part, matrix i's bytes at i times the part's length
        let weights: Vec<wgpu::Buffer> = parts.iter().map(|p| gpu.buffer(base, (p.len() * count.max(1)) as u64)).collect::<Result<_>>()?;
        let kernel = lane_kernel(gpu, base, source, layout);
        let tokens_kernel = matches!(like.ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K).then(|| tokens_kernel(gpu, base, source, layout));
        Ok(GpuMatrix { tokens_kernel, ty: like.ty, rows: like.rows, cols: like.cols, count, per_row, weights, kernel, layout, acts, sums: matches!(like.ty, GgmlType::Q4_K | GgmlType::Q5_K) })
    }

    /// Writes `w` into slot `i` of this stack (through the queue: in place before the
    /// next submission's commands run).
    pub fn write(&self, gpu: &Gpu, i: usize, w: &QMatrix) -> Result<()> {
        if (w.ty, w.rows, w.cols) != (self.ty, self.rows, self.cols) {
            return Err(Error::Invalid(format!("a {} {}x{} matrix for a stack of {} {}x{}", w.ty, w.rows, w.cols, self.ty, self.rows, self.cols)));
        }
        if i >= self.count {
            return Err(Error::Invalid(format!("slot {i} of a stack of {}", self.count)));
        }
        for (buf, p) in self.weights.iter().zip(packed(w)?) {
            gpu.queue.write_buffer(buf, (i * p.len()) as u64, &p);
        }
        Ok(())
    }

    /// How the kernels spread the rows over a workgroup.
    pub fn layout(&self) -> LaneLayout {
        self.layout
    }

    /// Matrices (slots) in the stack.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Output features (of one matrix of a stack).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// How the kernel wants activations quantized (`None`: f32): two matrices with the
    /// same format and width can share one [`GpuMatrix::quantize`].
    pub fn act_format(&self) -> Option<ActFormat> {
        self.acts
    }

    /// Whether a product over stacked experts can take [`Experts::tiles`] (the format has
    /// a several-row kernel).
    pub fn takes_tiles(&self) -> bool {
        self.tokens_kernel.is_some()
    }

    /// The device buffers holding the weights.
    pub fn buffers(&self) -> &[wgpu::Buffer] {
        &self.weights
    }

    /// `x · Wᵀ` for `x` holding whole rows of `cols` values: uploads, runs, reads back.
    pub fn run(&self, gpu: &Gpu, x: &[f32]) -> Result<Vec<f32>> {
        let cols = self.cols();
        if cols == 0 || !x.len().is_multiple_of(cols) {
            return Err(Error::Invalid(format!("matrix product: input length {} is not a multiple of {cols}", x.len())));
        }
        let n = x.len() / cols;
        let rows = self.rows();
        let (xb, y) = (gpu.upload("x", x)?, gpu.output("y", n * rows));
        let mut enc = Recorder::new(gpu);
        self.record(&mut enc, &xb, &y, n)?;
        enc.submit();
        gpu.read_f32(&y, n * rows)
    }

    /// Records `y = x · Wᵀ` for `n` rows of `x` (quantizing them first where the
    /// kernel reads quantized activations).
    pub fn record(&self, rec: &mut Recorder, x: &wgpu::Buffer, y: &wgpu::Buffer, n: usize) -> Result<()> {
        let q = self.quantize(rec, x, n)?;
        self.record_quantized(rec, x, q.as_ref(), y, n, None)
    }

    /// Records `y += x · Wᵀ` for `n` rows of `x` (a residual add in the same dispatch).
    pub fn record_add(&self, rec: &mut Recorder, x: &wgpu::Buffer, y: &wgpu::Buffer, n: usize) -> Result<()> {
        let q = self.quantize(rec, x, n)?;
        self.record_inner(rec, x, q.as_ref(), y, n, None, true)
    }

    /// Records the quantization of `n` rows of `x` as this matrix's kernel reads them
    /// (`None` when it reads f32): matrices of the same format and width can share it.
    pub fn quantize(&self, rec: &mut Recorder, x: &wgpu::Buffer, n: usize) -> Result<Option<QuantizedRows>> {
        self.acts.map(|format| quantize::record(rec, format, x, n * self.cols)).transpose()
    }

    /// [`GpuMatrix::quantize`] of silu(g) · u (SwiGLU) for `n` rows, in one pass; `None`
    /// when this matrix reads f32 (the caller then applies SwiGLU itself).
    pub fn quantize_swiglu(&self, rec: &mut Recorder, g: &wgpu::Buffer, u: &wgpu::Buffer, n: usize) -> Result<Option<QuantizedRows>> {
        self.acts.map(|format| quantize::record_swiglu(rec, format, g, u, n * self.cols)).transpose()
    }

    /// Records `out_rows` groups of `rows` outputs into `y`: `x · Wᵀ` of the activation
    /// rows (`q`, from [`GpuMatrix::quantize`] of `x`, for quantized kernels), or with
    /// `experts`, row group z from the expert `ids[z]` of the stack.
    #[allow(clippy::too_many_arguments)]
    pub fn record_quantized(&self, rec: &mut Recorder, x: &wgpu::Buffer, q: Option<&QuantizedRows>, y: &wgpu::Buffer, out_rows: usize, experts: Option<Experts>) -> Result<()> {
        self.record_inner(rec, x, q, y, out_rows, experts, false)
    }

    /// [`GpuMatrix::record_quantized`] adding to `y` instead of overwriting it.
    #[allow(clippy::too_many_arguments)]
    pub fn record_quantized_add(&self, rec: &mut Recorder, x: &wgpu::Buffer, q: Option<&QuantizedRows>, y: &wgpu::Buffer, out_rows: usize, experts: Option<Experts>) -> Result<()> {
        self.record_inner(rec, x, q, y, out_rows, experts, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn record_inner(&self, rec: &mut Recorder, x: &wgpu::Buffer, q: Option<&QuantizedRows>, y: &wgpu::Buffer, out_rows: usize, experts: Option<Experts>, accumulate: bool) -> Result<()> {
        let mut bufs: Vec<&wgpu::Buffer> = self.weights.iter().collect();
        match (self.acts, q) {
            (None, _) => bufs.push(x),
            (Some(_), Some(q)) => {
                bufs.extend([&q.xq, &q.xs]);
                if self.sums {
                    bufs.push(&q.bsums);
                }
            }
            (Some(_), None) => return Err(Error::Invalid("matrix product: this format reads quantized activations".into())),
        }
        bufs.push(y);
        let (ids, indexed, act_div) = match &experts {
            Some(e) => (e.ids, 1, e.act_div.max(1)),
            None if self.count == 1 => (&rec.gpu().zero_word, 0, 1),
            None => return Err(Error::Invalid("matrix product over a stack of experts needs their ids".into())),
        };
        let mut bound: Vec<(u32, &wgpu::Buffer)> = bufs.iter().enumerate().map(|(i, b)| (i as u32, *b)).collect();
        bound.push((8, ids));
        let max = super::kernel::MAX_GROUPS as usize;
        if out_rows == 0 || out_rows > max {
            return Err(Error::Invalid(format!("matrix product: {out_rows} output row groups (1..={max} per dispatch)")));
        }
        let dims = |rows_per_group: usize| {
            let (gx, gy) = super::kernel::grid(self.rows.div_ceil(rows_per_group));
            ([self.rows as u32, self.per_row as u32, out_rows as u32, gx as u32, indexed, act_div as u32, accumulate as u32], gx as u32, gy as u32)
        };
        // the several-row kernels take one row per invocation
        let (tokens_dims, tx, ty) = dims(GROUP / self.layout.lanes);
        match (&self.tokens_kernel, experts.and_then(|e| e.tiles)) {
            // stacked experts grouped into tiles: each expert's weights read once for up to
            // eight of the pairs using it (the same outputs, bit for bit)
            (Some(k), Some(tiles)) => {
                if tiles.count > max {
                    return Err(Error::Invalid(format!("matrix product: {} expert tiles (at most {max} per dispatch)", tiles.count)));
                }
                bound.pop();
                bound.push((8, &tiles.buf));
                k.record_bound(rec, &bound, bufs.len() as u32, &tokens_dims, [tx, ty, tiles.count as u32])
            }
            // several activation rows of a plain matrix: each weight block read once for
            // up to eight of them (the same outputs, bit for bit)
            (Some(k), None) if indexed == 0 && out_rows > 1 => k.record_bound(rec, &bound, bufs.len() as u32, &tokens_dims, [tx, ty, out_rows.div_ceil(TOKENS_PER_GROUP) as u32]),
            _ => {
                let (dims, gx, gy) = dims(self.layout.rows_per_group());
                self.kernel.record_bound(rec, &bound, bufs.len() as u32, &dims, [gx, gy, out_rows as u32])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gpu_or_skip, values};
    use super::*;
    use crate::compute::cpu;

    #[test]
    fn gpu_f32_gemv_matches_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        // 8, 32, 8 and 16 lanes per row
        for (rows, cols, n) in [(1, 1, 1), (37, 100, 3), (70_001, 8, 2), (4, 13, 2)] {
            let wv = values(rows * cols, 9);
            let w = QMatrix::new(GgmlType::F32, rows, cols, wv.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into());
            let x = values(n * cols, 5);
            let want = cpu::matmul(&w, &x);
            let m = GpuMatrix::new(&gpu, &w).unwrap();
            let (xb, y) = (gpu.upload("x", &x).unwrap(), gpu.output("y", n * rows));
            let mut enc = Recorder::new(&gpu);
            m.record(&mut enc, &xb, &y, n).unwrap();
            enc.submit();
            for (i, (a, b)) in gpu.read_f32(&y, n * rows).unwrap().iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-5 * (cols as f32).sqrt() * b.abs().max(1.0), "{rows}x{cols} n={n} [{i}]: gpu {a} vs cpu {b}");
            }
        }
        // a format without a kernel is refused by name
        let q4_1 = QMatrix::new(GgmlType::Q4_1, 1, 32, vec![0u8; 20].into());
        assert!(GpuMatrix::new(&gpu, &q4_1).err().unwrap().to_string().contains("Q4_1"));
    }

    #[test]
    fn every_lane_layout_matches_the_cpu_backend_and_keeps_its_lanes_bits() {
        let Some(gpu) = gpu_or_skip() else { return };
        // row counts that leave the last workgroup part empty; 80 Q8_0 blocks or 40 Q4_K
        // items per row (an odd number of turns for most lane counts), 3 items for 768
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q5_K] {
            for (rows, cols, n) in [(37, 2560, 2), (70, 768, 1)] {
                let w = super::super::tests::random_matrix(ty, rows, cols, rows as u64 + 3, &[(0, 2e-3), (2, 1e-3)]);
                let x = values(n * cols, cols as u64 + 1);
                let cpu = cpu::matmul(&w, &x);
                let mut row = vec![0.0f32; cols];
                let mags: Vec<f64> = (0..n * rows)
                    .map(|i| {
                        let (t, r) = (i / rows, i % rows);
                        crate::quant::dequantize(ty, &w.data[r * w.row_bytes()..(r + 1) * w.row_bytes()], &mut row);
                        row.iter().zip(&x[t * cols..(t + 1) * cols]).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum()
                    })
                    .collect();
                let uploaded = GpuMatrix::new(&gpu, &w).unwrap();
                for lanes in [8, 32, 128] {
                    let plain = LaneLayout { lanes, ..LaneLayout::for_items(0) };
                    let want = uploaded.with_layout(&gpu, plain).unwrap().run(&gpu, &x).unwrap();
                    for (i, (g, c)) in want.iter().zip(&cpu).enumerate() {
                        assert!((*g as f64 - *c as f64).abs() <= 1e-5 * mags[i] + 1e-6, "{ty} {rows}x{cols} {plain:?} [{i}]: gpu {g} vs cpu {c}");
                    }
                    // more rows per invocation and subgroup sums (where the device has
                    // them) add in the same order
                    let subgroups = gpu.subgroup_size().is_some();
                    let k_quant = matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K);
                    for (rows_per_lane, subgroup_sums) in [(1, subgroups), (2, false), (4, false), (2, subgroups), (4, subgroups)] {
                        if rows_per_lane > 1 && !k_quant {
                            continue;
                        }
                        let layout = LaneLayout { lanes, rows_per_lane, subgroup_sums };
                        let got = uploaded.with_layout(&gpu, layout).unwrap().run(&gpu, &x).unwrap();
                        assert_eq!(got, want, "{ty} {rows}x{cols} {layout:?}");
                    }
                }
            }
        }
        // formats whose kernels take one row per invocation refuse more
        let q6 = super::super::tests::random_matrix(GgmlType::Q6_K, 2, 256, 1, &[(0, 1e-3)]);
        assert!(GpuMatrix::new(&gpu, &q6).unwrap().with_layout(&gpu, LaneLayout { rows_per_lane: 2, ..LaneLayout::for_items(32) }).is_err());
    }

    #[test]
    fn padding_keeps_every_block() {
        for ty in [GgmlType::Q3_K, GgmlType::Q6_K] {
            let w = super::super::tests::random_matrix(ty, 2, 512, 3, &[]);
            let (block, slot) = (ty.type_size(), ty.type_size().next_multiple_of(4));
            let p = pad_blocks(&w.data, block);
            assert_eq!(p.len(), 4 * slot, "{ty}");
            let back: Vec<u8> = p.chunks_exact(slot).flat_map(|s| s[..block].to_vec()).collect();
            assert_eq!(back, w.data.to_vec(), "{ty}");
        }
    }

    #[test]
    fn device_bytes_are_what_upload_makes() {
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
            let w = super::super::tests::random_matrix(ty, 3, 512, 1, &[(0, 1e-3)]);
            let made: usize = packed(&w).unwrap().iter().map(Vec::len).sum();
            assert_eq!(device_bytes(&w), made as u64, "{ty}");
        }
    }

    #[test]
    fn gpu_products_added_to_the_output_match_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::F32] {
            let (rows, cols, n) = (19, 512, 2);
            let w = match ty {
                GgmlType::F32 => QMatrix::new(ty, rows, cols, values(rows * cols, 4).iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into()),
                // finite block scales (Q4_K, Q5_K: their minimums' scale too)
                _ => super::super::tests::random_matrix(ty, rows, cols, 7, &[(0, 2e-3), (2, 1e-3)]),
            };
            let x = values(n * cols, 8);
            let y0 = values(n * rows, 9);
            let prod = cpu::matmul(&w, &x);
            let m = GpuMatrix::new(&gpu, &w).unwrap();
            let (xb, yb) = (gpu.upload("x", &x).unwrap(), gpu.upload("y", &y0).unwrap());
            let mut enc = Recorder::new(&gpu);
            m.record_add(&mut enc, &xb, &yb, n).unwrap();
            enc.submit();
            for (i, (g, (a, b))) in gpu.read_f32(&yb, n * rows).unwrap().iter().zip(y0.iter().zip(&prod)).enumerate() {
                let want = a + b;
                assert!((g - want).abs() <= 1e-4 * want.abs().max(1.0), "{ty} [{i}]: gpu {g} vs cpu {want}");
            }
        }
    }
}
