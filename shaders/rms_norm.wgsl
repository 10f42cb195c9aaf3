// RMS normalization of each `d`-long row of `x`, in place, scaled by `g`:
// x = x / sqrt(mean(x²) + eps) · g. One workgroup per row (rows beyond 65535 spill into
// the y dimension); eight invocations sum the squares, all 64 scale.

struct Dims {
    rows: u32,
    d: u32,
    eps_bits: u32,   // f32 bits of epsilon
    rows_per_y: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<uniform> dims: Dims;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

// The scale of row `row` (1/rms(x)), computed by the whole workgroup.
fn row_scale(lid: u32, base: u32) -> f32 {
    // the sum of squares in the CPU backend's order (its `dot`: eight running sums over
    // strided elements, added in lane order, then the tail one by one), so the scale has
    // the same bits on both backends where sqrt and division are correctly rounded: when
    // the next matrix quantizes the result, values of a quantized embedding sit exactly
    // on rounding ties and one bit decides
    let main = dims.d / 8u * 8u;
    if (lid < 8u) {
        var acc = 0.0;
        for (var i = lid; i < main; i += 8u) {
            acc += x[base + i] * x[base + i];
        }
        partial[lid] = acc;
    }
    workgroupBarrier();
    if (lid == 0u) {
        var ss = 0.0;
        for (var k = 0u; k < 8u; k++) {
            ss += partial[k];
        }
        for (var i = main; i < dims.d; i++) {
            ss += x[base + i] * x[base + i];
        }
        partial[0] = ss;
    }
    workgroupBarrier();
    return 1.0 / sqrt(partial[0] / f32(dims.d) + bitcast<f32>(dims.eps_bits));
}

// x normalized in place.
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * dims.rows_per_y;
    if (row >= dims.rows) {
        return;  // uniform across the workgroup: the barriers below are not reached
    }
    let base = row * dims.d;
    let scale = row_scale(lid, base);
    for (var i = lid; i < dims.d; i += WG) {
        x[base + i] = x[base + i] * scale * g[i];
    }
}

// x normalized into y (x unchanged): the residual stream stays while its normalized
// copy feeds the next matrices.
@compute @workgroup_size(64)
fn into(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * dims.rows_per_y;
    if (row >= dims.rows) {
        return;
    }
    let base = row * dims.d;
    let scale = row_scale(lid, base);
    for (var i = lid; i < dims.d; i += WG) {
        y[base + i] = x[base + i] * scale * g[i];
    }
}
