// Compiled after gemv_lanes.wgsl (Dims, LANES, ROWS_PER_GROUP, row_sum).
// y = x · Wᵀ for a Q6_K matrix W (rows × cols) and n activation rows quantized to Q8_K
// by quantize.wgsl (`xq` signed bytes, `xd` block scales).
//
// GGUF's Q6_K block is 210 bytes, not a multiple of 4, so blocks are uploaded in 212-byte
// slots (53 words): low nibbles `ql` at bytes 0..128, high bit pairs `qh` at 128..192,
// sixteen signed scales at 192..208, the f16 scale d at 208..210. Within each half of
// 128 weights, value l + 32·k (l < 32, k < 4) takes the low (k even) or high (k odd)
// nibble of ql[l + 32·(k mod 2)] — k = 0, 1 low, 2, 3 high — and bits 2k..2k+1 of qh[l],
// minus 32, times scale[8·half + 2k + l/16]. A lane's work item is one group of 16
// values (one scale): four words of ql, four of qh and four of activations, combined
// with packed 4-byte dot products into the CPU backend's integer sum.

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> xq: array<u32>;
@group(0) @binding(2) var<storage, read> xd: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> dims: Dims;

// One work item's weights, unpacked: its scale, d, and its sixteen 6-bit weights as
// four words of bytes (0..63); `it` holds the item's indices for activation row 0.
struct Item {
    it: Group16,
    sc: i32,
    d: f32,
    q: array<u32, 4>,
}

fn load_item(wrow: u32, item: u32) -> Item {
    let it = group16(Place(wrow, 0u, 0u, 0u, wrow), item);
    let base = (wrow * dims.per_row + it.b) * 53u;
    let sb = 192u + it.half * 8u + 2u * it.quarter + it.l0 / 16u;
    let sc = bitcast<i32>((w[base + sb / 4u] >> (8u * (sb % 4u))) << 24u) >> 24u;
    let ql = base + (it.half * 64u + 32u * (it.quarter % 2u) + it.l0) / 4u;
    let qh = base + (128u + it.half * 32u + it.l0) / 4u;
    var q: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        q[i] = ((w[ql + i] >> (4u * (it.quarter / 2u))) & 0x0f0f0f0fu) | (((w[qh + i] >> (2u * it.quarter)) & 0x03030303u) << 4u);
    }
    return Item(it, sc, unpack2x16float(w[base + 52u]).x, q);
}

// Work item `m` times activation row t (row t's activations are t rows after row 0's).
fn item_dot(m: Item, t: u32) -> f32 {
    let xb = m.it.xb + t * dims.per_row;
    let xw = m.it.xw + t * dims.per_row * 64u;
    var isum = 0i;
    var xsum = 0i;
    for (var i = 0u; i < 4u; i++) {
        let a = xq[xw + i];
        isum += dot4I8Packed(m.q[i], a);
        xsum += dot4I8Packed(0x01010101u, a);
    }
    return m.d * xd[xb] * f32(m.sc * (isum - 32i * xsum));
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = place(wg, lid);
    var acc = 0.0;
    if (p.row < dims.rows) {
        for (var item = p.lane; item < dims.per_row * 16u; item += LANES) {
            acc += item_dot(load_item(p.wrow, item), p.t);
        }
    }
    finish(lid, p, acc);
}

// Several activation rows per workgroup (see place_tokens; a plain matrix, or tiles of
// stacked experts): each item's weights unpacked once for all of them, each row's sum
// in `main`'s order (integer sums are exact), so its outputs are `main`'s bit for bit.
@compute @workgroup_size(256)
fn main_tokens(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let count = tokens_count(wg, lid);
    if (count == 0u) {
        return;
    }
    let p = place_tokens(wg, lid);
    var acc: array<f32, 8>;
    if (p.row < dims.rows) {
        for (var item = p.lane; item < dims.per_row * 16u; item += LANES) {
            let m = load_item(p.wrow, item);
            for (var j = 0u; j < TOKENS; j++) {
                if (j < count) {
                    acc[j] += item_dot(m, act_row(p, j));
                }
            }
        }
    }
    finish_tokens(lid, p, count, acc);
}
