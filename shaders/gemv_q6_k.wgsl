// Compiled after gemv_common.wgsl (Dims, WG, workgroup_sum) and kquant_common.wgsl
// (byte_of, q8k_iscale).
// y = x · Wᵀ for a Q6_K matrix W (rows × cols) and n f32 activation rows x.
//
// GGUF's Q6_K block is 210 bytes, not a multiple of 4, so blocks are uploaded in 212-byte
// slots (53 words): low nibbles `ql` at bytes 0..128, high bit pairs `qh` at 128..192,
// sixteen signed scales at 192..208, the f16 scale d at 208..210. Within each half of
// 128 weights, value l + 32·k (l < 32, k < 4) takes the low (k even) or high (k odd)
// nibble of ql[l + 32·(k mod 2)] — k = 0, 1 low, 2, 3 high — and bits 2k..2k+1 of qh[l],
// minus 32, times scale[8·half + 2k + l/16]. Activations are quantized per block of 256
// as the CPU backend does (Q8_K), so both form the same integer sums. One workgroup per
// (row, token); its 64 invocations take every 64th group of 16 weights.


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
        for (var item = lid; item < dims.per_row * 16u; item += WG) {
            let b = item / 16u;
            let g = item % 16u;          // group of 16 values
            let base = (row * dims.per_row + b) * 53u;
            let xblk = t * cols + b * 256u;
            let iscale = q8k_iscale(xblk);
            if (iscale == 0.0) {
                continue;  // all-zero activations add nothing
            }
            let half = g / 8u;
            let k = (g % 8u) / 2u;       // which of the four 32-value quarters
            let l0 = (g % 2u) * 16u;
            let sc = bitcast<i32>(byte_of(base, 192u + half * 8u + 2u * k + l0 / 16u) << 24u) >> 24u;
            let d = unpack2x16float(w[base + 52u]).x;
            var isum = 0i;
            for (var l = l0; l < l0 + 16u; l++) {
                let lo = byte_of(base, half * 64u + l + 32u * (k % 2u));
                let nib = (lo >> (4u * (k / 2u))) & 0xfu;
                let hi = (byte_of(base, 128u + half * 32u + l) >> (2u * k)) & 3u;
                let q6 = i32(nib | (hi << 4u)) - 32i;
                let q8 = min(i32(round(iscale * x[xblk + half * 128u + 32u * k + l])), 127i);
                isum += q6 * q8;
            }
            acc += d * (1.0 / iscale) * f32(sc * isum);
        }
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u && row < dims.rows) {
        y[t * dims.rows + row] = total;
    }
}
