//! Block layouts of the GGML quantized formats, byte for byte as GGUF stores them.
//!
//! Every field is a byte array, so the structs have alignment 1 and a slice of file
//! bytes can be viewed as a slice of blocks wherever it starts. Sizes are pinned by
//! compile-time assertions.
#![allow(non_camel_case_types)]

use half::f16;

/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;
/// Elements per block of the legacy formats (Q4_0 ... Q8_1).
pub const QK: usize = 32;

/// Reads a little-endian f16 as f32.
#[inline(always)]
pub fn f16_le(b: [u8; 2]) -> f32 {
    f16::from_le_bytes(b).to_f32()
}

/// Marker for plain-old-data block types made only of byte arrays.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain only `u8`/`i8` arrays (alignment 1, no
/// padding, every bit pattern valid).
pub unsafe trait Block: Copy + 'static {
    /// Bytes per block.
    const SIZE: usize = std::mem::size_of::<Self>();
}

/// Views `bytes` as blocks; `None` if the length is not a whole number of blocks.
pub fn as_blocks<B: Block>(bytes: &[u8]) -> Option<&[B]> {
    if !bytes.len().is_multiple_of(B::SIZE) {
        return None;
    }
    // SAFETY: B has alignment 1, no padding and no invalid bit patterns (trait contract),
    // and the length is a whole number of blocks.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const B, bytes.len() / B::SIZE) })
}

macro_rules! block {
    ($(#[$m:meta])* $name:ident, $size:expr, { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        const _: () = assert!(std::mem::size_of::<$name>() == $size);
        const _: () = assert!(std::mem::align_of::<$name>() == 1);
        // SAFETY: repr(C), byte arrays only (checked by the asserts above).
        unsafe impl Block for $name {}
    };
}

block!(
    /// Q4_0: 32 weights, 4 bits each, `w = d * (q - 8)`.
    BlockQ4_0, 18, { /// scale (f16)
    d: [u8; 2], /// low nibbles: weights 0..16, high nibbles: 16..32
    qs: [u8; 16] });
block!(
    /// Q4_1: 32 weights, 4 bits each, `w = d * q + m`.
    BlockQ4_1, 20, { /// scale (f16)
    d: [u8; 2], /// minimum (f16)
    m: [u8; 2], /// nibbles as in Q4_0
    qs: [u8; 16] });
block!(
    /// Q5_0: 32 weights, 5 bits each, `w = d * (q - 16)`.
    BlockQ5_0, 22, { /// scale (f16)
    d: [u8; 2], /// fifth bits, bit j for weight j (little-endian u32)
    qh: [u8; 4], /// low four bits as in Q4_0
    qs: [u8; 16] });
block!(
    /// Q5_1: 32 weights, 5 bits each, `w = d * q + m`.
    BlockQ5_1, 24, { /// scale (f16)
    d: [u8; 2], /// minimum (f16)
    m: [u8; 2], /// fifth bits
    qh: [u8; 4], /// low four bits
    qs: [u8; 16] });
block!(
    /// Q8_0: 32 weights, 8 bits each, `w = d * q`.
    BlockQ8_0, 34, { /// scale (f16)
    d: [u8; 2], /// signed quants
    qs: [i8; 32] });
block!(
    /// Q2_K: 256 weights in 16 groups of 16, 2 bits each, 4-bit scales and mins.
    BlockQ2_K, 84, { /// low nibble: scale, high nibble: min, per group of 16
    scales: [u8; 16], /// 2-bit quants
    qs: [u8; 64], /// super-block scale (f16)
    d: [u8; 2], /// super-block scale of the mins (f16)
    dmin: [u8; 2] });
block!(
    /// Q3_K: 256 weights in 16 groups of 16, 3 bits each, 6-bit signed scales.
    BlockQ3_K, 110, { /// high (third) bits
    hmask: [u8; 32], /// low two bits
    qs: [u8; 64], /// 16 packed 6-bit scales
    scales: [u8; 12], /// super-block scale (f16)
    d: [u8; 2] });
block!(
    /// Q4_K: 256 weights in 8 groups of 32, 4 bits each, 6-bit scales and mins.
    BlockQ4_K, 144, { /// super-block scale (f16)
    d: [u8; 2], /// super-block scale of the mins (f16)
    dmin: [u8; 2], /// 8 scales and 8 mins, 6 bits each
    scales: [u8; 12], /// nibbles: group 2j in the low, 2j+1 in the high nibbles of bytes 32j..32j+32
    qs: [u8; 128] });
block!(
    /// Q5_K: Q4_K plus a fifth bit per weight.
    BlockQ5_K, 176, { /// super-block scale (f16)
    d: [u8; 2], /// super-block scale of the mins (f16)
    dmin: [u8; 2], /// 8 scales and 8 mins, 6 bits each
    scales: [u8; 12], /// fifth bits: bit j of byte l is weight 32j + l
    qh: [u8; 32], /// low nibbles, as in Q4_K
    qs: [u8; 128] });
block!(
    /// Q6_K: 256 weights in 16 groups of 16, 6 bits each, 8-bit signed scales.
    BlockQ6_K, 210, { /// low four bits
    ql: [u8; 128], /// high two bits
    qh: [u8; 64], /// signed scales
    scales: [i8; 16], /// super-block scale (f16)
    d: [u8; 2] });

/// Activations quantized to 8 bits in blocks of 32 (llama.cpp's `block_q8_0` for dot
/// products; the scale is kept as the f16-rounded value, like the file format).
#[derive(Clone, Copy, Debug)]
pub struct ActQ8_0 {
    /// scale (an f16 value widened to f32)
    pub d: f32,
    /// `d * sum(qs)` rounded to f16 (llama.cpp's `block_q8_1.s`), for Q4_1/Q5_1
    pub s: f32,
    /// quants
    pub qs: [i8; 32],
}

/// Activations quantized to 8 bits in super-blocks of 256 (llama.cpp's `block_q8_K`).
#[derive(Clone, Copy, Debug)]
pub struct ActQ8_K {
    /// scale
    pub d: f32,
    /// quants
    pub qs: [i8; 256],
    /// sums of each group of 16 quants
    pub bsums: [i16; 16],
}
