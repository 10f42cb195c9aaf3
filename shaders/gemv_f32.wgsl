// y = x · Wᵀ for an f32 matrix W (rows × cols) and n activation rows x. One workgroup
// per (row, token); its 64 invocations take every 64th column, then sum in a tree. Rows
// beyond 65535 workgroups spill into the y dimension; tokens are the z dimension.

struct Dims {
    rows: u32,
    cols: u32,
    n: u32,
    rows_per_y: u32,
}

@group(0) @binding(0) var<storage, read> w: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * dims.rows_per_y;
    let t = wg.z;
    var acc = 0.0;
    if (row < dims.rows) {
        for (var c = lid; c < dims.cols; c += WG) {
            acc += w[row * dims.cols + c] * x[t * dims.cols + c];
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
