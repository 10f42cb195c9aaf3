//! A routed layer's (token, expert) pairs grouped by expert on the GPU
//! (`shaders/expert_tiles.wgsl`): tiles of at most eight pairs sharing an expert, which
//! the several-row matrix kernels take so that a batched step reads each chosen expert's
//! weights once per tile rather than once per pair (sixteen tokens routed two of eight
//! experts make 32 pairs but read the eight experts once each). [`expert_tiles`] is the
//! CPU reference and builds the tiles of routes the CPU made (fetched experts).

use super::kernel::Kernel;
use super::recorder::Recorder;
use super::Gpu;
use crate::{Error, Result};

/// Pairs one tile holds (`TOKENS` of the several-row kernels).
pub const TILE: usize = 8;

/// Words per tile: the expert, the number of pairs, the pairs' indices.
pub const TILE_WORDS: usize = 2 + TILE;

/// Experts the kernel can group (its shared memory holds a tile offset per expert).
pub const MAX_EXPERTS: usize = 1024;

/// The most tiles `pairs` pairs over `experts` experts can need: an expert with `c` pairs
/// takes `⌈c / 8⌉ ≤ c / 8 + 1` tiles, and never more than `c`.
pub fn max_tiles(pairs: usize, experts: usize) -> usize {
    pairs.min(pairs.div_ceil(TILE) + experts.min(pairs))
}

/// Tiles in a device buffer: `count` of them (some may be empty), [`TILE_WORDS`] u32 each.
pub struct Tiles {
    /// The tiles' words.
    pub buf: wgpu::Buffer,
    /// Tiles the buffer holds, the dispatch size of a product over them.
    pub count: usize,
}

impl Tiles {
    /// Tiles made on the host ([`expert_tiles`]'s layout) put in a buffer of `rec`'s.
    pub fn upload(rec: &mut Recorder, words: &[u32]) -> Result<Tiles> {
        // (u32 words, uploaded as f32 bits into the recorder's buffers)
        Ok(Tiles { count: words.len() / TILE_WORDS, buf: rec.upload("expert tiles", bytemuck::cast_slice(words))? })
    }
}

/// The compiled kernel.
pub struct ExpertTiles {
    kernel: Kernel,
}

impl ExpertTiles {
    /// Compiles the kernel.
    pub fn new(gpu: &Gpu) -> ExpertTiles {
        ExpertTiles { kernel: Kernel::new(gpu, "expert_tiles", include_str!("../../../shaders/expert_tiles.wgsl"), "main") }
    }

    /// Records grouping the `pairs` expert ids in `ids` (u32, each below `experts`) into
    /// tiles, laid out as [`expert_tiles`] makes them; tiles past the used ones are empty.
    pub fn record(&self, rec: &mut Recorder, ids: &wgpu::Buffer, pairs: usize, experts: usize) -> Result<Tiles> {
        if experts > MAX_EXPERTS || pairs == 0 || pairs > u32::MAX as usize / TILE_WORDS {
            return Err(Error::Invalid(format!("expert tiles of {pairs} pairs over {experts} experts (at most {MAX_EXPERTS} experts)")));
        }
        let count = max_tiles(pairs, experts);
        let buf = rec.output("expert tiles", count * TILE_WORDS);
        self.kernel.record(rec, &[ids, &buf], &[pairs as u32, experts as u32, count as u32], [1, 1, 1])?;
        Ok(Tiles { buf, count })
    }
}

/// The CPU reference: tiles of the pairs whose experts are `ids` (pair z uses expert
/// `ids[z]`), experts in increasing order, each expert's pairs in increasing order, eight
/// to a tile. Returns the used tiles only, [`TILE_WORDS`] words each.
pub fn expert_tiles(ids: &[u32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    // stable: an expert's pairs stay in order of z
    order.sort_by_key(|&z| ids[z as usize]);
    let mut tiles = Vec::new();
    for run in order.chunk_by(|&a, &b| ids[a as usize] == ids[b as usize]) {
        for part in run.chunks(TILE) {
            let mut tile = [0u32; TILE_WORDS];
            tile[0] = ids[part[0] as usize];
            tile[1] = part.len() as u32;
            tile[2..2 + part.len()].copy_from_slice(part);
            tiles.extend(tile);
        }
    }
    tiles
}

#[cfg(test)]
mod tests {
    use super::super::tests::gpu_or_skip;
    use super::*;

    /// `pairs` expert ids below `experts`, from a small generator; `skew` sends most pairs
    /// to a few experts (so experts fill several tiles).
    fn random_ids(pairs: usize, experts: usize, seed: u64, skew: bool) -> Vec<u32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..pairs)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let r = (s >> 33) as usize;
                (if skew && !r.is_multiple_of(4) { r % 3.min(experts) } else { r % experts }) as u32
            })
            .collect()
    }

    #[test]
    fn the_reference_groups_every_pair_once_by_expert() {
        let ids = [3u32, 1, 3, 3, 0, 1, 3, 3, 3, 3, 3, 3, 3];
        let tiles = expert_tiles(&ids);
        let t: Vec<&[u32]> = tiles.chunks(TILE_WORDS).collect();
        assert_eq!(t.len(), 4);
        assert_eq!(&t[0][..3], &[0, 1, 4]);
        assert_eq!(&t[1][..4], &[1, 2, 1, 5]);
        assert_eq!(&t[2][..10], &[3, 8, 0, 2, 3, 6, 7, 8, 9, 10]);
        assert_eq!(&t[3][..4], &[3, 2, 11, 12]);
        for (pairs, experts) in [(1, 1), (7, 3), (100, 8), (4096, 128), (333, 384)] {
            let ids = random_ids(pairs, experts, 5, false);
            let tiles = expert_tiles(&ids);
            assert!(tiles.len() / TILE_WORDS <= max_tiles(pairs, experts));
            let mut seen = Vec::new();
            for t in tiles.chunks(TILE_WORDS) {
                for &z in &t[2..2 + t[1] as usize] {
                    assert_eq!(ids[z as usize], t[0]);
                    seen.push(z);
                }
            }
            seen.sort_unstable();
            assert_eq!(seen, (0..pairs as u32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn gpu_tiles_match_the_cpu_reference() {
        let Some(gpu) = gpu_or_skip() else { return };
        let k = ExpertTiles::new(&gpu);
        // one pair; fewer pairs than experts; experts past 256 (several per invocation);
        // more pairs than one pass of shared memory; a few experts holding most pairs
        for (pairs, experts, skew) in [(1, 8, false), (7, 128, false), (300, 1024, false), (333, 384, true), (4096, 128, false), (600, 8, true), (513, 1, false)] {
            let ids = random_ids(pairs, experts, pairs as u64, skew);
            let mut rec = Recorder::new(&gpu);
            let ib = rec.upload("ids", bytemuck::cast_slice(&ids)).unwrap();
            let tiles = k.record(&mut rec, &ib, pairs, experts).unwrap();
            rec.submit();
            let got: Vec<u32> = gpu.read_f32(&tiles.buf, tiles.count * TILE_WORDS).unwrap().into_iter().map(f32::to_bits).collect();
            let want = expert_tiles(&ids);
            assert_eq!(tiles.count, max_tiles(pairs, experts));
            let used = want.len() / TILE_WORDS;
            for (t, (g, w)) in got.chunks(TILE_WORDS).zip(want.chunks(TILE_WORDS)).enumerate() {
                // words past a tile's pairs are not written
                let n = 2 + w[1] as usize;
                assert_eq!(&g[..n], &w[..n], "{pairs} pairs over {experts} experts: tile {t}");
            }
            for (t, g) in got.chunks(TILE_WORDS).enumerate().skip(used) {
                assert_eq!(g[1], 0, "{pairs} pairs over {experts} experts: tile {t} should be empty");
            }
        }
    }

    /// A product over stacked experts gives the same bits whether it reads each expert
    /// once per pair or once per tile, in every format with a several-row kernel, for the
    /// gate/up shape (k pairs per activation row) and the down shape (a row per pair),
    /// overwriting and adding to the output, resident ids grouped on the device and
    /// tiles made on the host alike.
    #[test]
    fn products_over_tiles_equal_products_pair_by_pair() {
        use super::super::matrix::{Experts, GpuMatrix};
        use super::super::tests::{random_matrix, values};
        use crate::quant::GgmlType;
        let Some(gpu) = gpu_or_skip() else { return };
        let k = ExpertTiles::new(&gpu);
        let formats: [(GgmlType, &[(usize, f32)]); 6] = [(GgmlType::Q8_0, &[(0, 2e-4)]), (GgmlType::Q4_0, &[(0, 2e-3)]), (GgmlType::Q5_0, &[(0, 2e-3)]), (GgmlType::Q4_K, &[(0, 2e-3), (2, 1e-3)]), (GgmlType::Q5_K, &[(0, 2e-3), (2, 1e-3)]), (GgmlType::Q6_K, &[(208, 1e-3)])];
        for (ty, scales) in formats {
            // (rows, cols, experts, tokens, pairs per token): lane widths 8 to 32, an
            // expert taking more than one tile, experts no pair uses
            for (rows, cols, experts, n, per) in [(37, 512, 4, 9, 2), (20, 256, 8, 1, 3), (70, 2048, 3, 6, 3)] {
                let ws: Vec<_> = (0..experts).map(|e| random_matrix(ty, rows, cols, (e * 31 + rows) as u64, scales)).collect();
                let m = GpuMatrix::stacked(&gpu, &ws).unwrap();
                assert!(m.takes_tiles(), "{ty}");
                let ids = random_ids(n * per, experts, n as u64, true);
                for (act_div, acts) in [(per, n), (1, n * per)] {
                    let x = values(acts * cols, 3);
                    for accumulate in [false, true] {
                        let mut rec = Recorder::new(&gpu);
                        let xb = rec.upload("x", &x).unwrap();
                        let ib = rec.upload("ids", bytemuck::cast_slice(&ids)).unwrap();
                        let q = m.quantize(&mut rec, &xb, acts).unwrap();
                        let host = expert_tiles(&ids);
                        let tiles = [k.record(&mut rec, &ib, ids.len(), experts).unwrap(), Tiles::upload(&mut rec, &host).unwrap()];
                        let start = values(ids.len() * rows, 9);
                        let outs: Vec<wgpu::Buffer> = (0..3).map(|_| rec.upload("y", &start).unwrap()).collect();
                        for (y, t) in outs.iter().zip([None, Some(&tiles[0]), Some(&tiles[1])]) {
                            let e = Some(Experts { ids: &ib, act_div, tiles: t });
                            if accumulate {
                                m.record_quantized_add(&mut rec, &xb, q.as_ref(), y, ids.len(), e).unwrap();
                            } else {
                                m.record_quantized(&mut rec, &xb, q.as_ref(), y, ids.len(), e).unwrap();
                            }
                        }
                        rec.submit();
                        let got: Vec<Vec<u32>> = outs.iter().map(|y| gpu.read_f32(y, ids.len() * rows).unwrap().into_iter().map(f32::to_bits).collect()).collect();
                        let case = format!("{ty} {rows}x{cols}, {experts} experts, {n} tokens x {per}, act_div {act_div}, accumulate {accumulate}");
                        assert!(got[0].iter().any(|&b| b != 0), "{case}: no output");
                        for (g, how) in got[1..].iter().zip(["made on the device", "made on the host"]) {
                            let first = g.iter().zip(&got[0]).position(|(a, b)| a != b);
                            assert!(first.is_none(), "{case}: with tiles {how}, output {first:?} differs");
                        }
                    }
                }
            }
        }
    }
}
