// Rotary position embedding, in place, for `n` tokens of `heads` heads of `head_dim`
// values each: the first 2·half values of every head are rotated pairwise by the token's
// angles. The cosines and sines come from the host (`cs`: n × half cosines, then n × half
// sines), computed there with every scaling rule (linear, YaRN), so both backends rotate
// by the same numbers. Pairs are (2i, 2i+1) when `neox` is 0, (i, i+half) when it is 1.
// One invocation per (token, head, pair).

struct Dims {
    n: u32,
    heads: u32,
    head_dim: u32,
    half: u32,
    neox: u32,
    per_y: u32,   // invocations per row of the dispatch grid (groups_x · 256)
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> cs: array<f32>;
@group(0) @binding(2) var<uniform> dims: Dims;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let id = gid.x + gid.y * dims.per_y;
    if (id >= dims.n * dims.heads * dims.half) {
        return;
    }
    let i = id % dims.half;
    let head = (id / dims.half) % dims.heads;
    let t = id / (dims.half * dims.heads);
    let c = cs[t * dims.half + i];
    let s = cs[dims.n * dims.half + t * dims.half + i];
    let base = (t * dims.heads + head) * dims.head_dim;
    var ia = base + 2u * i;
    var ib = ia + 1u;
    if (dims.neox == 1u) {
        ia = base + i;
        ib = base + i + dims.half;
    }
    let a = x[ia];
    let b = x[ib];
    x[ia] = a * c - b * s;
    x[ib] = a * s + b * c;
}
