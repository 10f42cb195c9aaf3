// Shared by the K-quant matrix kernels (compiled after gemv_common.wgsl, before the
// kernel, which declares the weight words `w` and the activations `x`).

// Byte k of the words starting at word `base`.
fn byte_of(base: u32, k: u32) -> u32 {
    return (w[base + k / 4u] >> (8u * (k % 4u))) & 0xffu;
}

// The Q8_K scale factor of the 256 activations from `xblk`, as the CPU backend picks it:
// -127 over the first value of largest magnitude; 0 when they are all zero.
fn q8k_iscale(xblk: u32) -> f32 {
    var amax = 0.0;
    var vmax = 0.0;
    for (var i = 0u; i < 256u; i++) {
        let v = x[xblk + i];
        if (abs(v) > amax) {
            amax = abs(v);
            vmax = v;
        }
    }
    if (amax == 0.0) {
        return 0.0;
    }
    return -127.0 / vmax;
}
