// Causal grouped-query attention of a batch's new tokens, each over its own sequence's
// cached positions (the new tokens' keys and values already written), in one dispatch:
// one workgroup per (token row, head):
//   scores:  q · k · scale for each position the token sees (invocations take positions
//            in turn), kept in a scratch row
//   softmax: the row's maximum and the sum of exp(score − max), each in a tree
//   values:  Σ exp(score − max) · v, one invocation per value dimension, divided by the
//            sum at the end
// Query head h reads key/value head h / (heads / kv_heads). Sums run four at a time so
// each invocation keeps four loads in flight.
//
// The cache is paged: position s of a sequence is row pages[first_page + s / page] · page
// + s % page of the k and v buffers, `first_page` where the sequence's page table starts
// in `pages`. Token row t's entry in `rows`: the positions it sees (its own included),
// its sequence's first_page, and where its scores start in the scratch (heads rows of
// that length). Token row t is row row0 + t of q and o.

struct Dims {
    n: u32,           // token rows
    heads: u32,
    kv_heads: u32,
    head_dim: u32,    // keys and queries
    value_dim: u32,
    scale_bits: u32,  // f32 bits of the score scale
    per_y: u32,       // workgroups per grid row
    v_stride: u32,    // values from one position to the next (kv_heads · value_dim, or
                      // wider where values are the first part of latent key rows)
    page: u32,        // positions per page
    row0: u32,        // the first token's row in q and o (rows before it: other batches)
}

struct Row {
    end: u32,         // positions seen
    first_page: u32,  // the sequence's page table in `pages`
    scores: u32,      // the row's first score in `p`
}

@group(0) @binding(0) var<storage, read> q: array<f32>;        // n × heads × head_dim
// The cache holds f32 values, or (HALF) f16 pairs packed in words, first in the low half.
const HALF: bool = false;
alias Kv = f32;

@group(0) @binding(1) var<storage, read> k: array<Kv>;         // cache rows × kv_heads × head_dim
@group(0) @binding(2) var<storage, read> v: array<Kv>;         // cache rows × v_stride
@group(0) @binding(3) var<storage, read_write> p: array<f32>;  // scores
@group(0) @binding(4) var<storage, read_write> o: array<f32>;  // n × heads × value_dim
@group(0) @binding(5) var<storage, read> rows: array<Row>;
@group(0) @binding(6) var<storage, read> pages: array<u32>;
@group(0) @binding(7) var<uniform> dims: Dims;

// The cache row of position s of the sequence whose page table starts at `first`.
fn cache_row(first: u32, s: u32) -> u32 {
    return pages[first + s / dims.page] * dims.page + s % dims.page;
}

// Cached key (value) number i.
fn k_at(i: u32) -> f32 {
    if (HALF) {
        return unpack2x16float(bitcast<u32>(k[i >> 1u]))[i & 1u];
    }
    return bitcast<f32>(k[i]);
}

fn v_at(i: u32) -> f32 {
    if (HALF) {
        return unpack2x16float(bitcast<u32>(v[i >> 1u]))[i & 1u];
    }
    return bitcast<f32>(v[i]);
}

const WG: u32 = 256u;
const LOWEST: f32 = -3.4028235e38;
var<workgroup> red: array<f32, WG>;

fn reduce(lid: u32, x: f32, take_max: bool) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            if (take_max) {
                red[lid] = max(red[lid], red[lid + stride]);
            } else {
                red[lid] += red[lid + stride];
            }
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * dims.per_y;  // token t, head h: row = t · heads + h
    if (row >= dims.n * dims.heads) {
        return;  // uniform across the workgroup
    }
    let head = row % dims.heads;
    let t = row / dims.heads;
    let kvh = head / (dims.heads / dims.kv_heads);
    let r = rows[t];
    let end = r.end;  // positions this token sees
    let base = r.scores + head * end;
    let out_row = dims.row0 * dims.heads + row;
    let qo = out_row * dims.head_dim;
    let scale = bitcast<f32>(dims.scale_bits);

    var m = LOWEST;
    for (var s = lid; s < end; s += WG) {
        let ko = (cache_row(r.first_page, s) * dims.kv_heads + kvh) * dims.head_dim;
        var a = vec4<f32>(0.0);
        var i = 0u;
        for (; i + 4u <= dims.head_dim; i += 4u) {
            a += vec4<f32>(q[qo + i], q[qo + i + 1u], q[qo + i + 2u], q[qo + i + 3u]) * vec4<f32>(k_at(ko + i), k_at(ko + i + 1u), k_at(ko + i + 2u), k_at(ko + i + 3u));
        }
        for (; i < dims.head_dim; i++) {
            a.x += q[qo + i] * k_at(ko + i);
        }
        let score = ((a.x + a.y) + (a.z + a.w)) * scale;
        p[base + s] = score;
        m = max(m, score);
    }
    let mx = reduce(lid, m, true);
    var sum = 0.0;
    for (var s = lid; s < end; s += WG) {
        let e = exp(p[base + s] - mx);
        p[base + s] = e;
        sum += e;
    }
    let total = reduce(lid, sum, false);
    // every invocation's exponentials written before any is read
    storageBarrier();
    workgroupBarrier();
    let stride = dims.v_stride;
    if (dims.value_dim > WG) {
        // wide values: each invocation walks every position for its dimensions
        for (var d = lid; d < dims.value_dim; d += WG) {
            let vo = kvh * dims.value_dim + d;
            var a = vec4<f32>(0.0);
            var s = 0u;
            for (; s + 4u <= end; s += 4u) {
                a += vec4<f32>(p[base + s], p[base + s + 1u], p[base + s + 2u], p[base + s + 3u])
                   * vec4<f32>(v_at(cache_row(r.first_page, s) * stride + vo), v_at(cache_row(r.first_page, s + 1u) * stride + vo), v_at(cache_row(r.first_page, s + 2u) * stride + vo), v_at(cache_row(r.first_page, s + 3u) * stride + vo));
            }
            for (; s < end; s++) {
                a.x += p[base + s] * v_at(cache_row(r.first_page, s) * stride + vo);
            }
            o[out_row * dims.value_dim + d] = ((a.x + a.y) + (a.z + a.w)) / total;
        }
        return;
    }
    // WG / value_dim groups of invocations (two for 128-wide values) split the positions
    // between them, each invocation one dimension; their sums meet in shared memory
    let groups = WG / dims.value_dim;
    let g = lid / dims.value_dim;
    let d = lid % dims.value_dim;
    var part = 0.0;
    if (g < groups) {
        let vo = kvh * dims.value_dim + d;
        var a = vec4<f32>(0.0);
        // runs of four positions, run c to group c mod groups; the tail after the last
        // whole run to the group whose turn it is
        let runs = end / 4u;
        for (var c = g; c < runs; c += groups) {
            let s = 4u * c;
            a += vec4<f32>(p[base + s], p[base + s + 1u], p[base + s + 2u], p[base + s + 3u])
               * vec4<f32>(v_at(cache_row(r.first_page, s) * stride + vo), v_at(cache_row(r.first_page, s + 1u) * stride + vo), v_at(cache_row(r.first_page, s + 2u) * stride + vo), v_at(cache_row(r.first_page, s + 3u) * stride + vo));
        }
        if (runs % groups == g) {
            for (var s = 4u * runs; s < end; s++) {
                a.x += p[base + s] * v_at(cache_row(r.first_page, s) * stride + vo);
            }
        }
        part = (a.x + a.y) + (a.z + a.w);
    }
    red[lid] = part;
    workgroupBarrier();
    if (g == 0u) {
        var sum = 0.0;
        for (var k = 0u; k < groups; k++) {
            sum += red[k * dims.value_dim + d];
        }
        o[out_row * dims.value_dim + d] = sum / total;
    }
}
