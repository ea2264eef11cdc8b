//! Dequantisation of ggml's k-quants (super-blocks of 256 elements), the
//! types of llama.cpp's `Q2_K` … `Q6_K` presets (`Q4_K_M` and friends).
//!
//! Layouts (ggml's `ggml-common.h`; `d`, `dmin` IEEE binary16, little-endian):
//!
//! | type | bytes | fields, in order | sub-blocks | value |
//! |---|---|---|---|---|
//! | Q2_K | 84 | `scales: [u8; 16]`, `qs: [u8; 64]`, `d`, `dmin` | 16 × 16 | `d·(sc & 15)·q − dmin·(sc >> 4)`, `q` 2 bits |
//! | Q3_K | 110 | `hmask: [u8; 32]`, `qs: [u8; 64]`, `scales: [u8; 12]`, `d` | 16 × 16 | `d·(s − 32)·(q − 4·!h)`, `s` 6 bits, `q` 2 bits, `h` the high bit |
//! | Q4_K | 144 | `d`, `dmin`, `scales: [u8; 12]`, `qs: [u8; 128]` | 8 × 32 | `d·sc·q − dmin·m`, `sc`, `m` 6 bits, `q` 4 bits |
//! | Q5_K | 176 | `d`, `dmin`, `scales: [u8; 12]`, `qh: [u8; 32]`, `qs: [u8; 128]` | 8 × 32 | as Q4_K with a fifth bit from `qh` |
//! | Q6_K | 210 | `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d` | 16 × 16 | `d·sc·(q − 32)`, `q` 6 bits |
//!
//! Arithmetic is ggml's reference dequantisation's (`dequantize_row_q*_K`):
//! the sub-block scale `d·sc` (and minimum `dmin·m`) is one f32 product,
//! then each element one multiply (and one subtraction), never fused — so
//! the values are bit-identical to ggml's and to the `gguf` package's.

use super::dequant::f16_le;

/// Elements per super-block.
pub(super) const QK_K: usize = 256;

/// Q2_K: 16 sub-blocks of 16, 2-bit quants, a 4-bit scale and minimum each.
pub(super) fn q2_k(block: &[u8], y: &mut [f32]) {
    let (scales, rest) = block.split_at(16);
    let (qs, rest) = rest.split_at(64);
    let (d, dmin) = (f16_le(rest[0], rest[1]), f16_le(rest[2], rest[3]));
    // Sub-block `s`: half `n = s / 8` of the quants (32 bytes), bit pair
    // `j = (s % 8) / 2` of each byte, bytes 0..16 or 16..32 (`s % 2`).
    for (s, (out, &sc)) in y.chunks_exact_mut(16).zip(scales).enumerate() {
        let (n, j, h) = (s / 8, (s % 8) / 2, s % 2);
        let dl = d * f32::from(sc & 0x0F);
        let ml = dmin * f32::from(sc >> 4);
        let q = &qs[32 * n + 16 * h..][..16];
        for (v, &b) in out.iter_mut().zip(q) {
            *v = dl * f32::from((b >> (2 * j)) & 3) - ml;
        }
    }
}

/// Q3_K: 16 sub-blocks of 16, 3-bit quants (2 low bits in `qs`, the high
/// bit in `hmask`, set meaning "no offset"), 6-bit signed scales.
pub(super) fn q3_k(block: &[u8], y: &mut [f32]) {
    let (hmask, rest) = block.split_at(32);
    let (qs, rest) = rest.split_at(64);
    let (scales, d) = rest.split_at(12);
    let d = f16_le(d[0], d[1]);
    for (s, out) in y.chunks_exact_mut(16).enumerate() {
        // 4 low bits: nibble `s / 8` of byte `s % 8`; 2 high bits: pair
        // `s / 4` of byte `8 + s % 4`.
        let low = if s < 8 {
            scales[s] & 0x0F
        } else {
            scales[s - 8] >> 4
        };
        let high = (scales[8 + s % 4] >> (2 * (s / 4))) & 3;
        let dl = d * f32::from(i16::from(low | (high << 4)) - 32);
        let (n, j, h) = (s / 8, (s % 8) / 2, s % 2);
        let q = &qs[32 * n + 16 * h..][..16];
        let hm = &hmask[16 * h..][..16];
        let bit = 4 * n + j;
        for ((v, &b), &m) in out.iter_mut().zip(q).zip(hm) {
            let offset = if (m >> bit) & 1 == 1 { 0 } else { 4 };
            *v = dl * f32::from(i16::from((b >> (2 * j)) & 3) - offset);
        }
    }
}

/// The 6-bit scale and minimum of sub-block `j` of Q4_K and Q5_K, packed
/// in 12 bytes (ggml's `get_scale_min_k4`).
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The scale `d·sc` and minimum `dmin·m` of each of the 8 sub-blocks of a
/// Q4_K or Q5_K super-block whose `d`, `dmin` and scales open `block`.
pub(crate) fn q4_k_scales(block: &[u8]) -> [(f32, f32); 8] {
    let (d, dmin) = (f16_le(block[0], block[1]), f16_le(block[2], block[3]));
    let scales = &block[4..16];
    std::array::from_fn(|j| {
        let (sc, m) = scale_min(j, scales);
        (d * f32::from(sc), dmin * f32::from(m))
    })
}

/// Q4_K: 8 sub-blocks of 32, 4-bit quants: sub-blocks `2k` and `2k + 1`
/// are the low and high nibbles of bytes `32k .. 32k + 32`.
pub(super) fn q4_k(block: &[u8], y: &mut [f32]) {
    let qs = &block[16..];
    for (s, (out, (dl, ml))) in y.chunks_exact_mut(32).zip(q4_k_scales(block)).enumerate() {
        let shift = 4 * (s % 2);
        for (v, &b) in out.iter_mut().zip(&qs[32 * (s / 2)..][..32]) {
            *v = dl * f32::from((b >> shift) & 0x0F) - ml;
        }
    }
}

/// Q5_K: Q4_K's layout plus a fifth bit: bit `s` of `qh[l]` for element
/// `l` of sub-block `s`.
pub(super) fn q5_k(block: &[u8], y: &mut [f32]) {
    let (qh, qs) = block[16..].split_at(32);
    for (s, (out, (dl, ml))) in y.chunks_exact_mut(32).zip(q4_k_scales(block)).enumerate() {
        let shift = 4 * (s % 2);
        let q = &qs[32 * (s / 2)..][..32];
        for ((v, &b), &h) in out.iter_mut().zip(q).zip(qh) {
            let code = ((b >> shift) & 0x0F) | (((h >> s) & 1) << 4);
            *v = dl * f32::from(code) - ml;
        }
    }
}

/// Q6_K: 16 sub-blocks of 16, 6-bit quants (4 low bits in `ql`, 2 high
/// bits in `qh`) offset by 32, signed 8-bit scales. Each half of 128
/// elements reads 64 bytes of `ql` and 32 of `qh`: its quarter `k` takes
/// the low (`k` even) or high nibbles of `ql[32·(k % 2)..][..32]` and bit
/// pair `k` of `qh`.
pub(super) fn q6_k(block: &[u8], y: &mut [f32]) {
    let (ql, rest) = block.split_at(128);
    let (qh, rest) = rest.split_at(64);
    let (scales, d) = rest.split_at(16);
    let d = f16_le(d[0], d[1]);
    for (half, out) in y.chunks_exact_mut(128).enumerate() {
        let (ql, qh) = (&ql[64 * half..][..64], &qh[32 * half..][..32]);
        for (k, quarter) in out.chunks_exact_mut(32).enumerate() {
            let low = &ql[32 * (k % 2)..][..32];
            let shift = 4 * (k / 2);
            for (l, v) in quarter.iter_mut().enumerate() {
                let code = ((low[l] >> shift) & 0x0F) | (((qh[l] >> (2 * k)) & 3) << 4);
                let sc = scales[8 * half + 2 * k + l / 16] as i8;
                *v = d * f32::from(sc) * f32::from(i16::from(code) - 32);
            }
        }
    }
}
