// Rotary position embedding, in place, for `n` tokens of `heads` heads of `head_dim`
// values each: the first 2·half values of every head are rotated pairwise by the token's
// angles. The cosines and sines come from the host (`cs`: n × half cosines, then n × half
// sines), computed there with every scaling rule (linear, YaRN), so both backends rotate
// by the same numbers. Pairs are (2i, 2i+1) when `neox` is 0, (i, i+half) when it is 1.
// One invocation per (token, head, pair).

struct Dims {
    n: u32,
    heads: u32,   // heads of x
    head_dim: u32,
    half: u32,
    neox: u32,
    per_y: u32,   // invocations per row of the dispatch grid (groups_x · 256)
    heads2: u32,  // heads of x2, rotated in the same dispatch (keys with the queries)
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> cs: array<f32>;
@group(0) @binding(2) var<uniform> dims: Dims;
@group(0) @binding(3) var<storage, read_write> x2: array<f32>;

// The pair of indices rotation `id` of a tensor with `heads` heads moves, and its angle's
// cosine and sine.
struct Pair {
    ia: u32,
    ib: u32,
    c: f32,
    s: f32,
}

fn pair(id: u32, heads: u32) -> Pair {
    let i = id % dims.half;
    let head = (id / dims.half) % heads;
    let t = id / (dims.half * heads);
    let base = (t * heads + head) * dims.head_dim;
    var r = Pair(base + 2u * i, base + 2u * i + 1u, cs[t * dims.half + i], cs[dims.n * dims.half + t * dims.half + i]);
    if (dims.neox == 1u) {
        r.ia = base + i;
        r.ib = base + i + dims.half;
    }
    return r;
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let id = gid.x + gid.y * dims.per_y;
    let first = dims.n * dims.heads * dims.half;
    if (id < first) {
        let r = pair(id, dims.heads);
        let a = x[r.ia];
        let b = x[r.ib];
        x[r.ia] = a * r.c - b * r.s;
        x[r.ib] = a * r.s + b * r.c;
    } else if (id - first < dims.n * dims.heads2 * dims.half) {
        let r = pair(id - first, dims.heads2);
        let a = x2[r.ia];
        let b = x2[r.ib];
        x2[r.ia] = a * r.c - b * r.s;
        x2[r.ib] = a * r.s + b * r.c;
    }
}
