// Element-wise kernels over `len` values, 256 per workgroup, workgroups beyond 65535
// spilling into the y dimension.
//   add:     a += b        (residual connections)
//   add_row: a[i] += b[i mod b_len]   (a bias added to every row)
//   swiglu:  a = silu(a) · b   (gate and up projections of a SwiGLU feed-forward)

struct Dims {
    len: u32,
    groups_per_y: u32,
    b_len: u32,
}

@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<uniform> dims: Dims;

fn index(wg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * dims.groups_per_y) * 256u + lid;
}

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < dims.len) {
        a[i] = a[i] + b[i];
    }
}

@compute @workgroup_size(256)
fn swiglu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < dims.len) {
        let g = a[i];
        a[i] = g / (1.0 + exp(-g)) * b[i];
    }
}

@compute @workgroup_size(256)
fn add_row(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if (i < dims.len) {
        a[i] = a[i] + b[i % dims.b_len];
    }
}
