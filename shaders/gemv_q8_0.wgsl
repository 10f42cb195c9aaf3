// y = x · Wᵀ for a Q8_0 matrix W (rows × cols) and n f32 activation rows x.
//
// W is repacked at upload (GGUF's 34-byte blocks are not 4-byte aligned): per block, its
// f16 scale as an f32 in `scales` and its 32 signed bytes as 8 little-endian u32 words in
// `quants`, both row-major over (row, block). One workgroup computes one (row, token):
// its 64 invocations take every 64th block, then sum their partial results in a tree.
// Rows beyond 65535 workgroups spill into the y dimension; tokens are the z dimension.

struct Dims {
    rows: u32,
    blocks: u32,   // blocks per row (cols / 32)
    n: u32,        // activation rows
    rows_per_y: u32,
}

@group(0) @binding(0) var<storage, read> quants: array<u32>;
@group(0) @binding(1) var<storage, read> scales: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> dims: Dims;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

// the k-th signed byte of a word
fn byte_at(w: u32, k: u32) -> f32 {
    return f32(bitcast<i32>(w << (24u - 8u * k)) >> 24u);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * dims.rows_per_y;
    let t = wg.z;
    var acc = 0.0;
    if (row < dims.rows) {
        let cols = dims.blocks * 32u;
        for (var b = lid; b < dims.blocks; b += WG) {
            let blk = row * dims.blocks + b;
            let xb = t * cols + b * 32u;
            var s = 0.0;
            for (var w = 0u; w < 8u; w++) {
                let q = quants[blk * 8u + w];
                let xo = xb + w * 4u;
                s += byte_at(q, 0u) * x[xo] + byte_at(q, 1u) * x[xo + 1u] + byte_at(q, 2u) * x[xo + 2u] + byte_at(q, 3u) * x[xo + 3u];
            }
            acc += scales[blk] * s;
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u && row < dims.rows) {
        y[t * dims.rows + row] = partial[0];
    }
}
