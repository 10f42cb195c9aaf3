// Activation rows quantized once per matrix product, before the integer GEMV kernels
// read them (optionally the SwiGLU product of two rows, so a down projection's input
// needs no separate pass): `q8_0` in blocks of 32 (for Q8_0 weights), `q8_k` in blocks of 256 (for
// the K-quants), each exactly as the CPU backend quantizes (src/quant/activations.rs),
// so both backends form the same integer sums. Output: the values as signed bytes packed
// four to a word in `xq` (row-major, as `x`), one scale per block in `xs` (Q8_0: the
// f16-rounded scale; Q8_K: 1/iscale, 0 for an all-zero block), and for Q8_K the sum of
// each group of 32 quantized values in `bsums`. One invocation per word; workgroups of
// 64 cover eight Q8_0 blocks or one Q8_K block and find each block's largest magnitude
// in shared memory.

struct QDims {
    blocks: u32,      // blocks to quantize (all rows together)
    groups_x: u32,    // workgroups per row of the dispatch grid
    swiglu: u32,      // 1: quantize silu(x) · u, the SwiGLU product, instead of x
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> xq: array<u32>;
@group(0) @binding(2) var<storage, read_write> xs: array<f32>;
@group(0) @binding(3) var<storage, read_write> bsums: array<i32>;
@group(0) @binding(4) var<uniform> dims: QDims;
@group(0) @binding(5) var<storage, read> u: array<f32>;

var<workgroup> red_abs: array<f32, 64>;
var<workgroup> red_val: array<f32, 64>;
var<workgroup> red_sum: array<i32, 64>;

// round half away from zero, exactly (as Rust's f32::round). `v` is compared with the
// halfway point rather than having the integer part subtracted: `v` is a product, and a
// compiler may fuse `x * y - r` into a multiply-add that never rounds the product,
// deciding ties by digits the CPU has rounded away.
fn round_away(v: f32) -> i32 {
    let r = trunc(v);
    if (abs(v) >= abs(r) + 0.5) {
        return i32(r + sign(v));
    }
    return i32(r);
}

// v rounded to the nearest f16 value, ties to even, as a widened f32 (the CPU's
// f16::from_f32): pack2x16float's rounding is up to the driver. v ≥ 0 here.
fn round_f16(v: f32) -> f32 {
    if (v >= 65520.0) {
        return bitcast<f32>(0x7f800000u);  // beyond f16: infinity
    }
    if (v < 6.103515625e-05) {
        // subnormal f16: multiples of 2^-24 (scaling by 2^24 is exact)
        return round(v * 16777216.0) / 16777216.0;
    }
    let bits = bitcast<u32>(v);
    return bitcast<f32>((bits + 0xfffu + ((bits >> 13u) & 1u)) & ~0x1fffu);
}

// Values i..i+4 to quantize: x, or silu(x) · u (as elementwise.wgsl's swiglu computes it).
fn load4(i: u32) -> vec4<f32> {
    let g = vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
    if (dims.swiglu == 0u) {
        return g;
    }
    return g / (1.0 + exp(-g)) * vec4<f32>(u[i], u[i + 1u], u[i + 2u], u[i + 3u]);
}

@compute @workgroup_size(64)
fn q8_0(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let blk = (wg.x + wg.y * dims.groups_x) * 8u + lid / 8u;
    let live = blk < dims.blocks;
    let word = blk * 8u + lid % 8u;
    var v = vec4<f32>(0.0);
    if (live) {
        v = load4(word * 4u);
    }
    let a = abs(v);
    red_abs[lid] = max(max(a.x, a.y), max(a.z, a.w));
    workgroupBarrier();
    for (var s = 4u; s > 0u; s = s / 2u) {
        if (lid % 8u < s) {
            red_abs[lid] = max(red_abs[lid], red_abs[lid + s]);
        }
        workgroupBarrier();
    }
    let d = div_exact(red_abs[lid - lid % 8u], 127.0);
    var id = 0.0;
    if (d != 0.0) {
        id = div_exact(1.0, d);
    }
    if (live) {
        xq[word] = pack4xI8(vec4<i32>(round_away(v.x * id), round_away(v.y * id), round_away(v.z * id), round_away(v.w * id)));
        if (lid % 8u == 0u) {
            xs[blk] = round_f16(d);
        }
    }
}

@compute @workgroup_size(64)
fn q8_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let blk = wg.x + wg.y * dims.groups_x;
    if (blk >= dims.blocks) {
        return;  // uniform across the workgroup: no barrier is skipped by only some
    }
    let word = blk * 64u + lid;
    let v = load4(word * 4u);
    // the first value of largest magnitude (later ones win only when strictly larger)
    var best = v.x;
    for (var i = 1u; i < 4u; i++) {
        if (abs(v[i]) > abs(best)) {
            best = v[i];
        }
    }
    red_abs[lid] = abs(best);
    red_val[lid] = best;
    workgroupBarrier();
    // neighbours pair up (stride doubling), so a left part always holds earlier values
    for (var s = 1u; s < 64u; s = s * 2u) {
        if (lid % (2u * s) == 0u && red_abs[lid + s] > red_abs[lid]) {
            red_abs[lid] = red_abs[lid + s];
            red_val[lid] = red_val[lid + s];
        }
        workgroupBarrier();
    }
    let amax = red_abs[0];
    var q = vec4<i32>(0);
    var iscale = 0.0;
    if (amax != 0.0) {
        iscale = div_exact(-127.0, red_val[0]);
        q = min(vec4<i32>(round(iscale * v)), vec4<i32>(127));
    }
    xq[word] = pack4xI8(q);
    red_sum[lid] = q.x + q.y + q.z + q.w;
    workgroupBarrier();
    for (var s = 4u; s > 0u; s = s / 2u) {
        if (lid % 8u < s) {
            red_sum[lid] += red_sum[lid + s];
        }
        workgroupBarrier();
    }
    if (lid % 8u == 0u) {
        bsums[blk * 8u + lid / 8u] = red_sum[lid];
    }
    if (lid == 0u) {
        var yd = 0.0;
        if (amax != 0.0) {
            yd = div_exact(1.0, iscale);
        }
        xs[blk] = yd;
    }
}
