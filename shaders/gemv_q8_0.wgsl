// Compiled after gemv_lanes.wgsl (Dims, LANES, ROWS_PER_GROUP, row_sum).
// y = x · Wᵀ for a Q8_0 matrix W (rows × cols) and n activation rows quantized to Q8_0
// by quantize.wgsl (`xq` signed bytes, `xs` block scales).
//
// W is repacked at upload (GGUF's 34-byte blocks are not 4-byte aligned): per block, its
// f16 scale as an f32 in `scales` and its 32 signed bytes as two vec4<u32> in `quants`,
// both row-major over (row, block). Each lane takes every LANES-th block of its row: eight
// packed 4-byte dot products make the block's integer sum, which is scaled once, as the
// CPU backend does; backends differ only in the order of the float additions.

@group(0) @binding(0) var<storage, read> quants: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> scales: array<f32>;
@group(0) @binding(2) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> xs: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<uniform> dims: Dims;

fn dot16(a: vec4<u32>, b: vec4<u32>) -> i32 {
    return dot4I8Packed(a.x, b.x) + dot4I8Packed(a.y, b.y) + dot4I8Packed(a.z, b.z) + dot4I8Packed(a.w, b.w);
}

// Block `b` of weight row `wrow` times activation row `t`: the integer sum of its 32
// products, scaled once.
fn block_sum(wrow: u32, t: u32, b: u32) -> f32 {
    let wb = wrow * dims.per_row + b;
    let xb = t * dims.per_row + b;
    let isum = dot16(quants[2u * wb], xq[2u * xb]) + dot16(quants[2u * wb + 1u], xq[2u * xb + 1u]);
    return f32(isum) * (scales[wb] * xs[xb]);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = place(wg, lid);
    var acc = 0.0;
    if (p.row < dims.rows) {
        // one block per turn (two, as Q4_K takes, measured 5% slower on an H200)
        for (var b = p.lane; b < dims.per_row; b += LANES) {
            acc += block_sum(p.wrow, p.t, b);
        }
    }
    finish(lid, p, acc);
}

// Several activation rows per workgroup (see place_tokens; a plain matrix, or tiles of
// stacked experts): each weight block read once for all of them, where `main` reads the
// weights once per activation row; each row's sum in `main`'s order, so its outputs are
// `main`'s bit for bit.
@compute @workgroup_size(256)
fn main_tokens(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let count = tokens_count(wg, lid);
    if (count == 0u) {
        return;
    }
    let p = place_tokens(wg, lid);
    var acc: array<f32, 8>;
    if (p.row < dims.rows) {
        for (var b = p.lane; b < dims.per_row; b += LANES) {
            let wb = p.wrow * dims.per_row + b;
            let w0 = quants[2u * wb];
            let w1 = quants[2u * wb + 1u];
            let s = scales[wb];
            for (var j = 0u; j < TOKENS; j++) {
                if (j < count) {
                    let xb = act_row(p, j) * dims.per_row + b;
                    let isum = dot16(w0, xq[2u * xb]) + dot16(w1, xq[2u * xb + 1u]);
                    acc[j] += f32(isum) * (s * xs[xb]);
                }
            }
        }
    }
    finish_tokens(lid, p, count, acc);
}
