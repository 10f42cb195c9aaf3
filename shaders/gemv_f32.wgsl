// Compiled after gemv_common.wgsl (Dims, WG, workgroup_sum).
// y = x · Wᵀ for an f32 matrix W (rows × cols) and n activation rows x. One workgroup
// per (row, token); its 64 invocations take every 64th column, then sum in a tree. Rows
// beyond 65535 workgroups spill into the y dimension; tokens are the z dimension.


@group(0) @binding(0) var<storage, read> w: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * dims.rows_per_y;
    let t = wg.z;
    var acc = 0.0;
    if (row < dims.rows) {
        for (var c = lid; c < dims.per_row; c += WG) {
            acc += w[row * dims.per_row + c] * x[t * dims.per_row + c];
        }
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u && row < dims.rows) {
        y[t * dims.rows + row] = total;
    }
}
