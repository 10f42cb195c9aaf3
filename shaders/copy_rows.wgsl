// Strided row copy: `rows` rows of `width` values from `src` (row r at src_off + r ·
// src_stride) to `dst` (row r at dst_off + r · dst_stride). Gathers the parts of rows that
// latent attention splits and joins (the compressed keys and their rope part, the query
// heads' rope parts) and writes rows into a cache at a position. One invocation per
// value, 256 per workgroup, workgroups beyond 65535 spilling into the y dimension.

struct Dims {
    rows: u32,
    width: u32,
    src_stride: u32,
    src_off: u32,
    dst_stride: u32,
    dst_off: u32,
    groups_per_y: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> dims: Dims;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * dims.groups_per_y) * 256u + lid;
    if (i >= dims.rows * dims.width) {
        return;
    }
    let r = i / dims.width;
    let c = i % dims.width;
    dst[dims.dst_off + r * dims.dst_stride + c] = src[dims.src_off + r * dims.src_stride + c];
}

// Scattered rows (entry `scatter`): row r of `src` (`width` values at src_off + r · width)
// to row idx[r] of `dst` (at idx[r] · width): a batch's new keys and values into the
// cache rows their positions' pages name.
struct ScatterDims {
    rows: u32,
    width: u32,
    src_off: u32,
    groups_per_y: u32,
}

@group(0) @binding(3) var<storage, read> idx: array<u32>;
@group(0) @binding(4) var<uniform> sdims: ScatterDims;

@compute @workgroup_size(256)
fn scatter(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * sdims.groups_per_y) * 256u + lid;
    if (i >= sdims.rows * sdims.width) {
        return;
    }
    let r = i / sdims.width;
    let c = i % sdims.width;
    dst[idx[r] * sdims.width + c] = src[sdims.src_off + r * sdims.width + c];
}
