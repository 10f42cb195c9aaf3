// Compiled after gemv_lanes.wgsl (Dims, LANES, ROWS_PER_GROUP, row_sum).
// y = x · Wᵀ for a Q3_K matrix W (rows × cols) and n activation rows quantized to Q8_K
// by quantize.wgsl (`xq` signed bytes, `xd` block scales).
//
// GGUF's Q3_K block is 110 bytes, not a multiple of 4, so blocks are uploaded in 112-byte
// slots (28 words): high bits `hmask` at bytes 0..32, 2-bit quants at 32..96, twelve
// bytes of packed 6-bit scales at 96..108, the f16 scale d at 108..110. Within each half
// of 128 values, value 32·s + l (s < 4, l < 32) is bits 2s..2s+1 of quant byte
// 32·half + l, minus 4 unless bit 4·half + s of hmask[l] is set; group g of 16 values
// has scale (low four bits: nibble g / 8 of byte g mod 8; top two: bits 2·(g / 4) of byte
// 8 + g mod 4) minus 32. A lane's work item is one group: the quants as unsigned
// `q + 4` (0..7) in a packed 4-byte dot product, less 4·Σ a.

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> xq: array<u32>;
@group(0) @binding(2) var<storage, read> xd: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> dims: Dims;

// Byte `i` of the block at word `base`.
fn block_byte(base: u32, i: u32) -> u32 {
    return (w[base + i / 4u] >> (8u * (i % 4u))) & 0xffu;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = place(wg, lid);
    var acc = 0.0;
    if (p.row < dims.rows) {
        for (var item = p.lane; item < dims.per_row * 16u; item += LANES) {
            let it = group16(p, item);
            let base = (p.wrow * dims.per_row + it.b) * 28u;
            let low4 = (block_byte(base, 96u + it.g % 8u) >> (4u * (it.g / 8u))) & 0x0fu;
            let top2 = (block_byte(base, 104u + it.g % 4u) >> (2u * (it.g / 4u))) & 0x03u;
            let sc = i32(low4 | (top2 << 4u)) - 32i;
            let d = unpack2x16float(w[base + 27u]).x;
            let q = base + (32u + it.half * 32u + it.l0) / 4u;
            let h = base + it.l0 / 4u;
            var isum = 0i;
            var xsum = 0i;
            for (var i = 0u; i < 4u; i++) {
                let a = xq[it.xw + i];
                let u = ((w[q + i] >> (2u * it.quarter)) & 0x03030303u) | (((w[h + i] >> (4u * it.half + it.quarter)) & 0x01010101u) << 2u);
                isum += dot4I8Packed(u, a);
                xsum += dot4I8Packed(0x01010101u, a);
            }
            acc += d * xd[it.xb] * f32(sc * (isum - 4i * xsum));
        }
    }
    finish(lid, p, acc);
}
