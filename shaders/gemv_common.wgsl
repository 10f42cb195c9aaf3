// Shared by the matrix-times-rows kernels (prepended to each when it is compiled): the
// sizes they are dispatched with and the sum that ends each of them.

struct Dims {
    rows: u32,
    per_row: u32,     // blocks per row (columns for f32)
    n: u32,           // activation rows
    rows_per_y: u32,  // workgroups per row of the dispatch grid
}

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

// The sum of `v` over the workgroup, in a tree; every invocation must call it.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    return partial[0];
}
