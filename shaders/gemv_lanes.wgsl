// Shared by the integer matrix-times-rows kernels (prepended to each when compiled):
// workgroups of 256 invocations computing eight rows for one activation row, 32 lanes per
// weight row. The same kernels serve stacked experts (a layer's experts in one buffer):
// output row z then uses expert ids[z], so one dispatch covers every chosen expert. Lanes of a row read neighbouring blocks, so a row's lanes together read one
// contiguous stretch of weights per step (coalesced), and sum their parts in shared memory.

struct Dims {
    rows: u32,
    per_row: u32,     // blocks per row
    n: u32,           // output rows (grid z)
    groups_x: u32,    // workgroups per row of the dispatch grid
    indexed: u32,     // 1: the weights are stacked experts and ids[z] picks one
    act_div: u32,     // output row z reads activation row z / act_div
    accumulate: u32,  // 1: add the products to y instead of overwriting it
}

// Writes output i (the kernel's `y`, declared in its own file).
fn store(i: u32, v: f32) {
    if (dims.accumulate != 0u) {
        y[i] += v;
    } else {
        y[i] = v;
    }
}

// Experts chosen per output row when `dims.indexed` (one word otherwise).
@group(0) @binding(8) var<storage, read> ids: array<u32>;

// The weight row and activation row behind output (row, z): with stacked experts, row
// `row` of expert ids[z] (each expert `dims.rows` rows), else row `row` itself.
fn weight_row(row: u32, z: u32) -> u32 {
    if (dims.indexed != 0u) {
        return ids[z] * dims.rows + row;
    }
    return row;
}

// The layout (rewritten per compiled variant, see lane_layout.rs `LaneLayout`): lanes per
// row, rows per workgroup's lane sets, rows each invocation computes (the Q4_K/Q5_K
// kernel's `main_rows`: rows p.row + r · ROWS_PER_GROUP, each activation load shared by
// them; 1, 2 or 4), and the subgroup size below which row sums use subgroup shuffles
// (0: none; the Q8_0 and Q4_K/Q5_K kernels). Neither rows per invocation nor shuffles
// change the order of a row's additions, so neither changes the bits.
const LANES: u32 = 32u;
const ROWS_PER_GROUP: u32 = 8u;
const ROWS_PER_LANE: u32 = 1u;
const SUBGROUP: u32 = 0u;
var<workgroup> lane_sums: array<f32, 256>;

// The last levels of a row's sum, those below SUBGROUP: none here (SUBGROUP is 0);
// layouts with subgroup sums put gemv_subgroup_sums.wgsl's shuffles in its place.
fn lower_levels(v: f32) -> f32 {
    return v;
}

// Sums each row's LANES lane values (a tree: at level s lane i adds lane i + s, in
// shared memory, the levels below SUBGROUP by shuffles); every invocation must call it,
// and lane 0 of each row gets its row's sum.
fn row_sum(lid: u32, v: f32) -> f32 {
    if (LANES <= SUBGROUP) {
        return lower_levels(v);
    }
    lane_sums[lid] = v;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u && s >= SUBGROUP; s = s / 2u) {
        if (lid % LANES < s) {
            lane_sums[lid] += lane_sums[lid + s];
        }
        workgroupBarrier();
    }
    return lower_levels(lane_sums[lid]);
}

// Where an invocation works: its output row (the first of its ROWS_PER_LANE rows), its
// lane among the row's, the output row group z (grid z), the activation row t it reads
// and the weight row.
struct Place {
    row: u32,
    lane: u32,
    z: u32,
    t: u32,
    wrow: u32,
}

fn place(wg: vec3<u32>, lid: u32) -> Place {
    let row = (wg.x + wg.y * dims.groups_x) * ROWS_PER_GROUP * ROWS_PER_LANE + lid / LANES;
    let z = wg.z;
    return Place(row, lid % LANES, z, z / dims.act_div, weight_row(row, z));
}

// The weight rows of an invocation's ROWS_PER_LANE rows (p.row + r · ROWS_PER_GROUP),
// the last row standing in for rows past the end (whose sums are never stored), so loads
// need no guard.
fn lane_rows(p: Place) -> vec4<u32> {
    var rows: vec4<u32>;
    for (var r = 0u; r < ROWS_PER_LANE; r++) {
        rows[r] = weight_row(min(p.row + r * ROWS_PER_GROUP, dims.rows - 1u), p.z);
    }
    return rows;
}

var<workgroup> rows_sums: array<f32, 256 * ROWS_PER_LANE>;

// `finish` for an invocation's ROWS_PER_LANE rows (their parts in `acc`'s first
// components): each row's sum in row_sum's tree, one barrier per level for all of them;
// every invocation must call it.
fn finish_rows(lid: u32, p: Place, acc: vec4<f32>) {
    var sums = acc;
    if (LANES > SUBGROUP) {
        for (var r = 0u; r < ROWS_PER_LANE; r++) {
            rows_sums[r * 256u + lid] = acc[r];
        }
        workgroupBarrier();
        for (var s = LANES / 2u; s > 0u && s >= SUBGROUP; s = s / 2u) {
            if (lid % LANES < s) {
                for (var r = 0u; r < ROWS_PER_LANE; r++) {
                    rows_sums[r * 256u + lid] += rows_sums[r * 256u + lid + s];
                }
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < ROWS_PER_LANE; r++) {
            sums[r] = rows_sums[r * 256u + lid];
        }
    }
    for (var r = 0u; r < ROWS_PER_LANE; r++) {
        sums[r] = lower_levels(sums[r]);
    }
    if (p.lane == 0u) {
        for (var r = 0u; r < ROWS_PER_LANE; r++) {
            let row = p.row + r * ROWS_PER_GROUP;
            if (row < dims.rows) {
                store(p.z * dims.rows + row, sums[r]);
            }
        }
    }
}

// Sums the lanes' parts `acc` of each row and writes the row's output; every invocation
// must call it.
fn finish(lid: u32, p: Place, acc: f32) {
    let total = row_sum(lid, acc);
    if (p.lane == 0u && p.row < dims.rows) {
        store(p.z * dims.rows + p.row, total);
    }
}

// A work item of the K-quants laid out in groups of 16 values (Q2_K, Q3_K, Q6_K): block b
// of the row, group g (0..16), which is values l0..l0 + 16 of quarter `quarter` (32
// values) of half `half` (128 values); the activation block xb, and the word xw where the
// group's sixteen activation bytes start.
struct Group16 {
    b: u32,
    g: u32,
    half: u32,
    quarter: u32,
    l0: u32,
    xb: u32,
    xw: u32,
}

fn group16(p: Place, item: u32) -> Group16 {
    let b = item / 16u;
    let g = item % 16u;
    let half = g / 8u;
    let quarter = (g % 8u) / 2u;
    let l0 = (g % 2u) * 16u;
    let xb = p.t * dims.per_row + b;
    return Group16(b, g, half, quarter, l0, xb, xb * 64u + (half * 128u + 32u * quarter + l0) / 4u);
}

// The several-row kernels (`main_tokens`): each workgroup takes up to TOKENS activation
// rows, each weight block loaded once for all of them, each row's sum kept apart and made
// in `main`'s order. Plain matrix (`dims.indexed == 0`): workgroup z takes activation rows
// TOKENS·z .. TOKENS·z + count, output row groups the same. Stacked experts (grouped
// mode): workgroup z takes tile z of `ids` as expert_tiles.wgsl lays it out — an expert
// and up to TOKENS output row groups using it, each reading activation row
// (group / act_div) — so an expert's weights are read once per tile, not once per pair.
// The kernels loop over the rows with a constant trip count (`j < TOKENS`, the rows past
// `count` skipped) so that a GPU compiler unrolls it and keeps the eight sums in
// registers; a loop to `count` indexes the sums by a variable, which puts them in
// memory.
const TOKENS: u32 = 8u;
const TILE_WORDS: u32 = 10u;

struct TokensPlace {
    row: u32,
    lane: u32,
    wrow: u32,   // the weight row
    first: u32,  // plain: the first activation row; grouped: the tile's first pair word
}

fn place_tokens(wg: vec3<u32>, lid: u32) -> TokensPlace {
    let row = (wg.x + wg.y * dims.groups_x) * ROWS_PER_GROUP + lid / LANES;
    if (dims.indexed != 0u) {
        let base = wg.z * TILE_WORDS;
        return TokensPlace(row, lid % LANES, ids[base] * dims.rows + row, base + 2u);
    }
    return TokensPlace(row, lid % LANES, row, wg.z * TOKENS);
}

// The output row group of the j-th row the workgroup takes.
fn out_group(p: TokensPlace, j: u32) -> u32 {
    if (dims.indexed != 0u) {
        return ids[p.first + j];
    }
    return p.first + j;
}

// The activation row of the j-th row the workgroup takes.
fn act_row(p: TokensPlace, j: u32) -> u32 {
    if (dims.indexed != 0u) {
        return ids[p.first + j] / dims.act_div;
    }
    return p.first + j;
}

var<workgroup> tokens_taken: u32;

// The number of rows the workgroup takes, the same in all its invocations (so loops over
// it may hold barriers, and a workgroup with none may leave at once); every invocation
// must call it.
fn tokens_count(wg: vec3<u32>, lid: u32) -> u32 {
    if (lid == 0u) {
        if (dims.indexed != 0u) {
            tokens_taken = ids[wg.z * TILE_WORDS + 1u];
        } else {
            tokens_taken = min(TOKENS, dims.n - wg.z * TOKENS);
        }
    }
    return workgroupUniformLoad(&tokens_taken);
}

var<workgroup> token_sums: array<f32, 2048>;  // TOKENS × 256

// `finish` for each of the `count` rows taken (`count` from tokens_count): every row's
// lane sums in one tree (row_sum's, so the same sums), one barrier per level for all the
// rows rather than per row; every invocation must call it.
fn finish_tokens(lid: u32, p: TokensPlace, count: u32, acc: array<f32, 8>) {
    for (var j = 0u; j < TOKENS; j++) {
        if (j < count) {
            token_sums[j * 256u + lid] = acc[j];
        }
    }
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s = s / 2u) {
        if (lid % LANES < s) {
            for (var j = 0u; j < TOKENS; j++) {
                if (j < count) {
                    token_sums[j * 256u + lid] += token_sums[j * 256u + lid + s];
                }
            }
        }
        workgroupBarrier();
    }
    if (p.lane == 0u && p.row < dims.rows) {
        for (var j = 0u; j < TOKENS; j++) {
            if (j < count) {
                store(out_group(p, j) * dims.rows + p.row, token_sums[j * 256u + lid]);
            }
        }
    }
}
