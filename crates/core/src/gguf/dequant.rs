//! Dequantisation of ggml blocks to `f32`, exactly as ggml defines it.
//!
//! Block layouts (ggml's `ggml-common.h`; all multi-byte fields little-endian,
//! `d` and `m` IEEE binary16):
//!
//! | type | elements / block | bytes | layout | value of element `i` |
//! |---|---|---|---|---|
//! | F32  | 1  | 4  | binary32 | as stored |
//! | F16  | 1  | 2  | binary16 | widened exactly |
//! | BF16 | 1  | 2  | upper 16 bits of a binary32 | `bits << 16` |
//! | Q8_0 | 32 | 34 | `d`, `qs: [i8; 32]` | `qs[i] · d` |
//! | Q4_0 | 32 | 18 | `d`, `qs: [u8; 16]` | `(q_i − 8) · d` |
//! | Q4_1 | 32 | 20 | `d`, `m`, `qs: [u8; 16]` | `q_i · d + m` |
//! | Q5_0 | 32 | 22 | `d`, `qh: u32`, `qs: [u8; 16]` | `(q_i − 16) · d` |
//! | Q5_1 | 32 | 24 | `d`, `m`, `qh: u32`, `qs: [u8; 16]` | `q_i · d + m` |
//!
//! In Q4_0 and Q4_1 the 4-bit quant `q_i` of element `i < 16` is the low
//! nibble of `qs[i]` and that of element `i + 16` the high nibble of
//! `qs[i]`: the low nibbles hold elements 0..16, the high nibbles 16..32.
//! Q5_0 and Q5_1 add bit `i` of `qh` as the fifth bit of `q_i`. The
//! k-quants Q2_K … Q6_K are in [`super::kquants`], IQ4_NL and IQ4_XS in
//! [`super::iq4`].
//!
//! Arithmetic is in `f32`, one rounding per operation, in ggml's order
//! (`d` widened to `f32` first; Q4_1 multiplies then adds, never fused), so
//! the results are bit-identical to ggml's reference dequantisation and to
//! the `gguf` Python package's.

use super::error::GgufError;
use super::kquants::{self, QK_K};
use super::types::GgmlType;

/// Elements per block of Q8_0, Q4_0 and Q4_1.
const QK: usize = 32;

/// Dequantises `n_elements` values of type `ggml_type` stored in `data`.
///
/// # Errors
/// [`GgufError::UnsupportedType`] for a type
/// [`GgmlType::can_dequantize`] does not list; [`GgufError::Length`] when `n_elements` is not a
/// whole number of blocks or `data` does not hold exactly that many blocks.
///
/// # Examples
/// ```
/// use lastmile_core::gguf::{GgmlType, dequantize};
/// // One Q8_0 block: d = 0.5 (f16 bits 0x3800), quants 0, 1, …, 31.
/// let mut block = vec![0x00, 0x38];
/// block.extend((0..32).map(|q: u8| q));
/// let x = dequantize(GgmlType::Q8_0, &block, 32).unwrap();
/// assert_eq!(x[3], 1.5);
/// assert!(dequantize(GgmlType::Q8_0, &block[..33], 32).is_err());
/// ```
pub fn dequantize(
    ggml_type: GgmlType,
    data: &[u8],
    n_elements: usize,
) -> Result<Vec<f32>, GgufError> {
    check(ggml_type, data, n_elements, "buffer")?;
    let mut out = vec![0.0f32; n_elements];
    decode(ggml_type, data, &mut out);
    Ok(out)
}

/// Dequantises `data` into `out`, whose length is the element count.
///
/// # Errors
/// As [`dequantize`].
///
/// # Examples
/// ```
/// use lastmile_core::gguf::{GgmlType, dequantize_into};
/// let bytes: Vec<u8> = [1.0f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
/// let mut out = [0.0f32; 2];
/// dequantize_into(GgmlType::F32, &bytes, &mut out).unwrap();
/// assert_eq!(out, [1.0, -2.0]);
/// ```
pub fn dequantize_into(ggml_type: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), GgufError> {
    check(ggml_type, data, out.len(), "buffer")?;
    decode(ggml_type, data, out);
    Ok(())
}

/// Validates type and sizes; `what` names the buffer in errors.
pub(crate) fn check(
    ggml_type: GgmlType,
    data: &[u8],
    n_elements: usize,
    what: &str,
) -> Result<(), GgufError> {
    if !ggml_type.can_dequantize() {
        return Err(GgufError::UnsupportedType {
            what: what.to_owned(),
            ggml_type,
        });
    }
    let expected = ggml_type
        .bytes_for(n_elements)
        .ok_or_else(|| GgufError::Length {
            what: what.to_owned(),
            expected: format!(
                "an element count that is a multiple of the {ggml_type} block size {}",
                ggml_type.block_size()
            ),
            found: format!("{n_elements} elements"),
        })?;
    if data.len() != expected {
        return Err(GgufError::Length {
            what: what.to_owned(),
            expected: format!("{expected} bytes of {ggml_type} for {n_elements} elements"),
            found: format!("{} bytes", data.len()),
        });
    }
    Ok(())
}

/// Decodes after [`check`] succeeded (sizes match, type supported).
pub(crate) fn decode(ggml_type: GgmlType, data: &[u8], out: &mut [f32]) {
    match ggml_type {
        GgmlType::F32 => {
            for (y, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (y, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *y = f16_le(b[0], b[1]);
            }
        }
        GgmlType::BF16 => {
            for (y, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                // ggml widens bf16 by a plain shift (signalling NaNs stay signalling).
                *y = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
        GgmlType::Q8_0 => {
            for (y, block) in out
                .chunks_exact_mut(QK)
                .zip(data.chunks_exact(GgmlType::Q8_0.type_size()))
            {
                let d = f16_le(block[0], block[1]);
                for (yi, &q) in y.iter_mut().zip(&block[2..]) {
                    *yi = f32::from(q as i8) * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (y, block) in out
                .chunks_exact_mut(QK)
                .zip(data.chunks_exact(GgmlType::Q4_0.type_size()))
            {
                let d = f16_le(block[0], block[1]);
                let (lo, hi) = y.split_at_mut(QK / 2);
                for (j, &q) in block[2..].iter().enumerate() {
                    lo[j] = f32::from(i16::from(q & 0x0F) - 8) * d;
                    hi[j] = f32::from(i16::from(q >> 4) - 8) * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (y, block) in out
                .chunks_exact_mut(QK)
                .zip(data.chunks_exact(GgmlType::Q4_1.type_size()))
            {
                let d = f16_le(block[0], block[1]);
                let m = f16_le(block[2], block[3]);
                let (lo, hi) = y.split_at_mut(QK / 2);
                for (j, &q) in block[4..].iter().enumerate() {
                    lo[j] = f32::from(q & 0x0F) * d + m;
                    hi[j] = f32::from(q >> 4) * d + m;
                }
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let with_min = ggml_type == GgmlType::Q5_1;
            for (y, block) in out
                .chunks_exact_mut(QK)
                .zip(data.chunks_exact(ggml_type.type_size()))
            {
                let d = f16_le(block[0], block[1]);
                let (m, rest) = if with_min {
                    (f16_le(block[2], block[3]), &block[4..])
                } else {
                    (0.0, &block[2..])
                };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let high = |i: usize| (((qh >> i) & 1) as u8) << 4;
                let (lo, hi) = y.split_at_mut(QK / 2);
                for (j, &q) in rest[4..].iter().enumerate() {
                    let (a, b) = ((q & 0x0F) | high(j), (q >> 4) | high(j + QK / 2));
                    if with_min {
                        lo[j] = f32::from(a) * d + m;
                        hi[j] = f32::from(b) * d + m;
                    } else {
                        lo[j] = f32::from(i16::from(a) - 16) * d;
                        hi[j] = f32::from(i16::from(b) - 16) * d;
                    }
                }
            }
        }
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            let decode_block = match ggml_type {
                GgmlType::Q2_K => kquants::q2_k,
                GgmlType::Q3_K => kquants::q3_k,
                GgmlType::Q4_K => kquants::q4_k,
                GgmlType::Q5_K => kquants::q5_k,
                _ => kquants::q6_k,
            };
            for (y, block) in out
                .chunks_exact_mut(QK_K)
                .zip(data.chunks_exact(ggml_type.type_size()))
            {
                decode_block(block, y);
            }
        }
        GgmlType::IQ4_NL => {
            for (y, block) in out.chunks_exact_mut(QK).zip(data.chunks_exact(18)) {
                super::iq4::iq4_nl(block, y);
            }
        }
        GgmlType::IQ4_XS => {
            for (y, block) in out.chunks_exact_mut(QK_K).zip(data.chunks_exact(136)) {
                super::iq4::iq4_xs(block, y);
            }
        }
        // `check` admits only the types above.
        _ => {}
    }
}

pub(super) fn f16_le(lo: u8, hi: u8) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bits(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_bits().to_le_bytes()
    }

    #[test]
    fn q4_nibble_order_low_first() {
        // d = 1: element j < 16 is the low nibble of qs[j], j + 16 the high nibble.
        let mut block = f16_bits(1.0).to_vec();
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let x = dequantize(GgmlType::Q4_0, &block, 32).unwrap_or_default();
        let want: Vec<f32> = (0..16)
            .map(|j| j as f32 - 8.0)
            .chain((0..16).map(|j| (15 - j) as f32 - 8.0))
            .collect();
        assert_eq!(x, want);

        let mut block = f16_bits(0.5).to_vec();
        block.extend(f16_bits(-1.0));
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let x = dequantize(GgmlType::Q4_1, &block, 32).unwrap_or_default();
        let want: Vec<f32> = (0..16)
            .map(|j| j as f32 * 0.5 - 1.0)
            .chain((0..16).map(|j| (15 - j) as f32 * 0.5 - 1.0))
            .collect();
        assert_eq!(x, want);
    }

    #[test]
    fn q8_0_is_signed() {
        let mut block = f16_bits(2.0).to_vec();
        block.extend((0..32).map(|j: i8| (j * 4 - 64) as u8));
        let x = dequantize(GgmlType::Q8_0, &block, 32).unwrap_or_default();
        let want: Vec<f32> = (0..32).map(|j| (j * 4 - 64) as f32 * 2.0).collect();
        assert_eq!(x, want);
    }

    #[test]
    fn bf16_is_the_upper_half() {
        let x = 3.140625f32; // exactly representable in bf16
        let b = ((x.to_bits() >> 16) as u16).to_le_bytes();
        assert_eq!(dequantize(GgmlType::BF16, &b, 1).unwrap_or_default(), [x]);
    }

    /// Any bytes are a block of every supported type (scales that are
    /// infinities or NaNs give non-finite values, never a panic), and the
    /// values follow the bytes: a block of zero bytes is zeros.
    #[test]
    fn every_byte_pattern_decodes() {
        for t in GgmlType::all().filter(|t| t.can_dequantize()) {
            let n = 4 * t.block_size();
            let size = t.bytes_for(n).unwrap_or_default();
            let zeros = dequantize(t, &vec![0; size], n).unwrap_or_default();
            assert!(zeros.iter().all(|v| *v == 0.0), "{t}");
            for seed in 0..64usize {
                let data: Vec<u8> = (0..size)
                    .map(|i| ((i * 131 + seed * 977) % 256) as u8)
                    .collect();
                assert_eq!(
                    dequantize(t, &data, n).map(|v| v.len()).ok(),
                    Some(n),
                    "{t}"
                );
            }
        }
    }

    #[test]
    fn sizes_and_types_are_checked() {
        assert!(matches!(
            dequantize(GgmlType::Q4_1, &[0; 20], 31),
            Err(GgufError::Length { .. })
        ));
        assert!(matches!(
            dequantize(GgmlType::Q4_1, &[0; 19], 32),
            Err(GgufError::Length { .. })
        ));
        assert!(matches!(
            dequantize(GgmlType::IQ2_XXS, &[0; 66], 256),
            Err(GgufError::UnsupportedType { .. })
        ));
        assert!(matches!(
            dequantize(GgmlType::Q6_K, &[0; 210], 255),
            Err(GgufError::Length { .. })
        ));
        let mut out = [0.0; 3];
        assert!(dequantize_into(GgmlType::F16, &[0; 4], &mut out).is_err());
    }
}
