//! GGUF quantised blocks → panel codes.

use super::{BLOCK, Codes, PANEL};
use crate::gguf::GgmlType;

/// The codes, scales and minimums of `out` rows of `inp` elements of
/// Q8_0, Q4_0 or Q4_1 blocks (sizes checked by the caller), laid out as
/// panels. Codes are what ggml multiplies by the scale: Q8_0's signed byte,
/// Q4_0's nibble − 8, Q4_1's nibble (with the minimum added after).
pub(super) fn codes(ggml_type: GgmlType, data: &[u8], out: usize, inp: usize) -> Codes {
    let panels = out.div_ceil(PANEL);
    let blocks_per_row = inp / BLOCK;
    let mut q = vec![0i8; panels * inp * PANEL];
    let mut scale = vec![0.0f32; panels * blocks_per_row * PANEL];
    let with_min = ggml_type == GgmlType::Q4_1;
    let mut min = with_min.then(|| vec![0.0f32; scale.len()]);
    let size = ggml_type.type_size();
    for (index, block) in data.chunks_exact(size).enumerate() {
        let (o, b) = (index / blocks_per_row, index % blocks_per_row);
        let (p, c) = (o / PANEL, o % PANEL);
        let s = (p * blocks_per_row + b) * PANEL + c;
        scale[s] = f16(block[0], block[1]);
        let mut values = [0i8; BLOCK];
        match ggml_type {
            GgmlType::Q8_0 => {
                for (v, &byte) in values.iter_mut().zip(&block[2..]) {
                    *v = byte as i8;
                }
            }
            GgmlType::Q4_0 => nibbles(&block[2..], &mut values, 8),
            _ => {
                if let Some(m) = min.as_mut() {
                    m[s] = f16(block[2], block[3]);
                }
                nibbles(&block[4..], &mut values, 0);
            }
        }
        for (j, v) in values.into_iter().enumerate() {
            q[(p * inp + b * BLOCK + j) * PANEL + c] = v;
        }
    }
    Codes { q, scale, min }
}

/// ggml's 4-bit order: element `j < 16` is the low nibble of byte `j`,
/// element `j + 16` its high nibble; `bias` is subtracted.
fn nibbles(bytes: &[u8], values: &mut [i8; BLOCK], bias: i8) {
    for (j, &byte) in bytes.iter().take(BLOCK / 2).enumerate() {
        values[j] = (byte & 0x0F) as i8 - bias;
        values[j + BLOCK / 2] = (byte >> 4) as i8 - bias;
    }
}

fn f16(lo: u8, hi: u8) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}
