//! Products of quantised blocks with 8-bit activations, as ggml computes
//! them: each row of `x` is quantised to blocks of 32 signed bytes with
//! one f32 scale (ggml's Q8_0, `d = max|x| / 127`, `q = round(x / d)`), and
//! each block's dot product is an integer sum.
//!
//! For a weight block `w = d_w·q_w (+ m)` and an activation block
//! `x ≈ d_x·q_x`, the block's share of `y = Σ w·x` is
//!
//! ```text
//! d_x·(d_w·Σ q_w·q_x) + m·(d_x·Σ q_x)
//! ```
//!
//! (llama.cpp's `ggml_vec_dot_q4_1_q8_1` and kin). The codes are stored
//! unsigned, `u = q_w + o` (`o` = 128, or 0 for Q4_1 whose codes are
//! nibbles), because the x86 instruction that does four byte products a lane
//! (`vpdpbusd`) takes one unsigned operand; the integer sum starts from
//! `−o·Σ q_x` so that it is exactly `Σ q_w·q_x`. Integer sums are exact in
//! any order and the float steps are the same three (or four) operations in
//! every kernel, so the AVX-512 kernel and the portable one give
//! bit-identical results.
//!
//! Layout: panels of [`LANES`] = 16 outputs (one 512-bit vector of i32),
//! codes `[panel][in / 4][LANES][4]` so that one 64-byte load gives 16
//! outputs' codes for 4 consecutive inputs. 4-bit codes (Q4_0, Q4_1,
//! Q4_K) are packed two to a byte: within a block, byte group `g < 4`
//! holds group `g` in its low nibbles and group `g + 4` in its high ones,
//! so one load and two masks give two groups. 5-bit codes (Q5_0, Q5_1,
//! Q5_K) are those nibbles plus a plane of fifth bits, 64 bytes a block
//! of a panel laid out as one load of codes (`[LANES][QUAD]`): bit `g` of
//! a byte is the fifth bit of group `g`'s code (0.6875 bytes a weight with
//! Q5_1's scales, against 1.125 with a byte a code). Block scales and minimums are kept as
//! the file's f16 (exactly: GGUF stores them so). A decoding step reads
//! every weight once and little else, so its time follows these bytes:
//! 0.625 a weight for Q4_1 (the file's own size), 1.0625 for Q8_0,
//! against 1.25 with a byte per code and f32 scales (measured in
//! `docs/benchmarks.md`).

use super::{BLOCK, Codes, PANEL};
pub(crate) use crate::gguf::iq4::IQ4_LEVELS;

/// Output rows per panel of 8-bit codes (lanes of a 512-bit i32 vector).
pub(crate) const LANES: usize = 16;

/// Inputs per byte group (one `vpdpbusd` lane sums 4 byte products).
pub(crate) const QUAD: usize = 4;

/// Byte groups per quantisation block.
pub(crate) const QUADS: usize = BLOCK / QUAD;

/// Quantised weights laid out for 8-bit activations.
#[derive(Debug, Clone)]
pub(crate) struct Int8Codes {
    /// `u = q + offset`, `[panel][in / QUAD][LANES][QUAD]`, or for
    /// [`Int8Codes::nibbles`] two codes a byte, `[panel][in / 8][LANES][QUAD]`.
    pub(crate) u: Vec<u8>,
    /// Whether `u` packs two 4-bit codes a byte (see the module docs).
    pub(crate) nibbles: bool,
    /// Whether the nibbles index [`IQ4_LEVELS`] (IQ4_NL, IQ4_XS): the code
    /// is the level, stored unsigned as `level + 128`.
    pub(crate) levels: bool,
    /// The fifth bits of 5-bit codes (with [`Int8Codes::nibbles`]),
    /// `[panel][in / BLOCK][LANES][QUAD]`: bit `g` of a byte is bit 4 of
    /// byte group `g`'s code.
    pub(crate) high: Option<Vec<u8>>,
    /// Block scales as f16 bits, `[panel][in / BLOCK][LANES]`.
    pub(crate) scale: Vec<u16>,
    /// Block minimums (Q4_1) as f16 bits, same layout.
    pub(crate) min: Option<Vec<u16>>,
    /// What makes the codes unsigned.
    pub(crate) offset: i32,
}

/// Byte groups a load of [`Int8Codes::nibbles`] codes holds in its low
/// nibbles; the high nibbles hold the groups `PAIRS` further on.
pub(crate) const PAIRS: usize = QUADS / 2;

/// How [`Int8Codes`] stores a type's codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Packing {
    /// 4-bit codes two a byte (Q4_0's `−8..8`, or `0..16` with a minimum).
    Nibbles,
    /// 5-bit codes: nibbles and a plane of fifth bits (Q5_0's `−16..16`,
    /// or `0..32`).
    FiveBits,
    /// IQ4's levels as nibbles indexing [`IQ4_LEVELS`], looked up in the
    /// kernels (`vpshufb`).
    Levels,
    /// Signed bytes (Q8_0), a byte each.
    Bytes,
}

/// The index of IQ4 level `level`. IQ4 blocks' codes are only ever
/// these levels ([`super::blocks`] reads them from the table).
fn level_index(level: i8) -> u8 {
    let index = IQ4_LEVELS.iter().position(|&l| l == level);
    debug_assert!(index.is_some(), "{level} is not an IQ4 level");
    index.map_or(0, |i| i as u8)
}

impl Int8Codes {
    /// From codes in the 8-output panel layout (`out` rows, `inp` inputs),
    /// stored as `packing` says (see [`Packing`]).
    pub(crate) fn from_codes(c: &Codes, out: usize, inp: usize, packing: Packing) -> Self {
        let panels = out.div_ceil(LANES);
        let nb = inp / BLOCK;
        // Codes with a minimum are unsigned already; the others are
        // offset into unsigned bytes. (The SIMD kernels rely on this: a
        // minimum means offset 0.)
        let offset = match (c.min.is_some(), packing) {
            (true, _) => 0,
            (false, Packing::Nibbles) => 8,
            (false, Packing::FiveBits) => 16,
            (false, Packing::Levels | Packing::Bytes) => 128,
        };
        let four_bit = packing != Packing::Bytes;
        let levels = packing == Packing::Levels;
        let block_bytes = if four_bit {
            BLOCK * LANES / 2
        } else {
            BLOCK * LANES
        };
        let mut u = vec![0u8; panels * nb * block_bytes];
        let mut high =
            (packing == Packing::FiveBits).then(|| vec![0u8; panels * nb * LANES * QUAD]);
        let mut scale = vec![0u16; panels * nb * LANES];
        let mut min = c.min.as_ref().map(|_| vec![0u16; scale.len()]);
        // The file's own f16 scales convert back exactly; k-quant scales
        // (f32 products) are rounded here.
        let f16 = |v: f32| half::f16::from_f32(v).to_bits();
        for o in 0..out {
            let (p8, c8) = (o / PANEL, o % PANEL);
            let (p, l) = (o / LANES, o % LANES);
            for k in 0..inp {
                let code = c.q[(p8 * inp + k) * PANEL + c8];
                // In 0..=255 (an i8 plus 128), or 0..32 for 4- and 5-bit
                // codes; a level's index for IQ4.
                let v = if levels {
                    level_index(code)
                } else {
                    (i32::from(code) + offset) as u8
                };
                let (b, g, i) = (k / BLOCK, k % BLOCK / QUAD, k % QUAD);
                let base = (p * nb + b) * block_bytes;
                if four_bit {
                    let at = base + ((g % PAIRS) * LANES + l) * QUAD + i;
                    u[at] |= if g < PAIRS { v & 0x0F } else { v << 4 };
                    if let Some(h) = high.as_mut() {
                        h[((p * nb + b) * LANES + l) * QUAD + i] |= ((v >> 4) & 1) << g;
                    }
                } else {
                    u[base + (g * LANES + l) * QUAD + i] = v;
                }
            }
            for b in 0..nb {
                let from = (p8 * nb + b) * PANEL + c8;
                let to = (p * nb + b) * LANES + l;
                scale[to] = f16(c.scale[from]);
                if let (Some(m), Some(src)) = (min.as_mut(), &c.min) {
                    m[to] = f16(src[from]);
                }
            }
        }
        Self {
            u,
            nibbles: four_bit,
            high,
            levels,
            scale,
            min,
            offset,
        }
    }

    /// Panels of [`LANES`] outputs.
    pub(crate) fn panels(&self, inp: usize) -> usize {
        self.scale.len() / (inp / BLOCK * LANES)
    }

    /// Bytes of codes per block of one panel.
    pub(crate) fn block_bytes(&self) -> usize {
        if self.nibbles {
            BLOCK * LANES / 2
        } else {
            BLOCK * LANES
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.u.len()
            + self.high.as_ref().map_or(0, Vec::len)
            + 2 * self.scale.len()
            + 2 * self.min.as_ref().map_or(0, Vec::len)
    }

    /// The unsigned code `u = q + offset` of panel `p`'s lane `l`, input `k` (`nb` blocks a row).
    fn code(&self, p: usize, nb: usize, l: usize, k: usize) -> i32 {
        let (b, g, i) = (k / BLOCK, k % BLOCK / QUAD, k % QUAD);
        let base = (p * nb + b) * self.block_bytes();
        let u = if self.nibbles {
            let byte = self.u[base + ((g % PAIRS) * LANES + l) * QUAD + i];
            let fifth = self.high.as_ref().map_or(0, |h| {
                let bits = h[((p * nb + b) * LANES + l) * QUAD + i];
                ((bits >> g) & 1) << 4
            });
            let nibble = (if g < PAIRS { byte & 0x0F } else { byte >> 4 }) | fifth;
            if self.levels {
                return i32::from(IQ4_LEVELS[usize::from(nibble & 0x0F)]) + self.offset;
            }
            nibble
        } else {
            self.u[base + (g * LANES + l) * QUAD + i]
        };
        i32::from(u)
    }

    /// Block `s`'s scale and minimum (0 without one) as f32.
    fn scale_min(&self, s: usize) -> (f32, Option<f32>) {
        let f32_of = |bits: u16| half::f16::from_bits(bits).to_f32();
        (
            f32_of(self.scale[s]),
            self.min.as_ref().map(|m| f32_of(m[s])),
        )
    }

    /// The dequantised weight of output `o`, input `k` (`inp` inputs), by
    /// ggml's operations (`q·d`, then `+ m`).
    pub(crate) fn at(&self, o: usize, k: usize, inp: usize) -> f32 {
        let (p, l) = (o / LANES, o % LANES);
        let nb = inp / BLOCK;
        let q = (self.code(p, nb, l, k) - self.offset) as f32;
        match self.scale_min((p * nb + k / BLOCK) * LANES + l) {
            (d, Some(m)) => q * d + m,
            (d, None) => q * d,
        }
    }

    /// Row `o` dequantised into `row` (its `in` values), as [`Int8Codes::at`]
    /// gives each.
    pub(crate) fn row_to_f32(&self, o: usize, row: &mut [f32]) {
        let (p, l) = (o / LANES, o % LANES);
        let nb = row.len() / BLOCK;
        for (b, block) in row.chunks_exact_mut(BLOCK).enumerate() {
            let (d, m) = self.scale_min((p * nb + b) * LANES + l);
            for (j, v) in block.iter_mut().enumerate() {
                let q = (self.code(p, nb, l, b * BLOCK + j) - self.offset) as f32;
                *v = match m {
                    Some(m) => q * d + m,
                    None => q * d,
                };
            }
        }
    }
}

/// The rows of `x`, quantised to 8-bit blocks and grouped into register
/// blocks of rows as [`super::Packed`] groups f32 rows.
pub(crate) struct Q8Rows {
    /// Four codes of one row packed little-endian in an i32: a block of `n`
    /// rows starting at row `r0` is `[in / QUAD][n]` from `r0 · in / QUAD`.
    pub(crate) q: Vec<i32>,
    /// `Σ q` per block of 32 inputs: `[in / BLOCK][n]` from `r0 · in / BLOCK`.
    pub(crate) sum: Vec<i32>,
    /// The block's scale `d`, same layout.
    pub(crate) d: Vec<f32>,
    /// `d · Σ q` (what a block minimum multiplies), same layout.
    pub(crate) ds: Vec<f32>,
    /// `(first row, rows)` of each register block.
    pub(crate) blocks: Vec<(usize, usize)>,
}

/// Most rows in one register block of the 8-bit kernels: 12 rows' integer
/// and float accumulators (24 of the 32 AVX-512 registers) with the codes,
/// their two nibble halves and the mask beside them.
pub(crate) const MAX_ROWS: usize = 12;

/// Rows of the next register block when `left` rows remain: as few blocks
/// as [`MAX_ROWS`] allows, of near-equal sizes (9 rows are one block, 16
/// two of 8). Each block reads the panel's codes again (from L1) and pays
/// the block's fixed work (loads, nibble masks, scales) again, so a verify
/// pass over 9 tokens as blocks of 8 and 1 cost about as much as one over
/// 12 (measured in `docs/benchmarks.md`).
pub(crate) fn row_block(left: usize) -> usize {
    let blocks = left.div_ceil(MAX_ROWS).max(1);
    left.div_ceil(blocks)
}

/// Quantises `x` (`[rows, inp]`, `inp` a multiple of [`BLOCK`]); compiled
/// for AVX-512 or AVX2 where the CPU has them (the same operations, so the
/// same codes).
pub(crate) fn quantise(x: &[f32], rows: usize, inp: usize, simd: bool) -> Q8Rows {
    #[cfg(target_arch = "x86_64")]
    if simd {
        if super::vnni::available() {
            return super::vnni::quantise(x, rows, inp);
        }
        if let Some(simd) = crate::simd::Avx2F16c::try_new() {
            return super::int8_avx2::quantise(simd, x, rows, inp);
        }
    }
    let _ = simd;
    quantise_rows(x, rows, inp, q8_block)
}

/// One block of 32 activations quantised: the scale `d`, `Σ q`, and the
/// codes four to an i32 (little-endian), as the kernels read them.
pub(crate) struct Q8Block {
    pub(crate) d: f32,
    pub(crate) sum: i32,
    pub(crate) groups: [i32; QUADS],
}

/// [`quantise`]'s body, with `q8` quantising one block (the portable
/// [`q8_block`] or a SIMD twin with the same results).
#[inline(always)]
pub(crate) fn quantise_rows(
    x: &[f32],
    rows: usize,
    inp: usize,
    q8: impl Fn(&[f32; BLOCK]) -> Q8Block,
) -> Q8Rows {
    let nb = inp / BLOCK;
    let mut out = Q8Rows {
        q: vec![0; rows * inp / QUAD],
        sum: vec![0; rows * nb],
        d: vec![0.0; rows * nb],
        ds: vec![0.0; rows * nb],
        blocks: Vec::new(),
    };
    let mut r0 = 0;
    while r0 < rows {
        let n = row_block(rows - r0);
        let q = &mut out.q[r0 * inp / QUAD..(r0 + n) * inp / QUAD];
        for j in 0..n {
            let row = &x[(r0 + j) * inp..(r0 + j + 1) * inp];
            for (b, block) in row.as_chunks::<BLOCK>().0.iter().enumerate() {
                let Q8Block { d, sum, groups } = q8(block);
                let at = r0 * nb + b * n + j;
                out.sum[at] = sum;
                out.d[at] = d;
                out.ds[at] = d * sum as f32;
                for (g, &codes) in groups.iter().enumerate() {
                    q[(b * QUADS + g) * n + j] = codes;
                }
            }
        }
        out.blocks.push((r0, n));
        r0 += n;
    }
    out
}

/// ggml's Q8_0 quantisation of one block: `d = max|x| / 127`,
/// `q = round(x · 127 / max|x|)` to the nearest integer, ties to even as ggml's x86
/// code rounds (0 for an all-zero block). A NaN in the block makes `d`
/// NaN, so that the block's products are NaN rather than silently finite.
#[inline(always)]
pub(crate) fn q8_block(x: &[f32; BLOCK]) -> Q8Block {
    // max |x| on the bit patterns (ordered as the values for non-negative
    // floats, with NaN above ∞): an integer maximum, which vectorises.
    let bits = x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7FFF_FFFF));
    let amax = f32::from_bits(bits);
    let d = amax / 127.0;
    // ggml's x86 code scales by 127 / max|x| (not 1 / d, which can round differently).
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    let mut q = [0i8; BLOCK];
    for (q, v) in q.iter_mut().zip(x) {
        *q = round_to_i8(v * id);
    }
    let mut groups = [0i32; QUADS];
    for (g, quad) in groups.iter_mut().zip(q.as_chunks::<QUAD>().0) {
        *g = i32::from_le_bytes(quad.map(|c| c as u8));
    }
    Q8Block {
        d,
        sum: q.iter().map(|&c| i32::from(c)).sum(),
        groups,
    }
}

/// `y` rounded to the nearest integer (ties to even), saturated to ±127
/// (NaN to −127, as the AVX-512 twin's `max`/`min` do). Adding 1.5·2²³
/// rounds any |y| < 2²² in the default rounding mode and leaves the
/// integer in the sum's low mantissa bits: plain arithmetic and bit
/// operations, which vectorise (`f32::round_ties_even` is a library call
/// without SSE4.1, and a saturating `as i8` was compiled lane by lane).
#[inline(always)]
#[allow(clippy::manual_clamp)] // `clamp` would keep a NaN, which the trick cannot take
fn round_to_i8(y: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0;
    // Saturating first keeps the trick's range (`max` ignores a NaN).
    let y = y.max(-127.0).min(127.0);
    // Within [2²³, 2²⁴) a unit in the last place is 1, so the bits count integers.
    ((y + MAGIC).to_bits().wrapping_sub(MAGIC.to_bits())) as i8
}

/// A kernel's work: panels `first..` of `w` (`inp` inputs each) times
/// every register block of `x` (`rows` rows), into `[panel][rows][LANES]`.
#[derive(Clone, Copy)]
pub(crate) struct Int8Job<'a> {
    pub(crate) w: &'a Int8Codes,
    pub(crate) inp: usize,
    pub(crate) first: usize,
    pub(crate) x: &'a Q8Rows,
    pub(crate) rows: usize,
}

/// The portable kernel: computes `job` into `out`.
pub(crate) fn panels(job: Int8Job<'_>, out: &mut [f32]) {
    let Int8Job {
        w,
        inp,
        first,
        x,
        rows,
    } = job;
    let nb = inp / BLOCK;
    for (j, out) in out.chunks_exact_mut(rows * LANES).enumerate() {
        let p = first + j;
        for &(r0, n) in &x.blocks {
            let q = &x.q[r0 * inp / QUAD..(r0 + n) * inp / QUAD];
            let rb = r0 * nb..(r0 + n) * nb;
            let (sum, d, ds) = (&x.sum[rb.clone()], &x.d[rb.clone()], &x.ds[rb]);
            for r in 0..n {
                for l in 0..LANES {
                    let mut acc = 0.0f32;
                    for b in 0..nb {
                        let mut dot = -w.offset * sum[b * n + r];
                        for g in 0..QUADS {
                            let codes = q[(b * QUADS + g) * n + r].to_le_bytes();
                            for (i, xq) in codes.into_iter().enumerate() {
                                let k = b * BLOCK + g * QUAD + i;
                                dot += w.code(p, nb, l, k) * i32::from(xq as i8);
                            }
                        }
                        // The float steps of the SIMD kernel, in its order.
                        let (scale, min) = w.scale_min((p * nb + b) * LANES + l);
                        let t = dot as f32 * scale;
                        acc = t.mul_add(d[b * n + r], acc);
                        if let Some(m) = min {
                            acc = m.mul_add(ds[b * n + r], acc);
                        }
                    }
                    out[(r0 + r) * LANES + l] = acc;
                }
            }
        }
    }
}
