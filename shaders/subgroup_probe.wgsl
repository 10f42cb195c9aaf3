// Checks, once per opened device, what the subgroup sums of the matrix kernels
// (gemv_subgroup_sums.wgsl) assume: invocation i of a one-dimensional workgroup is lane
// i mod (subgroup size) of its subgroup, subgroups hold at least `sizes.x` invocations
// (the adapter's reported smallest size), and subgroupShuffleDown(v, s) gives lane
// + s's value. Each invocation that finds otherwise adds one to `bad`; the kernels use
// subgroups only when it stays 0.

@group(0) @binding(0) var<storage, read_write> bad: atomic<u32>;
@group(0) @binding(1) var<uniform> sizes: vec4<u32>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) size: u32) {
    let next = subgroupShuffleDown(lid * 3u + 1u, 1u);
    var ok = size >= sizes.x && lane == lid % size;
    if (lane + 1u < size && next != (lid + 1u) * 3u + 1u) {
        ok = false;
    }
    if (!ok) {
        atomicAdd(&bad, 1u);
    }
}
