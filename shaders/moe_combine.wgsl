// Combining expert outputs into a layer's output `out` (n × d), rows of `y` at a time:
//   gated_add:   out[t] += sigmoid(wts[t]) · y[t]   (a shared expert behind a sigmoid gate)
//   weighted_sum: out[t] (+)= Σ_s wts[t·k + s] · y[t·k + s]   (a token's k routed experts,
//                 rows of y in the router's order, from one stacked-expert dispatch;
//                 added to out when it is the residual stream itself)
// One invocation per (row of y, column).

struct Dims {
    rows: u32,   // rows of y
    d: u32,
    per_y: u32,
    k: u32,      // weighted_sum: experts per token
    accumulate: u32,  // weighted_sum: 1 adds to out instead of overwriting it
}

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read> wts: array<f32>;
@group(0) @binding(4) var<uniform> dims: Dims;

@compute @workgroup_size(256)
fn gated_add(@builtin(global_invocation_id) gid: vec3<u32>) {
    let id = gid.x + gid.y * dims.per_y;
    if (id >= dims.rows * dims.d) {
        return;
    }
    let t = id / dims.d;
    out[id] += 1.0 / (1.0 + exp(-wts[t])) * y[id];
}

@compute @workgroup_size(256)
fn weighted_sum(@builtin(global_invocation_id) gid: vec3<u32>) {
    let id = gid.x + gid.y * dims.per_y;
    if (id >= dims.rows * dims.d) {
        return;
    }
    let t = id / dims.d;
    let j = id % dims.d;
    var acc = 0.0;
    for (var s = 0u; s < dims.k; s++) {
        let r = t * dims.k + s;
        acc += wts[r] * y[r * dims.d + j];
    }
    if (dims.accumulate != 0u) {
        out[id] += acc;
    } else {
        out[id] = acc;
    }
}
