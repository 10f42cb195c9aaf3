//! Weights repacked at load for the AVX-512 VNNI kernels: sixteen rows interleaved, one
//! per 32-bit lane of a 512-bit register, so that every `vpdpbusd` serves sixteen rows
//! and a row's sums never leave their lane (no horizontal reductions), at any number of
//! tokens. Q8_0 ([`PackedQ8_0`]), Q4_K and Q5_K ([`PackedQ4K`]) and Q6_K ([`PackedQ6K`]),
//! the formats of the usual Q8_0, Q4_K_M and Q5_K_M files.
//!
//! Each layout has one kernel for every batch size and a scalar statement of its float
//! order (`dot_row`) that the tests hold the kernel to bit for bit, so a token's results
//! never depend on the tokens that share its step.

use std::sync::Arc;

use rayon::prelude::*;

use super::{ActRow, Activations, GgmlType, OutGrid};

mod q4_k;
mod q6_k;
mod q8_0;

pub use q4_k::PackedQ4K;
pub use q6_k::PackedQ6K;
pub use q8_0::PackedQ8_0;

/// Rows interleaved in one group: one per 32-bit lane of a 512-bit register.
pub const GROUP_ROWS: usize = 16;

/// 64 bytes: a 32-bit lane for each of sixteen rows, aligned for full-width loads.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);
const _: () = assert!(std::mem::size_of::<Line>() == 64 && std::mem::align_of::<Line>() == 64);

/// Runs `f(group, item)` over every group's share of the packed arrays, on the thread
/// pool when the matrix is large (packing a big model's experts is seconds of copying).
fn for_each_group<I: Iterator + Send>(bytes: usize, items: I, f: impl Fn(usize, I::Item) + Sync + Send)
where
    I::Item: Send,
{
    if bytes >= 1 << 20 {
        items.enumerate().par_bridge().for_each(|(g, x)| f(g, x));
    } else {
        items.enumerate().for_each(|(g, x)| f(g, x));
    }
}

/// A matrix in one of the interleaved layouts.
#[derive(Debug)]
pub enum Packed {
    /// Q8_0 rows.
    Q8_0(PackedQ8_0),
    /// Q4_K or Q5_K rows.
    Q4K(PackedQ4K),
    /// Q6_K rows.
    Q6K(PackedQ6K),
}

impl Packed {
    /// `rows × cols` values of type `ty` (GGUF layout) repacked, if `ty` has a layout.
    pub fn pack(ty: GgmlType, data: &[u8], rows: usize, cols: usize) -> Option<Packed> {
        match ty {
            GgmlType::Q8_0 => Some(Packed::Q8_0(PackedQ8_0::pack(data, rows, cols))),
            GgmlType::Q4_K => Some(Packed::Q4K(PackedQ4K::pack(data, rows, cols))),
            GgmlType::Q5_K => Some(Packed::Q4K(PackedQ4K::pack_q5(data, rows, cols))),
            GgmlType::Q6_K => Some(Packed::Q6K(PackedQ6K::pack(data, rows, cols))),
            _ => None,
        }
    }

    fn rows(&self) -> usize {
        match self {
            Packed::Q8_0(p) => p.rows(),
            Packed::Q4K(p) => p.rows(),
            Packed::Q6K(p) => p.rows(),
        }
    }

    fn cols(&self) -> usize {
        match self {
            Packed::Q8_0(p) => p.cols(),
            Packed::Q4K(p) => p.cols(),
            Packed::Q6K(p) => p.cols(),
        }
    }
}

/// A run of whole groups of a [`Packed`] matrix: what a matrix that is a row slice of a
/// packed one (an expert of a stacked tensor) holds, without copying.
#[derive(Clone, Debug)]
pub struct PackedRows {
    packed: Arc<Packed>,
    first_group: usize,
}

impl PackedRows {
    /// All rows of `packed`.
    pub fn new(packed: Arc<Packed>) -> PackedRows {
        PackedRows { packed, first_group: 0 }
    }

    /// Rows `r0..r1` (relative to this view), if they fall on group boundaries (`r1` may
    /// also be the last row of the underlying matrix).
    pub fn slice(&self, r0: usize, r1: usize) -> Option<PackedRows> {
        let start = self.first_group * GROUP_ROWS;
        let rows = self.packed.rows();
        let end_ok = r1.is_multiple_of(GROUP_ROWS) || start + r1 == rows;
        (r0.is_multiple_of(GROUP_ROWS) && end_ok && start + r1 <= rows).then(|| PackedRows { packed: self.packed.clone(), first_group: self.first_group + r0 / GROUP_ROWS })
    }

    /// Row `r` (relative to this view) times one token, by the layout's reference order
    /// (scalar code; what the kernels must equal bit for bit).
    pub fn dot_row(&self, r: usize, a: ActRow<'_>) -> f32 {
        let r = self.first_group * GROUP_ROWS + r;
        match (&*self.packed, a) {
            (Packed::Q8_0(p), ActRow::Q8_0(a)) => p.dot_row(r, a),
            (Packed::Q4K(p), ActRow::Q8K(a)) => p.dot_row(r, a),
            (Packed::Q6K(p), ActRow::Q8K(a)) => p.dot_row(r, a),
            _ => panic!("packed rows with activations of another kind"),
        }
    }
}

/// Whether this CPU runs the packed kernels (AVX-512 VNNI; `ODMOE_NO_VNNI=1` says no):
/// matrices are packed only where it does.
pub fn packing_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::dot::has_vnni();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The rows `r0..r0 + out.rows()` of `w` (relative to the view; `r0` a multiple of
/// [`GROUP_ROWS`]) times every token of `acts` (of the kind the format takes), into `out`.
/// Only where [`packing_available`] holds: matrices are packed only there.
pub fn dot_packed_into(w: &PackedRows, r0: usize, acts: &Activations, out: &mut OutGrid) {
    assert!(r0.is_multiple_of(GROUP_ROWS), "packed rows start on a group");
    assert!(w.first_group * GROUP_ROWS + r0 + out.rows() <= w.packed.rows(), "rows outside the matrix");
    assert_eq!(acts.k(), w.packed.cols(), "activations of the wrong width");
    #[cfg(target_arch = "x86_64")]
    {
        assert!(packing_available(), "packed weights need AVX-512 VNNI");
        let first = w.first_group + r0 / GROUP_ROWS;
        // SAFETY: the CPU features were checked just above; the activations' kind is
        // checked by the accessors the kernels read them through.
        unsafe {
            match &*w.packed {
                Packed::Q8_0(p) => vnni::dot_groups(p, first, acts, out),
                Packed::Q4K(p) => vnni::dot_groups(p, first, acts, out),
                Packed::Q6K(p) => vnni::dot_groups(p, first, acts, out),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (acts, out);
        unreachable!("packed weights need AVX-512 VNNI");
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::*;

    /// Tokens whose sums one pass over a group keeps in registers, in every layout.
    const MAX_TOKENS: usize = 8;

    /// A layout's kernel: one group of rows times `T ≤ MAX_TOKENS` consecutive tokens.
    pub(super) trait GroupTiles {
        /// Group `g` times tokens `t0..t0 + T`: per token, the sixteen rows' results in
        /// lane order. Inlined into [`dot_groups`], which enables the CPU features.
        unsafe fn group_tokens<const T: usize>(&self, g: usize, acts: &Activations, t0: usize) -> [__m512; T];
    }

    #[inline(always)]
    unsafe fn tile<K: GroupTiles, const T: usize>(k: &K, g: usize, acts: &Activations, t0: usize, out: &mut OutGrid, r: usize, live: usize) {
        let y = k.group_tokens::<T>(g, acts, t0);
        let mask: __mmask16 = if live == GROUP_ROWS { !0 } else { (1 << live) - 1 };
        for (i, y) in y.iter().enumerate() {
            match out.run_mut(r, t0 + i, live) {
                Some(run) => _mm512_mask_storeu_ps(run.as_mut_ptr(), mask, *y),
                None => {
                    let mut v = [0.0f32; GROUP_ROWS];
                    _mm512_storeu_ps(v.as_mut_ptr(), *y);
                    for (j, &x) in v[..live].iter().enumerate() {
                        out.set(r + j, t0 + i, x);
                    }
                }
            }
        }
    }

    /// Groups `first..` of `k` (as many as `out` has rows) times every token: eight
    /// tokens at a time while more than eight remain, then the rest in one tile of their
    /// exact number. A batched step's experts see a handful of tokens each, and every
    /// extra tile is another pass over the group (with tiles of eight, four, two and one,
    /// five tokens taking two passes, a Mixtral-shaped 16-sequence step took 5–7% more
    /// time).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/VL/BW/VNNI and F16C; `acts` must be the format's
    /// activations made where that holds, of the matrix's width.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    pub(super) unsafe fn dot_groups<K: GroupTiles>(k: &K, first: usize, acts: &Activations, out: &mut OutGrid) {
        let n = acts.n_rows();
        let mut r = 0;
        while r < out.rows() {
            let g = first + r / GROUP_ROWS;
            let live = GROUP_ROWS.min(out.rows() - r);
            let mut t = 0;
            while n - t > MAX_TOKENS {
                tile::<K, MAX_TOKENS>(k, g, acts, t, out, r, live);
                t += MAX_TOKENS;
            }
            match n - t {
                8 => tile::<K, 8>(k, g, acts, t, out, r, live),
                7 => tile::<K, 7>(k, g, acts, t, out, r, live),
                6 => tile::<K, 6>(k, g, acts, t, out, r, live),
                5 => tile::<K, 5>(k, g, acts, t, out, r, live),
                4 => tile::<K, 4>(k, g, acts, t, out, r, live),
                3 => tile::<K, 3>(k, g, acts, t, out, r, live),
                2 => tile::<K, 2>(k, g, acts, t, out, r, live),
                1 => tile::<K, 1>(k, g, acts, t, out, r, live),
                _ => {}
            }
            r += GROUP_ROWS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests::random_row;
    use crate::quant::{dot, ActKind};

    fn matrix(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        (0..rows).flat_map(|r| random_row(ty, cols, seed + r as u64)).collect()
    }

    fn packed(ty: GgmlType, data: &[u8], rows: usize, cols: usize) -> PackedRows {
        PackedRows::new(Arc::new(Packed::pack(ty, data, rows, cols).expect("a packed layout")))
    }

    #[test]
    fn reference_order_equals_the_gguf_dot_product_bit_for_bit() {
        // (one order of float operations for every kernel, see quant/dot.rs)
        // rows not a multiple of 16; several blocks
        for (ty, rows, cols) in [(GgmlType::Q8_0, 21, 96), (GgmlType::Q4_K, 19, 512), (GgmlType::Q5_K, 20, 512), (GgmlType::Q6_K, 18, 512)] {
            let data = matrix(ty, rows, cols, 3);
            let p = packed(ty, &data, rows, cols);
            let x: Vec<f32> = (0..cols).map(|i| ((i * 29 % 37) as f32 - 18.0) / 7.0).collect();
            let acts = Activations::new(ActKind::for_weights(ty), &x, cols);
            let rb = data.len() / rows;
            for r in 0..rows {
                let want = dot(ty, &data[r * rb..(r + 1) * rb], acts.row(0));
                let got = p.dot_row(r, acts.row(0));
                assert_eq!(got.to_bits(), want.to_bits(), "{ty} row {r}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn kernels_equal_the_reference_bit_for_bit_at_every_batch_size() {
        if !packing_available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        // rows not a multiple of 16, odd numbers of blocks; token counts cover every tile
        for (ty, rows, cols) in [(GgmlType::Q8_0, 37, 160), (GgmlType::Q4_K, 35, 768), (GgmlType::Q5_K, 34, 768), (GgmlType::Q6_K, 33, 768)] {
            let data = matrix(ty, rows, cols, 11);
            let p = packed(ty, &data, rows, cols);
            for n in [1usize, 2, 3, 4, 5, 6, 7, 8, 9, 14, 15, 16] {
                let x: Vec<f32> = (0..n * cols).map(|i| ((i * 17 % 31) as f32 - 15.0) / 9.0).collect();
                let acts = Activations::new(ActKind::for_weights(ty), &x, cols);
                // windows of one group each, as threads' shares are
                let mut y = vec![0.0f32; rows * n];
                let mut windows = OutGrid::token_major_chunks(&mut y, rows, n, GROUP_ROWS);
                for (i, w) in windows.iter_mut().enumerate() {
                    dot_packed_into(&p, i * GROUP_ROWS, &acts, w);
                }
                drop(windows);
                for t in 0..n {
                    for r in 0..rows {
                        assert_eq!(y[t * rows + r].to_bits(), p.dot_row(r, acts.row(t)).to_bits(), "{ty}: n {n} token {t} row {r}");
                    }
                }
            }
        }
    }

    #[test]
    fn views_slice_on_group_boundaries_only() {
        let (ty, rows, cols) = (GgmlType::Q8_0, 40, 32);
        let p = packed(ty, &matrix(ty, rows, cols, 1), rows, cols);
        assert!(p.slice(0, 16).is_some() && p.slice(16, 40).is_some() && p.slice(32, 40).is_some());
        assert!(p.slice(8, 16).is_none() && p.slice(0, 20).is_none());
        let tail = p.slice(16, 40).unwrap();
        let acts = Activations::new(ActKind::Q8_0, &[0.5f32; 32], cols);
        assert_eq!(tail.dot_row(3, acts.row(0)).to_bits(), p.dot_row(19, acts.row(0)).to_bits());
        assert!(Packed::pack(GgmlType::Q3_K, &[], 0, 256).is_none(), "no layout for Q3_K");
    }
}
