// Causal grouped-query attention of `n` new tokens over a KV cache of `len` positions
// (the new tokens' keys and values already appended; token t sits at position pos0 + t
// and sees positions 0..=pos0+t). Three passes over a scratch of n × heads × len scores:
//   scores:  one invocation per (token, head, position): q · k · scale, or -inf past t
//   softmax: one workgroup per (token, head): max, exp, sum and divide, in a tree
//   values:  one invocation per (token, head, value dimension): Σ p · v
// Query head h reads key/value head h / (heads / kv_heads).

struct Dims {
    n: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,    // keys and queries
    value_dim: u32,
    len: u32,         // cached positions, the new ones included
    pos0: u32,
    scale_bits: u32,  // f32 bits of the score scale
    per_y: u32,       // invocations (scores, values) or workgroups (softmax) per grid row
}

@group(0) @binding(0) var<storage, read> q: array<f32>;        // n × heads × head_dim
@group(0) @binding(1) var<storage, read> k: array<f32>;        // len × kv_heads × head_dim
@group(0) @binding(2) var<storage, read> v: array<f32>;        // len × kv_heads × value_dim
@group(0) @binding(3) var<storage, read_write> p: array<f32>;  // n × heads × len
@group(0) @binding(4) var<storage, read_write> o: array<f32>;  // n × heads × value_dim
@group(0) @binding(5) var<uniform> dims: Dims;

@compute @workgroup_size(256)
fn scores(@builtin(global_invocation_id) gid: vec3<u32>) {
    let id = gid.x + gid.y * dims.per_y;
    if (id >= dims.n * dims.heads * dims.len) {
        return;
    }
    let s = id % dims.len;
    let head = (id / dims.len) % dims.heads;
    let t = id / (dims.len * dims.heads);
    if (s > dims.pos0 + t) {
        p[id] = -3.4028235e38;  // masked: exp underflows to exactly 0
        return;
    }
    let kvh = head / (dims.heads / dims.kv_heads);
    let qo = (t * dims.heads + head) * dims.head_dim;
    let ko = (s * dims.kv_heads + kvh) * dims.head_dim;
    // four independent sums keep four loads in flight
    var a = vec4<f32>(0.0);
    var i = 0u;
    for (; i + 4u <= dims.head_dim; i += 4u) {
        a += vec4<f32>(q[qo + i], q[qo + i + 1u], q[qo + i + 2u], q[qo + i + 3u]) * vec4<f32>(k[ko + i], k[ko + i + 1u], k[ko + i + 2u], k[ko + i + 3u]);
    }
    for (; i < dims.head_dim; i++) {
        a.x += q[qo + i] * k[ko + i];
    }
    let acc = (a.x + a.y) + (a.z + a.w);
    p[id] = acc * bitcast<f32>(dims.scale_bits);
}

const WG: u32 = 64u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(64)
fn softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * dims.per_y;
    if (row >= dims.n * dims.heads) {
        return;  // uniform across the workgroup
    }
    let base = row * dims.len;
    var m = -3.4028235e38;
    for (var s = lid; s < dims.len; s += WG) {
        m = max(m, p[base + s]);
    }
    red[lid] = m;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            red[lid] = max(red[lid], red[lid + stride]);
        }
        workgroupBarrier();
    }
    m = red[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var s = lid; s < dims.len; s += WG) {
        let e = exp(p[base + s] - m);
        p[base + s] = e;
        sum += e;
    }
    red[lid] = sum;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    let total = red[0];
    for (var s = lid; s < dims.len; s += WG) {
        p[base + s] = p[base + s] / total;
    }
}

@compute @workgroup_size(256)
fn values(@builtin(global_invocation_id) gid: vec3<u32>) {
    let id = gid.x + gid.y * dims.per_y;
    if (id >= dims.n * dims.heads * dims.value_dim) {
        return;
    }
    let d = id % dims.value_dim;
    let head = (id / dims.value_dim) % dims.heads;
    let t = id / (dims.value_dim * dims.heads);
    let kvh = head / (dims.heads / dims.kv_heads);
    let base = (t * dims.heads + head) * dims.len;
    let stride = dims.kv_heads * dims.value_dim;
    let vo = kvh * dims.value_dim + d;
    let end = dims.pos0 + t + 1u;  // positions this token sees
    // four independent sums keep four loads in flight
    var a = vec4<f32>(0.0);
    var s = 0u;
    for (; s + 4u <= end; s += 4u) {
        a += vec4<f32>(p[base + s], p[base + s + 1u], p[base + s + 2u], p[base + s + 3u])
           * vec4<f32>(v[s * stride + vo], v[(s + 1u) * stride + vo], v[(s + 2u) * stride + vo], v[(s + 3u) * stride + vo]);
    }
    for (; s < end; s++) {
        a.x += p[base + s] * v[s * stride + vo];
    }
    let acc = (a.x + a.y) + (a.z + a.w);
    o[id] = acc;
}
