// Correctly rounded division and square root (to nearest, ties to even), as the CPU
// computes them, for kernels whose results must match the CPU backend's bit for bit:
// prepended to quantize.wgsl and rms_norm.wgsl. Vulkan lets `/` and `sqrt` be off by a
// few ulp (NVIDIA's are) and lets `fma` round twice (lavapipe's does), and one ulp of a
// scale moves values across rounding ties, which activations of a quantized embedding
// sit on by the hundred. So both are made from the significands in integers.

// a / b: the quotient of the significands made one bit at a time. Zero, subnormal,
// infinite and NaN operands (not met here) take the driver's division.
fn div_exact(a: f32, b: f32) -> f32 {
    let ua = bitcast<u32>(a);
    let ub = bitcast<u32>(b);
    let ea = (ua >> 23u) & 0xffu;
    let eb = (ub >> 23u) & 0xffu;
    if (a == 0.0 || ea == 0u || eb == 0u || ea == 255u || eb == 255u) {
        return a / b;
    }
    let ma = (ua & 0x7fffffu) | 0x800000u;
    let mb = (ub & 0x7fffffu) | 0x800000u;
    // q = floor(ma · 2^31 / mb), in [2^30, 2^32); r the remainder
    var q = 0u;
    var r = ma;
    if (r >= mb) {
        q = 1u;
        r -= mb;
    }
    for (var i = 0u; i < 31u; i++) {
        r = r << 1u;
        q = q << 1u;
        if (r >= mb) {
            q |= 1u;
            r -= mb;
        }
    }
    // keep 24 significant bits, rounding the dropped ones (and the remainder) to nearest even
    let shift = firstLeadingBit(q) - 23u;
    var m = q >> shift;
    let rest = q & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (r != 0u || (m & 1u) == 1u))) {
        m += 1u;
    }
    let mag = ldexp(f32(m), i32(ea) - i32(eb) + i32(shift) - 31);
    return select(mag, -mag, ((ua ^ ub) & 0x80000000u) != 0u);
}

// sqrt(v): the integer square root of the significand (shifted so that the exponent is
// even and the root has 24 bits), two bits of it at a time, rounded up when the
// remainder passes the root (a square root is never halfway between two floats). Zero,
// subnormal, infinite, negative and NaN operands (not met here) take the driver's sqrt.
fn sqrt_exact(v: f32) -> f32 {
    let u = bitcast<u32>(v);
    let e = (u >> 23u) & 0xffu;
    if (!(v > 0.0) || e == 0u || e == 255u) {
        return sqrt(v);
    }
    // v = n · 2^ex with ex even, n below 2^25
    var n = (u & 0x7fffffu) | 0x800000u;
    var ex = i32(e) - 150;
    if ((ex & 1) != 0) {
        n = n << 1u;
        ex -= 1;
    }
    // the root of m = n · 2^k, k even, m of 47 or 48 bits: a root of 24 bits
    let k = select(22u, 24u, n < 0x1000000u);
    var rem = 0u;
    var root = 0u;
    for (var i = 0u; i < 24u; i++) {
        let j = 46u - 2u * i;  // bits j + 1 and j of m
        var pair = 0u;
        if (j >= k) {
            pair = (n >> (j - k)) & 3u;
        }
        rem = (rem << 2u) | pair;
        let trial = (root << 2u) | 1u;
        root = root << 1u;
        if (rem >= trial) {
            rem -= trial;
            root |= 1u;
        }
    }
    if (rem > root) {
        root += 1u;
    }
    return ldexp(f32(root), (ex - i32(k)) / 2);
}
