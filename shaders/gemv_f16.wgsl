// Compiled after gemv_lanes.wgsl (Dims, LANES, ROWS_PER_GROUP, row_sum, weight_row).
// y = x · Wᵀ for a 16-bit float matrix W (rows × cols, cols even) and n f32 activation
// rows x. Each word of W holds two neighbouring values: IEEE half precision, or bfloat16
// when the source line below says BF16 = true (the bf16 kernel is compiled that way).
// Each lane of a row takes every LANES-th pair, four pairs at a time.

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;

const BF16: bool = false;

// The two values of a word (low half first), widened exactly.
fn pair(v: u32) -> vec2<f32> {
    if (BF16) {
        return vec2<f32>(bitcast<f32>(v << 16u), bitcast<f32>(v & 0xffff0000u));
    }
    return unpack2x16float(v);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = place(wg, lid);
    var acc = 0.0;
    if (p.row < dims.rows) {
        // per_row counts pairs; four independent sums keep four loads in flight
        let wo = p.wrow * dims.per_row;
        let xo = p.t * dims.per_row;
        var a = vec4<f32>(0.0);
        var c = p.lane;
        for (; c + 3u * LANES < dims.per_row; c += 4u * LANES) {
            a += vec4<f32>(dot(pair(w[wo + c]), x[xo + c]), dot(pair(w[wo + c + LANES]), x[xo + c + LANES]),
                           dot(pair(w[wo + c + 2u * LANES]), x[xo + c + 2u * LANES]), dot(pair(w[wo + c + 3u * LANES]), x[xo + c + 3u * LANES]));
        }
        for (; c < dims.per_row; c += LANES) {
            a.x += dot(pair(w[wo + c]), x[xo + c]);
        }
        acc = (a.x + a.y) + (a.z + a.w);
    }
    finish(lid, p, acc);
}
