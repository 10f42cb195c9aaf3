// Compiled after gemv_lanes.wgsl (Dims, LANES, ROWS_PER_GROUP, row_sum, weight_row).
// y = x · Wᵀ for an f32 matrix W (rows × cols) and n activation rows x: each lane of a
// row takes every 32nd column, four at a time. Used for routers and f32 models.

@group(0) @binding(0) var<storage, read> w: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = place(wg, lid);
    var acc = 0.0;
    if (p.row < dims.rows) {
        // four independent sums (columns c, c + 32, c + 64, c + 96) keep four loads in flight
        let wo = p.wrow * dims.per_row;
        let xo = p.t * dims.per_row;
        var a = vec4<f32>(0.0);
        var c = p.lane;
        for (; c + 3u * LANES < dims.per_row; c += 4u * LANES) {
            a += vec4<f32>(w[wo + c], w[wo + c + LANES], w[wo + c + 2u * LANES], w[wo + c + 3u * LANES])
               * vec4<f32>(x[xo + c], x[xo + c + LANES], x[xo + c + 2u * LANES], x[xo + c + 3u * LANES]);
        }
        for (; c < dims.per_row; c += LANES) {
            a.x += w[wo + c] * x[xo + c];
        }
        acc = (a.x + a.y) + (a.z + a.w);
    }
    finish(lid, p, acc);
}
