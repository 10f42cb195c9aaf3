// Compiled after gemv_common.wgsl (Dims, WG, workgroup_sum) and kquant_common.wgsl
// (byte_of, q8k_iscale).
// y = x · Wᵀ for a Q4_K matrix W (rows × cols) and n f32 activation rows x.
//
// Q4_K blocks are 144 bytes, a multiple of 4, so the GGUF bytes are used in place as
// words: block b starts at word 36·b with [d, dmin] as two f16 in word 0, the twelve
// bytes of 6-bit scales and mins in words 1..3, and 128 bytes of nibbles in words 4..35
// (group 2k in the low nibbles of bytes 32k..32k+31, group 2k+1 in their high nibbles).
// Weight i of group j is d·sc[j]·q − dmin·m[j]. Activations are quantized per block of
// 256 as the CPU backend does (Q8_K: scale from the value of largest magnitude, ties to
// even), so both backends form the same integer sums. One workgroup per (row, token);
// its 64 invocations take every 64th group of 32 weights, then sum in a tree.


@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;


@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * dims.rows_per_y;
    let t = wg.z;
    var acc = 0.0;
    if (row < dims.rows) {
        let cols = dims.per_row * 256u;
        for (var item = lid; item < dims.per_row * 8u; item += WG) {
            let b = item / 8u;
            let j = item % 8u;
            let base = (row * dims.per_row + b) * 36u;
            let dm = unpack2x16float(w[base]);
            let sb = base + 1u;  // scale bytes
            var sc: u32;
            var mn: u32;
            if (j < 4u) {
                sc = byte_of(sb, j) & 63u;
                mn = byte_of(sb, j + 4u) & 63u;
            } else {
                sc = (byte_of(sb, j + 4u) & 0xfu) | ((byte_of(sb, j - 4u) >> 6u) << 4u);
                mn = (byte_of(sb, j + 4u) >> 4u) | ((byte_of(sb, j) >> 6u) << 4u);
            }
            let qbase = base + 4u + (j / 2u) * 8u;
            let shift = 4u * (j % 2u);
            let xblk = t * cols + b * 256u;
            let iscale = q8k_iscale(xblk);
            if (iscale == 0.0) {
                continue;  // all-zero activations add nothing
            }
            let xo = xblk + j * 32u;
            var qx = 0i;
            var qs = 0i;
            for (var k = 0u; k < 8u; k++) {
                let word = w[qbase + k] >> shift;
                for (var e = 0u; e < 4u; e++) {
                    let q8 = min(i32(round(iscale * x[xo + k * 4u + e])), 127i);
                    qx += i32((word >> (8u * e)) & 0xfu) * q8;
                    qs += q8;
                }
            }
            let yd = 1.0 / iscale;
            acc += yd * dm.x * f32(i32(sc) * qx) - yd * dm.y * f32(i32(mn) * qs);
        }
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u && row < dims.rows) {
        y[t * dims.rows + row] = total;
    }
}
