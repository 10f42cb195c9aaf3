// Compiled after gemv_lanes.wgsl (Dims, LANES, ROWS_PER_GROUP, row_sum).
// y = x · Wᵀ for a Q4_K matrix W (rows × cols) and n activation rows quantized to Q8_K
// by quantize.wgsl (`xq` signed bytes, `xd` block scales, `bsums` sums of 32).
//
// Q4_K blocks are 144 bytes (nine vec4<u32>), so the GGUF bytes are used in place: block
// b starts at word 36·b with [d, dmin] as two f16 in word 0, the twelve bytes of 6-bit
// scales and mins in words 1..3, and 128 bytes of nibbles in words 4..35 (group 2k in the
// low nibbles of bytes 32k..32k+31, group 2k+1 in their high nibbles). Weight i of group
// j is d·sc[j]·q − dmin·m[j]. A lane's work item is one such pair of groups (64 weights,
// 32 bytes); the lanes of a row take consecutive items, so together they read whole
// blocks. The integer sums are the CPU backend's; only float additions are reordered.

@group(0) @binding(0) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> xd: array<f32>;
@group(0) @binding(3) var<storage, read> bsums: array<i32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<uniform> dims: Dims;

// Byte k (0..11) of the scales, which start at word 1 of a block whose first vec4 is `h`.
fn scale_byte(h: vec4<u32>, k: u32) -> u32 {
    return (h[1u + k / 4u] >> (8u * (k % 4u))) & 0xffu;
}

fn dot_nibbles(q: vec4<u32>, shift: u32, a: vec4<u32>) -> i32 {
    let m = 0x0f0f0f0fu;
    return dot4I8Packed((q.x >> shift) & m, a.x) + dot4I8Packed((q.y >> shift) & m, a.y)
         + dot4I8Packed((q.z >> shift) & m, a.z) + dot4I8Packed((q.w >> shift) & m, a.w);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = (wg.x + wg.y * dims.groups_x) * ROWS_PER_GROUP + lid / LANES;
    let lane = lid % LANES;
    let z = wg.z;
    let t = z / dims.act_div;
    let wrow = weight_row(row, z);
    var acc = 0.0;
    if (row < dims.rows) {
        for (var item = lane; item < dims.per_row * 4u; item += LANES) {
            let b = item / 4u;
            let k = item % 4u;
            let blk = (wrow * dims.per_row + b) * 9u;  // in vec4s
            let h = w[blk];
            let dm = unpack2x16float(h.x);
            // scales and mins of groups 2k (j < 4 always) and 2k+1
            let j0 = 2u * k;
            let j1 = j0 + 1u;
            var sc0: u32;
            var mn0: u32;
            var sc1: u32;
            var mn1: u32;
            if (k < 2u) {
                sc0 = scale_byte(h, j0) & 63u;
                mn0 = scale_byte(h, j0 + 4u) & 63u;
                sc1 = scale_byte(h, j1) & 63u;
                mn1 = scale_byte(h, j1 + 4u) & 63u;
            } else {
                sc0 = (scale_byte(h, j0 + 4u) & 0xfu) | ((scale_byte(h, j0 - 4u) >> 6u) << 4u);
                mn0 = (scale_byte(h, j0 + 4u) >> 4u) | ((scale_byte(h, j0) >> 6u) << 4u);
                sc1 = (scale_byte(h, j1 + 4u) & 0xfu) | ((scale_byte(h, j1 - 4u) >> 6u) << 4u);
                mn1 = (scale_byte(h, j1 + 4u) >> 4u) | ((scale_byte(h, j1) >> 6u) << 4u);
            }
            let q0 = w[blk + 1u + 2u * k];
            let q1 = w[blk + 2u + 2u * k];
            let xb = t * dims.per_row + b;
            let xv = xb * 16u + 4u * k;  // group j0's activations: 2 vec4s, then j1's
            let s0 = dot_nibbles(q0, 0u, xq[xv]) + dot_nibbles(q1, 0u, xq[xv + 1u]);
            let s1 = dot_nibbles(q0, 4u, xq[xv + 2u]) + dot_nibbles(q1, 4u, xq[xv + 3u]);
            let yd = xd[xb];
            let bs0 = bsums[xb * 8u + j0];
            let bs1 = bsums[xb * 8u + j1];
            acc += yd * dm.x * f32(i32(sc0) * s0) - yd * dm.y * f32(i32(mn0) * bs0);
            acc += yd * dm.x * f32(i32(sc1) * s1) - yd * dm.y * f32(i32(mn1) * bs1);
        }
    }
    let total = row_sum(lid, acc);
    if (lane == 0u && row < dims.rows) {
        store(z * dims.rows + row, total);
    }
}
