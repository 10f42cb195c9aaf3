// Compiled after gemv_lanes.wgsl (Dims, LANES, ROWS_PER_GROUP, row_sum).
// y = x · Wᵀ for a Q4_K matrix W (rows × cols) and n activation rows quantized to Q8_K
// by quantize.wgsl (`xq` signed bytes, `xd` block scales, `bsums` sums of 32); compiled
// with FIVE_BITS = true, the same for Q5_K (see below).
//
// Q4_K blocks are 144 bytes (nine vec4<u32>), so the GGUF bytes are used in place: block
// b starts at word 36·b with [d, dmin] as two f16 in word 0, the twelve bytes of 6-bit
// scales and mins in words 1..3, and 128 bytes of nibbles in words 4..35 (group 2k in the
// low nibbles of bytes 32k..32k+31, group 2k+1 in their high nibbles). Weight i of group
// j is d·sc[j]·q − dmin·m[j]. A lane's work item is one such pair of groups (64 weights,
// 32 bytes); the lanes of a row take consecutive items, so together they read whole
// blocks. The integer sums are the CPU backend's; only float additions are reordered.
//
// Q5_K blocks are 176 bytes (eleven vec4<u32>): the same first vec4, then 32 bytes of
// fifth bits (vec4s 1 and 2: bit j of byte l is the fifth bit of weight l of group j),
// then the 128 bytes of nibbles (vec4s 3..10, laid out as Q4_K's); q runs 0..31.

@group(0) @binding(0) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> xd: array<f32>;
@group(0) @binding(3) var<storage, read> bsums: array<i32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<uniform> dims: Dims;

// Scale and minimum (6 bits each) of group j (0..7) of a block whose first vec4 is `h`
// (word 0: d, dmin; words 1..3: the twelve packed bytes).
fn scale_min(h: vec4<u32>, j: u32) -> vec2<u32> {
    if (j < 4u) {
        let sh = 8u * j;
        return vec2<u32>((h.y >> sh) & 63u, (h.z >> sh) & 63u);
    }
    let sh = 8u * (j - 4u);
    let lo = (h.w >> sh) & 0xffu;
    return vec2<u32>((lo & 0xfu) | ((((h.y >> sh) >> 6u) & 3u) << 4u), (lo >> 4u) | ((((h.z >> sh) >> 6u) & 3u) << 4u));
}

const FIVE_BITS: bool = false;

// Sixteen weights (nibbles of `q` from bit `shift`; for Q5_K with the fifth bits of `hb`
// from bit `hshift`) times sixteen activations.
fn dot_nibbles(q: vec4<u32>, shift: u32, hb: vec4<u32>, hshift: u32, a: vec4<u32>) -> i32 {
    var v = (q >> vec4<u32>(shift)) & vec4<u32>(0x0f0f0f0fu);
    if (FIVE_BITS) {
        v |= ((hb >> vec4<u32>(hshift)) & vec4<u32>(0x01010101u)) << vec4<u32>(4u);
    }
    return dot4I8Packed(v.x, a.x) + dot4I8Packed(v.y, a.y) + dot4I8Packed(v.z, a.z) + dot4I8Packed(v.w, a.w);
}

// One work item's weights: block b's scales and mins (h), fifth bits, and the item's
// quants (groups 2k and 2k+1).
struct Item {
    h: vec4<u32>,
    hb0: vec4<u32>,
    hb1: vec4<u32>,
    q0: vec4<u32>,
    q1: vec4<u32>,
    b: u32,
    k: u32,
}

fn load_item(wrow: u32, item: u32) -> Item {
    let b = item / 4u;
    let k = item % 4u;
    let blk = (wrow * dims.per_row + b) * select(9u, 11u, FIVE_BITS);  // in vec4s
    var hb0 = vec4<u32>(0u);  // fifth bits of weights 0..15 of every group
    var hb1 = vec4<u32>(0u);  // and of weights 16..31
    if (FIVE_BITS) {
        hb0 = w[blk + 1u];
        hb1 = w[blk + 2u];
    }
    let qs = blk + select(1u, 3u, FIVE_BITS);
    return Item(w[blk], hb0, hb1, w[qs + 2u * k], w[qs + 1u + 2u * k], b, k);
}

// A work item's activations in row t: the 64 bytes of groups 2k and 2k+1 of block b (two
// vec4s each), the block's scale and the two groups' sums.
struct ItemActs {
    x0: vec4<u32>,
    x1: vec4<u32>,
    x2: vec4<u32>,
    x3: vec4<u32>,
    yd: f32,
    bs0: i32,
    bs1: i32,
}

fn load_acts(t: u32, item: u32) -> ItemActs {
    let b = item / 4u;
    let k = item % 4u;
    let xb = t * dims.per_row + b;
    let xv = xb * 16u + 4u * k;
    return ItemActs(xq[xv], xq[xv + 1u], xq[xv + 2u], xq[xv + 3u], xd[xb], bsums[xb * 8u + 2u * k], bsums[xb * 8u + 2u * k + 1u]);
}

// Work item `it` times its activations `x`.
fn item_dot(it: Item, x: ItemActs) -> f32 {
    let k = it.k;
    let s0 = dot_nibbles(it.q0, 0u, it.hb0, 2u * k, x.x0) + dot_nibbles(it.q1, 0u, it.hb1, 2u * k, x.x1);
    let s1 = dot_nibbles(it.q0, 4u, it.hb0, 2u * k + 1u, x.x2) + dot_nibbles(it.q1, 4u, it.hb1, 2u * k + 1u, x.x3);
    let dm = unpack2x16float(it.h.x);
    let m0 = scale_min(it.h, 2u * k);
    let m1 = scale_min(it.h, 2u * k + 1u);
    let yd = x.yd;
    return yd * dm.x * f32(i32(m0.x) * s0) - yd * dm.y * f32(i32(m0.y) * x.bs0)
         + (yd * dm.x * f32(i32(m1.x) * s1) - yd * dm.y * f32(i32(m1.y) * x.bs1));
}

// Work item `item` of weight row `wrow` times activation row `t`.
fn item_sum(wrow: u32, t: u32, item: u32) -> f32 {
    return item_dot(load_item(wrow, item), load_acts(t, item));
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = place(wg, lid);
    var acc = 0.0;
    if (p.row < dims.rows) {
        // two items per turn: their loads are independent, so both are in flight at once
        let items = dims.per_row * 4u;
        var item = p.lane;
        for (; item + LANES < items; item += 2u * LANES) {
            acc += item_sum(p.wrow, p.t, item) + item_sum(p.wrow, p.t, item + LANES);
        }
        if (item < items) {
            acc += item_sum(p.wrow, p.t, item);
        }
    }
    finish(lid, p, acc);
}

// A turn of `main` (items `item` and `item` + LANES) for weight row `wrow`, the items'
// activations loaded already.
fn turn_sum(wrow: u32, item: u32, xa: ItemActs, xb: ItemActs) -> f32 {
    return item_dot(load_item(wrow, item), xa) + item_dot(load_item(wrow, item + LANES), xb);
}

// `main` for ROWS_PER_LANE (2 or 4) rows per invocation: each turn's activations loaded
// once for all of them, each row's additions in `main`'s order (so `main`'s bits). The
// rows are written out one by one rather than looped over, so that the sums stay in
// registers whatever the compiler makes of loops.
@compute @workgroup_size(256)
fn main_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = place(wg, lid);
    let wr = lane_rows(p);
    var acc = vec4<f32>(0.0);
    let items = dims.per_row * 4u;
    var item = p.lane;
    for (; item + LANES < items; item += 2u * LANES) {
        let xa = load_acts(p.t, item);
        let xb = load_acts(p.t, item + LANES);
        acc.x += turn_sum(wr.x, item, xa, xb);
        acc.y += turn_sum(wr.y, item, xa, xb);
        if (ROWS_PER_LANE > 2u) {
            acc.z += turn_sum(wr.z, item, xa, xb);
            acc.w += turn_sum(wr.w, item, xa, xb);
        }
    }
    if (item < items) {
        let xa = load_acts(p.t, item);
        acc.x += item_dot(load_item(wr.x, item), xa);
        acc.y += item_dot(load_item(wr.y, item), xa);
        if (ROWS_PER_LANE > 2u) {
            acc.z += item_dot(load_item(wr.z, item), xa);
            acc.w += item_dot(load_item(wr.w, item), xa);
        }
    }
    finish_rows(lid, p, acc);
}

// Several activation rows per workgroup (see place_tokens; a plain matrix, or tiles of
// stacked experts): each work item's weights loaded once for all of them, items paired
// as `main` pairs them, so each row's outputs are `main`'s bit for bit.
@compute @workgroup_size(256)
fn main_tokens(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let count = tokens_count(wg, lid);
    if (count == 0u) {
        return;
    }
    let p = place_tokens(wg, lid);
    var acc: array<f32, 8>;
    if (p.row < dims.rows) {
        let items = dims.per_row * 4u;
        var item = p.lane;
        for (; item + LANES < items; item += 2u * LANES) {
            let a = load_item(p.wrow, item);
            let b = load_item(p.wrow, item + LANES);
            for (var j = 0u; j < TOKENS; j++) {
                if (j < count) {
                    acc[j] += item_dot(a, load_acts(act_row(p, j), item)) + item_dot(b, load_acts(act_row(p, j), item + LANES));
                }
            }
        }
        if (item < items) {
            let a = load_item(p.wrow, item);
            for (var j = 0u; j < TOKENS; j++) {
                if (j < count) {
                    acc[j] += item_dot(a, load_acts(act_row(p, j), item));
                }
            }
        }
    }
    finish_tokens(lid, p, count, acc);
}
