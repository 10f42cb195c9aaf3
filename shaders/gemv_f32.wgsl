// Compiled after gemv_lanes.wgsl (Dims, LANES, ROWS_PER_GROUP, row_sum, weight_row).
// y = x · Wᵀ for an f32 matrix W (rows × cols) and n activation rows x: each lane of a
// row takes every 32nd column. Used for routers and f32 models.

@group(0) @binding(0) var<storage, read> w: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = (wg.x + wg.y * dims.groups_x) * ROWS_PER_GROUP + lid / LANES;
    let lane = lid % LANES;
    let z = wg.z;
    let t = z / dims.act_div;
    let wrow = weight_row(row, z);
    var acc = 0.0;
    if (row < dims.rows) {
        for (var c = lane; c < dims.per_row; c += LANES) {
            acc += w[wrow * dims.per_row + c] * x[t * dims.per_row + c];
        }
    }
    let total = row_sum(lid, acc);
    if (lane == 0u && row < dims.rows) {
        y[z * dims.rows + row] = total;
    }
}
