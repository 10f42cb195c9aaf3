//! Strided row copies on the GPU (`shaders/copy_rows.wgsl`): a part of each row of one
//! buffer into (a part of each row of) another. Latent attention splits rows (the
//! compressed keys from their rope part, each query head's rope part from the rest) and
//! joins them again; a buffer-to-buffer copy per row would be thousands of commands a
//! layer. The CPU reference is [`copy_rows`].

use super::kernel::{grid, Kernel};
use super::recorder::Recorder;
use super::Gpu;
use crate::{Error, Result};

/// Where rows sit in a buffer: the first row's offset and the distance between rows, in
/// values.
#[derive(Clone, Copy, Debug)]
pub struct Rows {
    /// Offset of row 0.
    pub off: usize,
    /// Distance from one row to the next.
    pub stride: usize,
}

impl Rows {
    /// Rows `stride` apart, the first at `off`.
    pub fn new(off: usize, stride: usize) -> Rows {
        Rows { off, stride }
    }
}

/// The compiled kernels.
pub struct CopyRows {
    kernel: Kernel,
    scatter: Kernel,
}

impl CopyRows {
    /// Compiles the kernel.
    pub fn new(gpu: &Gpu) -> CopyRows {
        let src = include_str!("../../../shaders/copy_rows.wgsl");
        CopyRows { kernel: Kernel::new(gpu, "copy_rows", src, "main"), scatter: Kernel::new(gpu, "scatter_rows", src, "scatter") }
    }

    /// Records copying `width` values of each of `rows` rows from `src` (laid out as
    /// `from`) to `dst` (laid out as `to`).
    #[allow(clippy::too_many_arguments)]
    pub fn record(&self, rec: &mut Recorder, src: &wgpu::Buffer, from: Rows, dst: &wgpu::Buffer, to: Rows, rows: usize, width: usize) -> Result<()> {
        let total = rows * width;
        if total == 0 {
            return Ok(());
        }
        if total > u32::MAX as usize || from.off + (rows - 1) * from.stride + width > u32::MAX as usize || to.off + (rows - 1) * to.stride + width > u32::MAX as usize {
            return Err(Error::Invalid(format!("row copy of {rows} × {width} values past 2^32 values")));
        }
        let groups = total.div_ceil(256);
        let (per_y, gy) = grid(groups);
        let dims = [rows as u32, width as u32, from.stride as u32, from.off as u32, to.stride as u32, to.off as u32, per_y as u32];
        self.kernel.record(rec, &[src, dst], &dims, [per_y as u32, gy as u32, 1])
    }
}

impl CopyRows {
    /// Records copying `rows` rows of `width` values, row r from value `src_off + r ·
    /// width` of `src`, to row `idx[r]` of `dst` (`idx`: u32 row numbers).
    #[allow(clippy::too_many_arguments)]
    pub fn scatter(&self, rec: &mut Recorder, src: &wgpu::Buffer, src_off: usize, dst: &wgpu::Buffer, idx: &wgpu::Buffer, rows: usize, width: usize) -> Result<()> {
        let total = rows * width;
        if total == 0 {
            return Ok(());
        }
        if src_off + total > u32::MAX as usize {
            return Err(Error::Invalid(format!("row scatter of {rows} × {width} values past 2^32 values")));
        }
        let groups = total.div_ceil(256);
        let (per_y, gy) = grid(groups);
        let dims = [rows as u32, width as u32, src_off as u32, per_y as u32];
        self.scatter.record_bound(rec, &[(0, src), (1, dst), (3, idx)], 4, &dims, [per_y as u32, gy as u32, 1])
    }
}

/// The CPU reference of [`CopyRows::scatter`].
pub fn scatter_rows(src: &[f32], src_off: usize, dst: &mut [f32], idx: &[u32], width: usize) {
    for (r, &i) in idx.iter().enumerate() {
        let (s, d) = (src_off + r * width, i as usize * width);
        dst[d..d + width].copy_from_slice(&src[s..s + width]);
    }
}

/// The CPU reference: [`CopyRows::record`] on host slices.
pub fn copy_rows(src: &[f32], from: Rows, dst: &mut [f32], to: Rows, rows: usize, width: usize) {
    for r in 0..rows {
        let (s, d) = (from.off + r * from.stride, to.off + r * to.stride);
        dst[d..d + width].copy_from_slice(&src[s..s + width]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gpu_or_skip, values};
    use super::*;

    #[test]
    fn gpu_row_copies_match_the_cpu_reference() {
        let Some(gpu) = gpu_or_skip() else { return };
        let k = CopyRows::new(&gpu);
        // a middle part of each row into contiguous rows, contiguous rows into the end of
        // wider rows at an offset, and enough values to spill into a second grid row
        for (rows, width, from, to) in [(5, 3, Rows::new(2, 7), Rows::new(0, 3)), (4, 6, Rows::new(1, 6), Rows::new(10, 9)), (70_000, 300, Rows::new(0, 300), Rows::new(5, 301))] {
            let src = values(from.off + rows * from.stride, 1);
            let before = values(to.off + rows * to.stride + 3, 2);
            let mut want = before.clone();
            copy_rows(&src, from, &mut want, to, rows, width);
            let (sb, db) = (gpu.upload("src", &src).unwrap(), gpu.upload("dst", &before).unwrap());
            let mut rec = Recorder::new(&gpu);
            k.record(&mut rec, &sb, from, &db, to, rows, width).unwrap();
            rec.submit();
            // values outside the copied parts keep theirs
            assert_eq!(gpu.read_f32(&db, want.len()).unwrap(), want, "{rows} × {width} from {from:?} to {to:?}");
        }
    }

    #[test]
    fn gpu_row_scatters_match_the_cpu_reference() {
        let Some(gpu) = gpu_or_skip() else { return };
        let k = CopyRows::new(&gpu);
        for (rows, width, src_off, dst_rows) in [(1, 3, 0, 4), (5, 7, 14, 9), (300, 130, 5, 1000)] {
            let src = values(src_off + rows * width, 4);
            let idx: Vec<u32> = (0..rows as u32).map(|r| (r * 7 + 3) % dst_rows as u32).collect();
            // distinct destinations (rows < dst_rows and 7 is prime to each dst_rows here)
            let before = values(dst_rows * width, 5);
            let mut want = before.clone();
            scatter_rows(&src, src_off, &mut want, &idx, width);
            let (sb, db) = (gpu.upload("src", &src).unwrap(), gpu.upload("dst", &before).unwrap());
            let ib = gpu.storage("idx", bytemuck::cast_slice(&idx)).unwrap();
            let mut rec = Recorder::new(&gpu);
            k.scatter(&mut rec, &sb, src_off, &db, &ib, rows, width).unwrap();
            rec.submit();
            assert_eq!(gpu.read_f32(&db, want.len()).unwrap(), want, "{rows} rows of {width}");
        }
    }
}
