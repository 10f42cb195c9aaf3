// Expert routing on the device, so a MoE layer needs no readback: one workgroup per
// token turns its router logits into the chosen experts' ids and mixing weights, as the
// CPU router (src/model/router.rs) does: probabilities by softmax or sigmoid; selection
// scores = probabilities + optional bias; optional group-limited selection (groups
// scored by their best score or the sum of their best two, the best n_group_used kept);
// top-k by score, ties to the lower id; weights = the chosen probabilities, optionally
// renormalized to sum to 1 (the sum floored at 2^-14), times a scale.

struct RouteDims {
    n: u32,            // tokens
    n_expert: u32,     // at most MAX_EXPERTS
    k: u32,            // experts per token, at most MAX_K
    groups_x: u32,     // workgroups per row of the dispatch grid
    gating: u32,       // 0 softmax, 1 sigmoid
    has_bias: u32,
    norm: u32,
    scale: f32,
    n_group: u32,
    n_group_used: u32,
    group_score: u32,  // 0 best score, 1 sum of the best two
}

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> weights: array<f32>;
@group(0) @binding(4) var<uniform> dims: RouteDims;

const WG: u32 = 256u;
const MAX_EXPERTS: u32 = 1024u;
const MAX_K: u32 = 64u;
const LOWEST: f32 = -3.4028235e38;

var<workgroup> prob: array<f32, MAX_EXPERTS>;
var<workgroup> sel: array<f32, MAX_EXPERTS>;
var<workgroup> red_v: array<f32, WG>;
var<workgroup> red_i: array<u32, WG>;
var<workgroup> chosen: array<u32, MAX_K>;

fn reduce_max(lid: u32, v: f32) -> f32 {
    red_v[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red_v[lid] = max(red_v[lid], red_v[lid + s]);
        }
        workgroupBarrier();
    }
    let m = red_v[0];
    workgroupBarrier();
    return m;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red_v[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red_v[lid] += red_v[lid + s];
        }
        workgroupBarrier();
    }
    let m = red_v[0];
    workgroupBarrier();
    return m;
}

// Score of group g for group-limited routing.
fn group_score(g: u32, per: u32) -> f32 {
    var best = LOWEST;
    var second = LOWEST;
    for (var e = g * per; e < (g + 1u) * per; e++) {
        let v = sel[e];
        if (v > best) {
            second = best;
            best = v;
        } else if (v > second) {
            second = v;
        }
    }
    if (dims.group_score == 1u) {
        return best + second;
    }
    return best;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wg.x + wg.y * dims.groups_x;
    if (t >= dims.n) {
        return;  // uniform across the workgroup
    }
    let ne = dims.n_expert;
    var m = LOWEST;
    for (var e = lid; e < ne; e += WG) {
        prob[e] = logits[t * ne + e];
        m = max(m, prob[e]);
    }
    if (dims.gating == 0u) {
        let mx = reduce_max(lid, m);
        var s = 0.0;
        for (var e = lid; e < ne; e += WG) {
            prob[e] = exp(prob[e] - mx);
            s += prob[e];
        }
        let total = reduce_sum(lid, s);
        for (var e = lid; e < ne; e += WG) {
            prob[e] = prob[e] / total;
        }
    } else {
        for (var e = lid; e < ne; e += WG) {
            prob[e] = 1.0 / (1.0 + exp(-prob[e]));
        }
    }
    for (var e = lid; e < ne; e += WG) {
        sel[e] = prob[e];
        if (dims.has_bias != 0u) {
            sel[e] += bias[e];
        }
    }
    workgroupBarrier();
    if (dims.n_group > 1u && lid == 0u) {
        // keep the best n_group_used groups (ties to the lower group), mask the rest
        let per = ne / dims.n_group;
        var keep = 0u;  // bit mask of kept groups (at most 32 groups)
        for (var j = 0u; j < dims.n_group_used; j++) {
            var bg = 0u;
            var bs = LOWEST;
            var found = false;
            for (var g = 0u; g < dims.n_group; g++) {
                if ((keep & (1u << g)) == 0u) {
                    let s = group_score(g, per);
                    if (!found || s > bs) {
                        bg = g;
                        bs = s;
                        found = true;
                    }
                }
            }
            keep |= 1u << bg;
        }
        for (var e = 0u; e < ne; e++) {
            if ((keep & (1u << (e / per))) == 0u) {
                sel[e] = LOWEST;
            }
        }
    }
    workgroupBarrier();
    for (var j = 0u; j < dims.k; j++) {
        var bv = LOWEST;
        var bi = 0xffffffffu;
        for (var e = lid; e < ne; e += WG) {
            if (sel[e] > bv || (sel[e] == bv && e < bi)) {
                bv = sel[e];
                bi = e;
            }
        }
        red_v[lid] = bv;
        red_i[lid] = bi;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s = s / 2u) {
            if (lid < s) {
                let v = red_v[lid + s];
                let i = red_i[lid + s];
                if (v > red_v[lid] || (v == red_v[lid] && i < red_i[lid])) {
                    red_v[lid] = v;
                    red_i[lid] = i;
                }
            }
            workgroupBarrier();
        }
        if (lid == 0u) {
            chosen[j] = red_i[0];
            sel[red_i[0]] = LOWEST;
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var sum = 0.0;
        for (var j = 0u; j < dims.k; j++) {
            sum += prob[chosen[j]];
        }
        sum = max(sum, 6.1035156e-5);
        for (var j = 0u; j < dims.k; j++) {
            var w = prob[chosen[j]];
            if (dims.norm != 0u) {
                w = w / sum;
            }
            ids[t * dims.k + j] = chosen[j];
            weights[t * dims.k + j] = w * dims.scale;
        }
    }
}
