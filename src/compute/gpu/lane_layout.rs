//! How the matrix kernels (`shaders/gemv_lanes.wgsl` and the format kernels compiled
//! after it) spread a matrix over a workgroup: lanes per row, rows per invocation,
//! subgroup sums; which layout a matrix gets; and the kernel compiled for a layout.

use super::kernel::Kernel;
use super::Gpu;
use crate::quant::GgmlType;
use crate::{Error, Result};
use std::sync::Arc;

/// Invocations per workgroup of the lane kernels (`shaders/gemv_lanes.wgsl`).
pub(super) const GROUP: usize = 256;

/// How a lane kernel (`shaders/gemv_lanes.wgsl`) spreads a matrix over a workgroup's 256
/// invocations. Products use [`LaneLayout::for_matrix`]; [`super::matrix::GpuMatrix::with_layout`]
/// builds others to be measured against it (`benches/gpu_gemv`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneLayout {
    /// Invocations sharing a row (8 to 128, a power of two), their parts summed in a tree.
    pub lanes: usize,
    /// Rows each invocation computes, each activation load serving all of them (1, 2 or
    /// 4; above 1 only for Q4_K and Q5_K).
    pub rows_per_lane: usize,
    /// The last levels of the row sums by subgroup shuffles instead of shared memory and
    /// barriers (Q8_0, Q4_0, Q5_0, Q4_K and Q5_K, on devices with subgroup operations;
    /// the same bits).
    pub subgroup_sums: bool,
}

/// Invocations per matrix product below which the layouts keep one row per invocation:
/// a product needs this many to keep an H200's memory busy (see `for_matrix`).
const MIN_INVOCATIONS: usize = 48 * 1024;

impl LaneLayout {
    /// One row per invocation, no subgroup sums: 32 lanes, or 16 or 8 for rows of few work
    /// items (blocks, or groups within blocks; an expert's down projection has a dozen
    /// Q4_K items), so fewer lanes idle and a workgroup covers more rows.
    pub fn for_items(items: usize) -> LaneLayout {
        let lanes = match items {
            0..=8 => 8,
            9..=16 => 16,
            _ => 32,
        };
        LaneLayout { lanes, rows_per_lane: 1, subgroup_sums: false }
    }

    /// The layout products of `rows` rows of `items` work items in format `ty` use.
    /// Measured on an H200 (`benches/gpu_gemv`, every layout against the plain one in the
    /// same run): subgroup sums were 1–6% faster wherever they apply, and Q4_K was fastest
    /// with about sixteen work items per invocation while 48k or more invocations remain
    /// (14336 rows of 4096 columns: 16 lanes and 4 rows each, with subgroup sums 1.18× the
    /// plain layout; 4096 rows of 14336: 32 lanes and 2 rows, 1.12×); see
    /// [`k_quant_rows`]. Small matrices (an expert's) keep [`LaneLayout::for_items`].
    pub fn for_matrix(gpu: &Gpu, ty: GgmlType, rows: usize, items: usize) -> LaneLayout {
        let subgroup_sums = Self::takes_subgroup_sums(ty) && gpu.subgroup_size().is_some();
        match k_quant_rows(rows, items) {
            Some((lanes, rows_per_lane)) if matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K) => LaneLayout { lanes, rows_per_lane, subgroup_sums },
            _ => LaneLayout { subgroup_sums, ..Self::for_items(items) },
        }
    }

    /// Whether `ty`'s kernel can take its row sums' last levels by subgroup shuffles.
    fn takes_subgroup_sums(ty: GgmlType) -> bool {
        matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q4_K | GgmlType::Q5_K)
    }

    /// An error unless `ty`'s kernel exists in this layout on `gpu`.
    pub(super) fn check(&self, gpu: &Gpu, ty: GgmlType) -> Result<()> {
        let lanes_ok = self.lanes.is_power_of_two() && (8..=128).contains(&self.lanes);
        let rows_ok = matches!(self.rows_per_lane, 1 | 2 | 4) && (self.rows_per_lane == 1 || matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K));
        let sums_ok = !self.subgroup_sums || (Self::takes_subgroup_sums(ty) && gpu.subgroup_size().is_some());
        if !lanes_ok || !rows_ok || !sums_ok {
            return Err(Error::Invalid(format!("no {ty} kernel for the lane layout {self:?}")));
        }
        Ok(())
    }

    /// The kernel's entry point in this layout.
    fn entry(&self) -> &'static str {
        if self.rows_per_lane > 1 {
            "main_rows"
        } else {
            "main"
        }
    }

    /// Rows a workgroup of the `main` kernel computes.
    pub(super) fn rows_per_group(&self) -> usize {
        GROUP / self.lanes * self.rows_per_lane
    }

    /// The name of kernel `base` in this layout (the default layouts keep the plain names
    /// profiles show).
    fn kernel_name(&self, base: &str) -> String {
        let mut name = base.to_string();
        if self.lanes != 32 {
            name += &format!("_{}", self.lanes);
        }
        if self.rows_per_lane != 1 {
            name += &format!("_r{}", self.rows_per_lane);
        }
        if self.subgroup_sums {
            name += "_sg";
        }
        name
    }

    /// `kernel_source` after `gemv_lanes.wgsl` in this layout (`subgroup`: the device's
    /// smallest subgroup size, for subgroup sums).
    fn source(&self, kernel_source: &str, subgroup: u32) -> String {
        let lanes_src = include_str!("../../../shaders/gemv_lanes.wgsl");
        let default = "const LANES: u32 = 32u;\nconst ROWS_PER_GROUP: u32 = 8u;\nconst ROWS_PER_LANE: u32 = 1u;\nconst SUBGROUP: u32 = 0u;";
        assert!(lanes_src.contains(default), "gemv_lanes.wgsl declares its layout constants together");
        let subgroup = if self.subgroup_sums { subgroup } else { 0 };
        let sized = format!("const LANES: u32 = {}u;\nconst ROWS_PER_GROUP: u32 = {}u;\nconst ROWS_PER_LANE: u32 = {}u;\nconst SUBGROUP: u32 = {subgroup}u;", self.lanes, GROUP / self.lanes, self.rows_per_lane);
        let mut source = lanes_src.replace(default, &sized);
        if self.subgroup_sums {
            let plain = "fn lower_levels(v: f32) -> f32 {\n    return v;\n}\n";
            assert!(source.contains(plain), "gemv_lanes.wgsl has the plain lower_levels");
            let shuffles = include_str!("../../../shaders/gemv_subgroup_sums.wgsl");
            let body = &shuffles[shuffles.find("fn lower_levels").expect("gemv_subgroup_sums.wgsl defines lower_levels")..];
            source = source.replace(plain, body);
        }
        source + kernel_source
    }
}

/// Lanes per row and rows per invocation for a Q4_K (or Q5_K) matrix of `rows` rows of
/// `items` work items: the most items per invocation up to sixteen with at least
/// [`MIN_INVOCATIONS`] invocations and no more lanes than items, then lanes nearest 32,
/// then more rows per invocation; `None` when no layout keeps that many invocations.
fn k_quant_rows(rows: usize, items: usize) -> Option<(usize, usize)> {
    let per_invocation = |lanes: usize, rows_per_lane: usize| (items * rows_per_lane).div_ceil(lanes);
    [8usize, 16, 32, 64]
        .into_iter()
        .flat_map(|lanes| [1usize, 2, 4].map(|r| (lanes, r)))
        .filter(|&(lanes, r)| lanes <= items && per_invocation(lanes, r) <= 16 && rows * lanes / r >= MIN_INVOCATIONS)
        .max_by_key(|&(lanes, r)| (per_invocation(lanes, r), 5 - lanes.trailing_zeros().abs_diff(5), r))
}

/// The `main` entry point of lane kernel `base` in `layout`.
pub(super) fn lane_kernel(gpu: &Gpu, base: &str, kernel_source: &'static str, layout: LaneLayout) -> Arc<Kernel> {
    gpu.kernel_with(&layout.kernel_name(base), || layout.source(kernel_source, gpu.subgroup_size().unwrap_or(0)), layout.entry())
}

/// The `main_tokens` entry point of lane kernel `base` with `layout`'s lanes (and so
/// `main`'s order of additions); it takes one row per invocation.
pub(super) fn tokens_kernel(gpu: &Gpu, base: &str, kernel_source: &'static str, layout: LaneLayout) -> Arc<Kernel> {
    let one_row = LaneLayout { lanes: layout.lanes, ..LaneLayout::for_items(0) };
    gpu.kernel_with(&one_row.kernel_name(&format!("{base}_tokens")), || one_row.source(kernel_source, 0), "main_tokens")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_layouts_are_the_fastest_measured() {
        // the H200's fastest layouts for the shapes measured (gate/up and down of a
        // Mixtral-sized FFN); an expert's small matrices keep one row per invocation
        assert_eq!(k_quant_rows(14336, 64), Some((16, 4)));
        assert_eq!(k_quant_rows(4096, 224), Some((32, 2)));
        assert_eq!(k_quant_rows(768, 32), None);
        assert_eq!(k_quant_rows(2048, 12), None);
    }
}
