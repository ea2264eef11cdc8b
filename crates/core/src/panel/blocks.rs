//! GGUF quantised blocks → panel codes.

use super::int8::Packing;
use super::{BLOCK, Codes, PANEL};
use crate::gguf::GgmlType;

/// Whether [`codes`] keeps `ggml_type` as codes: the types whose values
/// are `q·d (+ m)` over blocks of 32 with an integer `q` that fits a byte.
/// (Q2_K, Q3_K and Q6_K scale sub-blocks of 16, so one block of 32 has two
/// scales; they are dequantised instead.)
pub(super) fn has_codes(ggml_type: GgmlType) -> bool {
    matches!(
        ggml_type,
        GgmlType::Q8_0
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::IQ4_NL
            | GgmlType::IQ4_XS
    )
}

/// How the 8-bit kernels store the codes of `ggml_type`: nibbles (Q4_0,
/// Q4_1, Q4_K), nibbles and fifth bits (Q5_0, Q5_1, Q5_K), indices of
/// IQ4's levels (IQ4_NL, IQ4_XS) or bytes (Q8_0).
pub(super) fn packing(ggml_type: GgmlType) -> Packing {
    match ggml_type {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => Packing::Nibbles,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => Packing::FiveBits,
        GgmlType::IQ4_NL | GgmlType::IQ4_XS => Packing::Levels,
        _ => Packing::Bytes,
    }
}

/// The codes, scales and minimums of `out` rows of `inp` elements of a
/// type [`has_codes`] admits (sizes checked by the caller), laid out as
/// panels. Codes are what ggml multiplies by the scale: Q8_0's signed byte,
/// Q4_0's nibble − 8, Q5_0's 5-bit code − 16, IQ4's level, the unsigned
/// codes of Q4_1, Q5_1, Q4_K and Q5_K (with the minimum added after). A k-quant
/// super-block gives 8 blocks of 32, each with its scale `d·sc` and
/// minimum `−dmin·m` computed as ggml's dequantisation computes them, so
/// `q·scale + min` is bit for bit ggml's value.
pub(super) fn codes(ggml_type: GgmlType, data: &[u8], out: usize, inp: usize) -> Codes {
    let panels = out.div_ceil(PANEL);
    let blocks_per_row = inp / BLOCK;
    let mut q = vec![0i8; panels * inp * PANEL];
    let mut scale = vec![0.0f32; panels * blocks_per_row * PANEL];
    let with_min = !matches!(
        ggml_type,
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::IQ4_NL | GgmlType::IQ4_XS
    );
    let mut min = with_min.then(|| vec![0.0f32; scale.len()]);
    let size = ggml_type.type_size();
    let per_block = ggml_type.block_size() / BLOCK;
    for (index, block) in data.chunks_exact(size).enumerate() {
        sub_blocks(ggml_type, block, |k, d, m, values| {
            let index = index * per_block + k;
            let (o, b) = (index / blocks_per_row, index % blocks_per_row);
            let (p, c) = (o / PANEL, o % PANEL);
            let s = (p * blocks_per_row + b) * PANEL + c;
            scale[s] = d;
            if let Some(mins) = min.as_mut() {
                mins[s] = m;
            }
            for (j, v) in values.iter().enumerate() {
                q[(p * inp + b * BLOCK + j) * PANEL + c] = *v;
            }
        });
    }
    Codes { q, scale, min }
}

/// Calls `emit(k, scale, min, codes)` for each block `k` of 32 values in
/// one block of the file (one, or eight for a k-quant super-block).
fn sub_blocks(
    ggml_type: GgmlType,
    block: &[u8],
    mut emit: impl FnMut(usize, f32, f32, &[i8; BLOCK]),
) {
    let mut values = [0i8; BLOCK];
    match ggml_type {
        GgmlType::Q8_0 => {
            for (v, &byte) in values.iter_mut().zip(&block[2..]) {
                *v = byte as i8;
            }
            emit(0, f16(block[0], block[1]), 0.0, &values);
        }
        GgmlType::Q4_0 => {
            nibbles(&block[2..], &mut values, 8);
            emit(0, f16(block[0], block[1]), 0.0, &values);
        }
        GgmlType::Q4_1 => {
            nibbles(&block[4..], &mut values, 0);
            emit(0, f16(block[0], block[1]), f16(block[2], block[3]), &values);
        }
        GgmlType::Q5_0 => {
            five_bits(&block[2..6], &block[6..], &mut values, 16);
            emit(0, f16(block[0], block[1]), 0.0, &values);
        }
        GgmlType::Q5_1 => {
            five_bits(&block[4..8], &block[8..], &mut values, 0);
            emit(0, f16(block[0], block[1]), f16(block[2], block[3]), &values);
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let five = ggml_type == GgmlType::Q5_K;
            let (qh, qs) = if five {
                block[16..].split_at(32)
            } else {
                (&[][..], &block[16..])
            };
            let scales = crate::gguf::kquants::q4_k_scales(block);
            for (s, (d, m)) in scales.into_iter().enumerate() {
                let shift = 4 * (s % 2);
                for (j, (v, &byte)) in values.iter_mut().zip(&qs[32 * (s / 2)..][..32]).enumerate()
                {
                    let high = qh.get(j).map_or(0, |h| ((h >> s) & 1) << 4);
                    *v = (((byte >> shift) & 0x0F) | high) as i8;
                }
                emit(s, d, -m, &values);
            }
        }
        GgmlType::IQ4_NL => {
            let levels = crate::gguf::iq4::levels(&block[2..]);
            emit(0, f16(block[0], block[1]), 0.0, &levels);
        }
        GgmlType::IQ4_XS => {
            let scales = crate::gguf::iq4::iq4_xs_scales(block);
            for (k, d) in scales.into_iter().enumerate() {
                let levels = crate::gguf::iq4::levels(&block[8 + 16 * k..]);
                emit(k, d, 0.0, &levels);
            }
        }
        // `has_codes` admits only the types above.
        _ => {}
    }
}

/// ggml's 4-bit order: element `j < 16` is the low nibble of byte `j`,
/// element `j + 16` its high nibble; `bias` is subtracted.
fn nibbles(bytes: &[u8], values: &mut [i8; BLOCK], bias: i8) {
    for (j, &byte) in bytes.iter().take(BLOCK / 2).enumerate() {
        values[j] = (byte & 0x0F) as i8 - bias;
        values[j + BLOCK / 2] = (byte >> 4) as i8 - bias;
    }
}

/// Q5_0 / Q5_1: [`nibbles`] with bit `j` of `qh` (little-endian u32) as
/// the fifth bit of element `j`.
fn five_bits(qh: &[u8], bytes: &[u8], values: &mut [i8; BLOCK], bias: i8) {
    nibbles(bytes, values, 0);
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    for (j, v) in values.iter_mut().enumerate() {
        *v = (*v | ((((qh >> j) & 1) as i8) << 4)) - bias;
    }
}

fn f16(lo: u8, hi: u8) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}
