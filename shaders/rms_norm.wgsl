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
// squares of a stretch of the row, eight per invocation
const STRETCH: u32 = 512u;
var<workgroup> squares: array<f32, STRETCH>;

// The scale of row `row` (1/rms(x)), computed by the whole workgroup, with the CPU
// backend's bits: when the next matrix quantizes the result, values of a quantized
// embedding sit exactly on rounding ties and one bit decides. So the sum of squares is
// made in the CPU's order (its `dot`: eight running sums over strided elements, added in
// lane order, then the tail one by one), each square rounded before it is added (the
// squares go through workgroup memory, so that no compiler fuses a square and its
// addition into one multiply-add, which would not round the square), and the mean, root
// and reciprocal are correctly rounded (exact.wgsl).
fn row_scale(lid: u32, base: u32) -> f32 {
    let d = dims.d;
    let main = d / 8u * 8u;
    var acc = 0.0;
    var start = 0u;
    for (; start < d; start += STRETCH) {
        for (var i = lid; i < STRETCH && start + i < d; i += WG) {
            let v = x[base + start + i];
            squares[i] = v * v;
        }
        workgroupBarrier();
        if (lid < 8u) {
            for (var i = lid; i < STRETCH && start + i < main; i += 8u) {
                acc += squares[i];
            }
        }
        workgroupBarrier();
    }
    if (lid < 8u) {
        partial[lid] = acc;
    }
    workgroupBarrier();
    if (lid == 0u) {
        var ss = 0.0;
        for (var k = 0u; k < 8u; k++) {
            ss += partial[k];
        }
        // the tail (fewer than eight) lies in the last stretch, still in `squares`
        let last = start - STRETCH;
        for (var i = main; i < d; i++) {
            ss += squares[i - last];
        }
        partial[0] = ss;
    }
    workgroupBarrier();
    return div_exact(1.0, sqrt_exact(div_exact(partial[0], f32(d)) + bitcast<f32>(dims.eps_bits)));
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
