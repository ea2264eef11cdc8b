//! Dequantisation of ggml's non-linear 4-bit types IQ4_NL and IQ4_XS: each
//! 4-bit index picks one of 16 fixed signed levels ([`IQ4_LEVELS`], spaced
//! more finely near zero, where weights cluster), times a scale.
//!
//! | type | elements / block | bytes | fields, in order | value |
//! |---|---|---|---|---|
//! | IQ4_NL | 32 | 18 | `d`, `qs: [u8; 16]` | `d · L[q]` |
//! | IQ4_XS | 256 | 136 | `d`, `scales_h: u16`, `scales_l: [u8; 4]`, `qs: [u8; 128]` | `d · (s − 32) · L[q]`, `s` 6 bits per 32 |
//!
//! Indices are ordered as Q4_0's nibbles (within 32 values, element `j < 16`
//! is the low nibble of byte `j`, `j + 16` its high nibble). Sub-block `k`
//! of IQ4_XS has scale bits `(scales_l[k / 2] >> 4·(k % 2)) & 15` and
//! `(scales_h >> 2k) & 3` above them. Arithmetic is ggml's
//! (`dequantize_row_iq4_*`): `d · (s − 32)` one f32 product, then one
//! multiply per element.

use super::dequant::f16_le;

/// The 16 levels of ggml's `kvalues_iq4nl`.
pub(crate) const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The levels of 32 values whose indices are the nibbles of `qs` (16 bytes).
pub(crate) fn levels(qs: &[u8]) -> [i8; 32] {
    let mut out = [0i8; 32];
    for (j, &b) in qs.iter().take(16).enumerate() {
        out[j] = IQ4_LEVELS[usize::from(b & 0x0F)];
        out[j + 16] = IQ4_LEVELS[usize::from(b >> 4)];
    }
    out
}

/// IQ4_NL: one block of 32.
pub(super) fn iq4_nl(block: &[u8], y: &mut [f32]) {
    let d = f16_le(block[0], block[1]);
    for (v, l) in y.iter_mut().zip(levels(&block[2..])) {
        *v = d * f32::from(l);
    }
}

/// The scale `d · (s − 32)` of each of the 8 sub-blocks of an IQ4_XS
/// super-block.
pub(crate) fn iq4_xs_scales(block: &[u8]) -> [f32; 8] {
    let d = f16_le(block[0], block[1]);
    let high = u16::from_le_bytes([block[2], block[3]]);
    let low = &block[4..8];
    std::array::from_fn(|k| {
        let s = ((low[k / 2] >> (4 * (k % 2))) & 0x0F) | ((((high >> (2 * k)) & 3) as u8) << 4);
        d * f32::from(i16::from(s) - 32)
    })
}

/// IQ4_XS: 8 sub-blocks of 32, each with its 6-bit scale.
pub(super) fn iq4_xs(block: &[u8], y: &mut [f32]) {
    let qs = &block[8..];
    for (k, (out, dl)) in y.chunks_exact_mut(32).zip(iq4_xs_scales(block)).enumerate() {
        for (v, l) in out.iter_mut().zip(levels(&qs[16 * k..])) {
            *v = dl * f32::from(l);
        }
    }
}
