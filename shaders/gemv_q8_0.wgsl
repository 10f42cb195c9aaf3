// Compiled after gemv_common.wgsl (Dims, WG, workgroup_sum).
// y = x · Wᵀ for a Q8_0 matrix W (rows × cols) and n f32 activation rows x.
//
// W is repacked at upload (GGUF's 34-byte blocks are not 4-byte aligned): per block, its
// f16 scale as an f32 in `scales` and its 32 signed bytes as 8 little-endian u32 words in
// `quants`, both row-major over (row, block). Activations are quantized per block of 32
// as the CPU backend does (scale amax/127 kept as f16, values rounded half away from
// zero), so both backends form the same integer sums and differ only in the order of
// the float additions. One workgroup computes one (row, token): its 64 invocations take
// every 64th block, then sum their partial results in a tree.
// Rows beyond 65535 workgroups spill into the y dimension; tokens are the z dimension.


@group(0) @binding(0) var<storage, read> quants: array<u32>;
@group(0) @binding(1) var<storage, read> scales: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> dims: Dims;

// the k-th signed byte of a word
fn byte_at(w: u32, k: u32) -> i32 {
    return bitcast<i32>(w << (24u - 8u * k)) >> 24u;
}

// round half away from zero, exactly (as Rust's f32::round)
fn round_away(v: f32) -> i32 {
    let r = trunc(v);
    if (abs(v - r) >= 0.5) {
        return i32(r + sign(v));
    }
    return i32(r);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * dims.rows_per_y;
    let t = wg.z;
    var acc = 0.0;
    if (row < dims.rows) {
        let cols = dims.per_row * 32u;
        for (var b = lid; b < dims.per_row; b += WG) {
            let blk = row * dims.per_row + b;
            let xb = t * cols + b * 32u;
            var amax = 0.0;
            for (var i = 0u; i < 32u; i++) {
                amax = max(amax, abs(x[xb + i]));
            }
            let d = amax / 127.0;
            var id = 0.0;
            if (d != 0.0) {
                id = 1.0 / d;
            }
            let d16 = unpack2x16float(pack2x16float(vec2<f32>(d, 0.0))).x;
            var isum = 0i;
            for (var w = 0u; w < 8u; w++) {
                let q = quants[blk * 8u + w];
                for (var e = 0u; e < 4u; e++) {
                    isum += byte_at(q, e) * round_away(x[xb + w * 4u + e] * id);
                }
            }
            acc += f32(isum) * (scales[blk] * d16);
        }
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u && row < dims.rows) {
        y[t * dims.rows + row] = total;
    }
}
