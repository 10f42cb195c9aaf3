// Replaces gemv_lanes.wgsl's `lower_levels` in lane layouts with subgroup sums (on
// devices with wgpu's subgroup feature, which the WGSL needs no directive for). The levels of a row's sum below
// SUBGROUP (the adapter's smallest subgroup size) run as shuffles, without shared memory
// or barriers: at level s lane i adds lane i + s to its own value, as the shared-memory
// tree does, so the sums are the same bit for bit. Assumes invocation i of a workgroup
// is lane i mod (subgroup size) of its subgroup (one-dimensional workgroups; every
// driver we know lays them out so), and a row's lanes below SUBGROUP share a subgroup
// (rows start at multiples of LANES, both powers of two).
fn lower_levels(v: f32) -> f32 {
    var acc = v;
    for (var s = min(LANES, SUBGROUP) / 2u; s > 0u; s = s / 2u) {
        acc += subgroupShuffleDown(acc, s);
    }
    return acc;
}
