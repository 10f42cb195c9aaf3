// Compiled after gemv_lanes.wgsl (Dims, LANES, ROWS_PER_GROUP, row_sum).
// y = x · Wᵀ for a Q2_K matrix W (rows × cols) and n activation rows quantized to Q8_K
// by quantize.wgsl (`xq` signed bytes, `xd` block scales).
//
// GGUF's Q2_K block is 84 bytes (21 words), uploaded as it is: sixteen bytes of scales
// (per group of 16 values: the scale in the low nibble, the min in the high one), 64
// bytes of 2-bit quants, then the f16 scales d and dmin in one word. Within each half of
// 128 values, value 32·s + l (s < 4, l < 32) is bits 2s..2s+1 of byte 32·half + l. A
// lane's work item is one group of 16 values: four words of quants and four of
// activations, combined with packed 4-byte dot products into the CPU backend's integer
// sums (Σ q·a, and Σ a for the min).

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> xq: array<u32>;
@group(0) @binding(2) var<storage, read> xd: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> dims: Dims;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = place(wg, lid);
    var acc = 0.0;
    if (p.row < dims.rows) {
        for (var item = p.lane; item < dims.per_row * 16u; item += LANES) {
            let it = group16(p, item);
            let base = (p.wrow * dims.per_row + it.b) * 21u;
            let scale_min = (w[base + it.g / 4u] >> (8u * (it.g % 4u))) & 0xffu;
            let dd = unpack2x16float(w[base + 20u]);
            let q = base + (16u + it.half * 32u + it.l0) / 4u;
            var isum = 0i;
            var xsum = 0i;
            for (var i = 0u; i < 4u; i++) {
                let a = xq[it.xw + i];
                isum += dot4I8Packed((w[q + i] >> (2u * it.quarter)) & 0x03030303u, a);
                xsum += dot4I8Packed(0x01010101u, a);
            }
            acc += xd[it.xb] * (dd.x * f32(i32(scale_min & 0x0fu) * isum) - dd.y * f32(i32(scale_min >> 4u) * xsum));
        }
    }
    finish(lid, p, acc);
}
