// f32 values to packed f16 pairs: dst[dst_off + i] holds src[src_off + 2i] in its low
// half and src[src_off + 2i + 1] in its high half, each rounded to the nearest f16, ties to
// even (the CPU's f16::from_f32; pack2x16float's own rounding is up to the driver, so the
// value is rounded first and packed exactly). Fills an f16 key/value cache. One invocation
// per word, 256 per workgroup, workgroups beyond 65535 spilling into the y dimension.

struct Dims {
    words: u32,
    src_off: u32,
    dst_off: u32,
    groups_per_y: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> dims: Dims;

// v rounded to the nearest f16 value, ties to even, as a widened f32 (infinity beyond
// the f16 range).
fn round_f16(v: f32) -> f32 {
    let a = abs(v);
    var r: f32;
    if (a >= 65520.0) {
        r = bitcast<f32>(0x7f800000u);
    } else if (a < 6.103515625e-05) {
        // subnormal f16: multiples of 2^-24 (scaling by 2^24 is exact)
        r = round(a * 16777216.0) / 16777216.0;
    } else {
        let bits = bitcast<u32>(a);
        r = bitcast<f32>((bits + 0xfffu + ((bits >> 13u) & 1u)) & ~0x1fffu);
    }
    // v's sign, negative zero included
    return bitcast<f32>(bitcast<u32>(r) | (bitcast<u32>(v) & 0x80000000u));
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * dims.groups_per_y) * 256u + lid;
    if (i >= dims.words) {
        return;
    }
    let s = dims.src_off + 2u * i;
    dst[dims.dst_off + i] = pack2x16float(vec2<f32>(round_f16(src[s]), round_f16(src[s + 1u])));
}

// Scattered rows (entry `scatter`): row r of `src` (`width` values at src_off + r · width)
// rounded and packed into row idx[r] of `dst` (width / 2 words at idx[r] · width / 2): a
// batch's new keys and values into the f16 cache rows their positions' pages name.
struct ScatterDims {
    rows: u32,
    width: u32,  // values, even
    src_off: u32,
    groups_per_y: u32,
}

@group(0) @binding(3) var<storage, read> idx: array<u32>;
@group(0) @binding(4) var<uniform> sdims: ScatterDims;

@compute @workgroup_size(256)
fn scatter(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let words = sdims.width / 2u;
    let i = (wg.x + wg.y * sdims.groups_per_y) * 256u + lid;
    if (i >= sdims.rows * words) {
        return;
    }
    let r = i / words;
    let c = i % words;
    let s = sdims.src_off + r * sdims.width + 2u * c;
    dst[idx[r] * words + c] = pack2x16float(vec2<f32>(round_f16(src[s]), round_f16(src[s + 1u])));
}
