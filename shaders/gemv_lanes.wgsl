// Shared by the integer matrix-times-rows kernels (prepended to each when compiled):
// workgroups of 256 invocations computing eight rows for one activation row, 32 lanes per
// weight row. Lanes of a row read neighbouring blocks, so a row's lanes together read one
// contiguous stretch of weights per step (coalesced), and sum their parts in shared memory.

struct Dims {
    rows: u32,
    per_row: u32,     // blocks per row
    n: u32,           // activation rows
    groups_x: u32,    // workgroups per row of the dispatch grid
}

const LANES: u32 = 32u;
const ROWS_PER_GROUP: u32 = 8u;
var<workgroup> lane_sums: array<f32, 256>;

// Sums each row's 32 lane values (tree, in shared memory); every invocation must call
// it, and lane 0 of each row gets its row's sum.
fn row_sum(lid: u32, v: f32) -> f32 {
    lane_sums[lid] = v;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s = s / 2u) {
        if (lid % LANES < s) {
            lane_sums[lid] += lane_sums[lid + s];
        }
        workgroupBarrier();
    }
    return lane_sums[lid];
}
