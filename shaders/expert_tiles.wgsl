// Groups a routed layer's (token, expert) pairs by expert into tiles of at most eight
// pairs that share an expert, so that the several-row matrix kernels (`main_tokens` in
// grouped mode, see gemv_lanes.wgsl) read each chosen expert's weights once per tile
// instead of once per pair. Pair z is output row group z of the expert products; its
// expert is ids[z].
//
// Tile t takes words t·TILE_WORDS.. of `tiles`: the expert, the number of pairs (0..=8),
// then the pairs' indices z in increasing order. Experts come in increasing order, an
// expert's pairs fill its tiles in order of z; tiles past the last used one get count 0
// (the dispatch that reads them is sized for the most tiles any routing can need).
//
// One workgroup: invocation i owns experts i, i + 256, i + 512, i + 768. The ids pass
// through shared memory 256 at a time; each invocation counts, then places, the pairs of
// the experts it owns, so every pass costs one shared read per pair whatever the number
// of experts.

struct Dims {
    pairs: u32,
    experts: u32,    // at most MAX_EXPERTS
    max_tiles: u32,  // tiles the buffer holds
}

@group(0) @binding(0) var<storage, read> ids: array<u32>;
@group(0) @binding(1) var<storage, read_write> tiles: array<u32>;
@group(0) @binding(2) var<uniform> dims: Dims;

const MAX_EXPERTS: u32 = 1024u;
const OWNED: u32 = 4u;  // MAX_EXPERTS / 256
const TILE: u32 = 8u;
const TILE_WORDS: u32 = 10u;

var<workgroup> chunk: array<u32, 256>;
var<workgroup> first_tile: array<u32, 1024>;
var<workgroup> used_tiles: u32;

// Puts ids[c0 .. c0 + 256) (those that exist) in `chunk`; all invocations call it.
fn load_chunk(c0: u32, lid: u32) {
    if (c0 + lid < dims.pairs) {
        chunk[lid] = ids[c0 + lid];
    }
    workgroupBarrier();
}

// Whether pair id `e` is an expert invocation `lid` owns.
fn owns(lid: u32, e: u32) -> bool {
    return e % 256u == lid && e < dims.experts;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    // pairs per owned expert
    var count: array<u32, 4>;
    for (var c0 = 0u; c0 < dims.pairs; c0 += 256u) {
        load_chunk(c0, lid);
        let m = min(256u, dims.pairs - c0);
        for (var j = 0u; j < m; j++) {
            if (owns(lid, chunk[j])) {
                count[chunk[j] / 256u] += 1u;
            }
        }
        workgroupBarrier();
    }
    // each expert's first tile: tiles of the experts before it, in order
    for (var i = 0u; i < OWNED; i++) {
        first_tile[lid + 256u * i] = (count[i] + TILE - 1u) / TILE;
    }
    workgroupBarrier();
    if (lid == 0u) {
        var t = 0u;
        for (var e = 0u; e < dims.experts; e++) {
            let n = first_tile[e];
            first_tile[e] = t;
            t += n;
        }
        used_tiles = t;
    }
    workgroupBarrier();
    // each owned expert's pairs into its tiles, in order of z
    var placed: array<u32, 4>;
    for (var c0 = 0u; c0 < dims.pairs; c0 += 256u) {
        load_chunk(c0, lid);
        let m = min(256u, dims.pairs - c0);
        for (var j = 0u; j < m; j++) {
            let e = chunk[j];
            if (owns(lid, e)) {
                let i = e / 256u;
                let k = placed[i];
                let base = (first_tile[e] + k / TILE) * TILE_WORDS;
                if (k % TILE == 0u) {
                    tiles[base] = e;
                    tiles[base + 1u] = min(TILE, count[i] - k);
                }
                tiles[base + 2u + k % TILE] = c0 + j;
                placed[i] = k + 1u;
            }
        }
        workgroupBarrier();
    }
    for (var t = used_tiles + lid; t < dims.max_tiles; t += 256u) {
        tiles[t * TILE_WORDS] = 0u;
        tiles[t * TILE_WORDS + 1u] = 0u;
    }
}
