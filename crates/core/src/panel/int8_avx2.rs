//! The AVX2 kernel for 8-bit activations ([`super::int8`]), for x86-64
//! CPUs without AVX-512 VNNI; safe through core's [`crate::simd::Avx2F16c`] token.
//!
//! AVX2 has no instruction that adds four byte products into an i32 lane
//! (`vpdpbusd`). As in ggml's AVX2 code, `vpmaddubsw` multiplies unsigned
//! by signed bytes and adds adjacent pairs into i16 lanes (saturating),
//! and `vpmaddwd` by ones adds pairs of those into i32 lanes. The
//! saturation is never reached:
//!
//! - **4-bit codes** (`u` in `0..16`, activations `|q| ≤ 127`): a pair is
//!   at most 2·15·127 = 3 810 in magnitude, so all 8 byte groups of a
//!   block add up in i16 (at most 30 480 < 32 767) before one `vpmaddwd`
//!   per block and row;
//! - **5-bit codes** (`u` in `0..32`, the nibbles with their fifth bits
//!   added from their plane): a pair is at most 2·31·127 = 7 874, so
//!   4 groups (31 496) add up in i16 before each `vpmaddwd`;
//! - **8-bit codes** (Q8_0, stored `u = q + 128`): the signed code
//!   `q = u ⊕ 0x80` is split into `|q| ≤ 128` (the unsigned operand) and
//!   its sign, moved onto the activation (`vpsignb`); a pair is at most
//!   2·128·127 = 32 512, and each group goes to i32 at once. The sum is
//!   then `Σ q·q_x` directly, with no offset to take off.
//!
//! The integer block sums are exact and the float steps are the portable
//! kernel's, in its order, so the results are bit-identical to it. A panel
//! of 16 outputs is computed as two halves of 8 (one 256-bit vector of
//! i32): in the layout `[in / 4][16][4]`, a half's codes for 4 inputs are
//! 32 contiguous bytes. The block scales are widened from f16 by F16C's
//! `vcvtph2ps` (exact), which every CPU with AVX2 has: one instruction
//! where integer operations took eleven, a third of a one-token step's
//! instructions (`docs/benchmarks.md`, twenty-sixth session); pulp's `V3`
//! token lacks F16C, so the kernel runs under [`crate::simd::Avx2F16c`].

use std::arch::x86_64::{__m256, __m256i};

use crate::simd::Avx2F16c;

use super::BLOCK;
use super::int8::{Int8Job, LANES, PAIRS, Q8Rows, QUAD, QUADS, q8_block, quantise_rows};

/// Outputs per vector: half a panel.
const HALF: usize = LANES / 2;

/// Bytes of one half-panel load: 8 outputs' codes for 4 inputs.
const LOAD: usize = HALF * QUAD;

/// How far ahead in the codes the kernel asks for cache lines, in blocks;
/// as in the AVX-512 kernel: with several rows it reads memory too slowly
/// for the hardware prefetchers to run ahead of it.
const PREFETCH_BLOCKS: usize = 16;

/// Computes `job` into `out` (`[panel][rows][LANES]`).
pub(crate) fn panels(simd: Avx2F16c, job: Int8Job<'_>, out: &mut [f32]) {
    // pulp inlines the operation's body into a function compiled with the
    // token's features (see `super::x86`).
    simd.vectorize(Panels { simd, job, out });
}

/// [`super::int8::quantise_rows`] with the portable block quantisation
/// compiled for AVX2, where the compiler vectorises it: the same
/// operations, so the same codes (it is serial work between a pass's
/// products, ~5 % of an 8-token pass in the portable loop).
pub(crate) fn quantise(simd: Avx2F16c, x: &[f32], rows: usize, inp: usize) -> Q8Rows {
    simd.vectorize(Quantise { x, rows, inp })
}

struct Quantise<'a> {
    x: &'a [f32],
    rows: usize,
    inp: usize,
}

impl pulp::NullaryFnOnce for Quantise<'_> {
    type Output = Q8Rows;

    #[inline(always)]
    #[allow(clippy::redundant_closure)] // see below
    fn call(self) -> Q8Rows {
        // A closure, not the fn item: the fn item's `Fn::call` shim was
        // left out of line, compiled for baseline x86-64.
        quantise_rows(self.x, self.rows, self.inp, |b| q8_block(b))
    }
}

struct Panels<'a> {
    simd: Avx2F16c,
    job: Int8Job<'a>,
    out: &'a mut [f32],
}

impl pulp::NullaryFnOnce for Panels<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let Panels { simd, job, out } = self;
        let Int8Job {
            w,
            inp,
            first,
            x,
            rows,
        } = job;
        let nb = inp / BLOCK;
        let block_bytes = w.block_bytes();
        for (j, out) in out.chunks_exact_mut(rows * LANES).enumerate() {
            let p = first + j;
            let panel = Panel {
                u: w.u[p * nb * block_bytes..(p + 1) * nb * block_bytes]
                    .as_chunks::<LOAD>()
                    .0,
                high: w.high.as_ref().map_or(&[][..], |h| {
                    h[p * nb * LANES * QUAD..(p + 1) * nb * LANES * QUAD]
                        .as_chunks::<LOAD>()
                        .0
                }),
                scale: &w.scale[p * nb * LANES..(p + 1) * nb * LANES],
                min: w
                    .min
                    .as_ref()
                    .map_or(&[][..], |m| &m[p * nb * LANES..(p + 1) * nb * LANES]),
                offset: w.offset,
            };
            for &(r0, n) in &x.blocks {
                let rb = r0 * nb..(r0 + n) * nb;
                let block = Rows {
                    q: &x.q[r0 * inp / QUAD..(r0 + n) * inp / QUAD],
                    sum: &x.sum[rb.clone()],
                    d: &x.d[rb.clone()],
                    ds: &x.ds[rb],
                    n,
                };
                let o = &mut out[r0 * LANES..(r0 + n) * LANES];
                for half in 0..2 {
                    // Rows in register blocks of at most 8: the
                    // half-panel's codes are read again from L1, and
                    // unpacked again, by each block, so a pass over 7
                    // rows as 4 + 2 + 1 cost more than one over 8.
                    let mut r = 0;
                    while r < n {
                        let take = (n - r).min(8);
                        let at = Part { half, row: r };
                        macro_rules! rows {
                            ($r:literal) => {
                                if w.levels {
                                    level_rows::<$r>(simd, &panel, &block, at, o)
                                } else {
                                    match (w.nibbles, w.min.is_some(), w.high.is_some()) {
                                        (true, true, false) => nibble_rows::<$r, true, false>(
                                            simd, &panel, &block, at, o,
                                        ),
                                        (true, false, false) => nibble_rows::<$r, false, false>(
                                            simd, &panel, &block, at, o,
                                        ),
                                        (true, true, true) => nibble_rows::<$r, true, true>(
                                            simd, &panel, &block, at, o,
                                        ),
                                        (true, false, true) => nibble_rows::<$r, false, true>(
                                            simd, &panel, &block, at, o,
                                        ),
                                        _ => byte_rows::<$r>(simd, &panel, &block, at, o),
                                    }
                                }
                            };
                        }
                        match take {
                            8 => rows!(8),
                            7 => rows!(7),
                            6 => rows!(6),
                            5 => rows!(5),
                            4 => rows!(4),
                            3 => rows!(3),
                            2 => rows!(2),
                            _ => rows!(1),
                        }
                        r += take;
                    }
                }
            }
        }
    }
}

/// One panel: its codes as half-panel loads (per block, byte group `g`
/// of half `h` at `2g + h`), its fifth bits (5-bit codes; per block, half
/// `h` at `h`), its scales and minimums (f16 bits, `[block][LANES]`).
struct Panel<'a> {
    u: &'a [[u8; LOAD]],
    high: &'a [[u8; LOAD]],
    scale: &'a [u16],
    min: &'a [u16],
    offset: i32,
}

/// One register block of [`super::int8::Q8Rows`] (`n` rows).
struct Rows<'a> {
    q: &'a [i32],
    sum: &'a [i32],
    d: &'a [f32],
    ds: &'a [f32],
    n: usize,
}

impl Rows<'_> {
    /// Byte group `group`'s codes (4 activations in an i32) of rows
    /// `row..row + R`, contiguous in the layout `[group][rows]`.
    #[inline(always)]
    fn group<const R: usize>(&self, group: usize, row: usize) -> [i32; R] {
        let at = group * self.n + row;
        let rows = &self.q[at..at + R];
        std::array::from_fn(|r| rows[r])
    }
}

/// Which half of the panel, and the first of the rows, a call computes.
#[derive(Clone, Copy)]
struct Part {
    half: usize,
    row: usize,
}

/// Rows `at.row..at.row + R` against half `at.half` of a panel of 4-bit
/// codes, or 5-bit ones with `HIGH`; `MIN`: the blocks have minimums
/// (offset 0).
#[inline(always)]
fn nibble_rows<const R: usize, const MIN: bool, const HIGH: bool>(
    simd: Avx2F16c,
    panel: &Panel<'_>,
    x: &Rows<'_>,
    at: Part,
    out: &mut [f32],
) {
    let (avx, avx2) = (simd.avx, simd.avx2);
    let low = avx._mm256_set1_epi8(0x0F);
    let ones = avx._mm256_set1_epi16(1);
    let mut acc = [avx._mm256_setzero_ps(); R];
    for (b, codes) in panel.u.chunks_exact(2 * PAIRS).enumerate() {
        if at.half == 0 && at.row == 0 {
            prefetch(simd, codes, PAIRS);
        }
        let fifths: __m256i = if HIGH {
            pulp::cast(panel.high[2 * b + at.half])
        } else {
            avx._mm256_setzero_si256()
        };
        let mut dot = [avx._mm256_setzero_si256(); R];
        let mut wide = [avx._mm256_setzero_si256(); R];
        for g in 0..PAIRS {
            let wv: __m256i = pulp::cast(codes[2 * g + at.half]);
            let mut lo = avx2._mm256_and_si256(wv, low);
            let mut hi = avx2._mm256_and_si256(avx2._mm256_srli_epi16::<4>(wv), low);
            if HIGH {
                let (l, h) = fifth_bits(simd, fifths, g);
                lo = avx2._mm256_or_si256(lo, l);
                hi = avx2._mm256_or_si256(hi, h);
            }
            // The R rows' groups as arrays: one bounds check each, not one a row.
            let xlo = x.group::<R>(b * QUADS + g, at.row);
            let xhi = x.group::<R>(b * QUADS + g + PAIRS, at.row);
            for ((dot, xlo), xhi) in dot.iter_mut().zip(xlo).zip(xhi) {
                let xlo = avx._mm256_set1_epi32(xlo);
                let xhi = avx._mm256_set1_epi32(xhi);
                // i16 sums: at most 8 groups of 3 810, or 4 of 7 874 (module docs).
                *dot = avx2._mm256_add_epi16(*dot, avx2._mm256_maddubs_epi16(lo, xlo));
                *dot = avx2._mm256_add_epi16(*dot, avx2._mm256_maddubs_epi16(hi, xhi));
            }
            if HIGH && g % 2 == 1 {
                for (wide, dot) in wide.iter_mut().zip(&mut dot) {
                    *wide = avx2._mm256_add_epi32(*wide, avx2._mm256_madd_epi16(*dot, ones));
                    *dot = avx._mm256_setzero_si256();
                }
            }
        }
        let (scale, min) = scales::<MIN>(simd, panel, b, at.half);
        for (r, (acc, (dot, wide))) in acc.iter_mut().zip(dot.into_iter().zip(wide)).enumerate() {
            let s = b * x.n + at.row + r;
            let mut sum = if HIGH {
                wide
            } else {
                avx2._mm256_madd_epi16(dot, ones)
            };
            // Codes with a minimum are unsigned as stored (offset 0).
            if !MIN {
                let off = avx._mm256_set1_epi32(panel.offset * x.sum[s]);
                sum = avx2._mm256_sub_epi32(sum, off);
            }
            *acc = accumulate::<MIN>(simd, *acc, sum, scale, min, x.d[s], x.ds[s]);
        }
    }
    store(at, acc, out);
}

/// The fifth bits of load `g`'s two groups moved to bit 4 of each byte (as
/// the AVX-512 kernel's `fifth_bits`: bit `g` of the plane for the low
/// nibbles, bit `g + 4` for the high ones).
#[inline(always)]
fn fifth_bits(simd: Avx2F16c, plane: __m256i, g: usize) -> (__m256i, __m256i) {
    let (avx, avx2) = (simd.avx, simd.avx2);
    let bit4 = avx._mm256_set1_epi8(0x10);
    let (lo, hi) = match g {
        0 => (avx2._mm256_slli_epi16::<4>(plane), plane),
        1 => (
            avx2._mm256_slli_epi16::<3>(plane),
            avx2._mm256_srli_epi16::<1>(plane),
        ),
        2 => (
            avx2._mm256_slli_epi16::<2>(plane),
            avx2._mm256_srli_epi16::<2>(plane),
        ),
        _ => (
            avx2._mm256_slli_epi16::<1>(plane),
            avx2._mm256_srli_epi16::<3>(plane),
        ),
    };
    (
        avx2._mm256_and_si256(lo, bit4),
        avx2._mm256_and_si256(hi, bit4),
    )
}

/// Rows `at.row..at.row + R` against half `at.half` of a panel of IQ4
/// level indices (nibbles, no minimum): each nibble looked up as its
/// signed level (`vpshufb`), then multiplied as [`byte_rows`] multiplies
/// signed codes (`|level| ≤ 127`: a pair is at most 2·127·127 = 32 258),
/// so the sum is `Σ level·q_x` directly, with no offset to take off.
#[inline(always)]
fn level_rows<const R: usize>(
    simd: Avx2F16c,
    panel: &Panel<'_>,
    x: &Rows<'_>,
    at: Part,
    out: &mut [f32],
) {
    let (avx, avx2) = (simd.avx, simd.avx2);
    let low = avx._mm256_set1_epi8(0x0F);
    let mut table = [0i8; LOAD];
    for (t, &l) in table.iter_mut().zip(super::int8::IQ4_LEVELS.iter().cycle()) {
        *t = l;
    }
    let lut: __m256i = pulp::cast(table);
    let mut acc = [avx._mm256_setzero_ps(); R];
    for (b, codes) in panel.u.chunks_exact(2 * PAIRS).enumerate() {
        if at.half == 0 && at.row == 0 {
            prefetch(simd, codes, PAIRS);
        }
        let mut dot = [avx._mm256_setzero_si256(); R];
        for g in 0..PAIRS {
            let wv: __m256i = pulp::cast(codes[2 * g + at.half]);
            let lo = avx2._mm256_and_si256(wv, low);
            let hi = avx2._mm256_and_si256(avx2._mm256_srli_epi16::<4>(wv), low);
            for (nibbles, group) in [(lo, g), (hi, g + PAIRS)] {
                let q = avx2._mm256_shuffle_epi8(lut, nibbles);
                add_signed(simd, q, x.group::<R>(b * QUADS + group, at.row), &mut dot);
            }
        }
        let (scale, min) = scales::<false>(simd, panel, b, at.half);
        for (r, (acc, dot)) in acc.iter_mut().zip(dot).enumerate() {
            let s = b * x.n + at.row + r;
            *acc = accumulate::<false>(simd, *acc, dot, scale, min, x.d[s], x.ds[s]);
        }
    }
    store(at, acc, out);
}

/// Rows `at.row..at.row + R` against half `at.half` of a panel of 8-bit
/// codes (Q8_0: `u = q + 128`, no minimum).
#[inline(always)]
fn byte_rows<const R: usize>(
    simd: Avx2F16c,
    panel: &Panel<'_>,
    x: &Rows<'_>,
    at: Part,
    out: &mut [f32],
) {
    let (avx, avx2) = (simd.avx, simd.avx2);
    let flip = avx._mm256_set1_epi8(i8::MIN);
    let mut acc = [avx._mm256_setzero_ps(); R];
    for (b, codes) in panel.u.chunks_exact(2 * QUADS).enumerate() {
        if at.half == 0 && at.row == 0 {
            prefetch(simd, codes, QUADS);
        }
        let mut dot = [avx._mm256_setzero_si256(); R];
        for g in 0..QUADS {
            let wv: __m256i = pulp::cast(codes[2 * g + at.half]);
            let q = avx2._mm256_xor_si256(wv, flip);
            add_signed(simd, q, x.group::<R>(b * QUADS + g, at.row), &mut dot);
        }
        let (scale, min) = scales::<false>(simd, panel, b, at.half);
        for (r, (acc, dot)) in acc.iter_mut().zip(dot).enumerate() {
            let s = b * x.n + at.row + r;
            *acc = accumulate::<false>(simd, *acc, dot, scale, min, x.d[s], x.ds[s]);
        }
    }
    store(at, acc, out);
}

/// Adds one byte group's `Σ q·q_x` (4 products a lane) of signed codes
/// `q` to each row's i32 lanes: `|q|` is the unsigned operand of
/// `vpmaddubsw` and `q`'s sign moves onto the activations (`vpsignb`; −128
/// becomes the unsigned 128), so a pair is at most 2·128·127 = 32 512.
#[inline(always)]
fn add_signed<const R: usize>(simd: Avx2F16c, q: __m256i, xs: [i32; R], dot: &mut [__m256i; R]) {
    let (avx, avx2) = (simd.avx, simd.avx2);
    let ones = avx._mm256_set1_epi16(1);
    let mag = avx2._mm256_abs_epi8(q);
    for (dot, xq) in dot.iter_mut().zip(xs) {
        let xq = avx._mm256_set1_epi32(xq);
        let pairs = avx2._mm256_maddubs_epi16(mag, avx2._mm256_sign_epi8(xq, q));
        *dot = avx2._mm256_add_epi32(*dot, avx2._mm256_madd_epi16(pairs, ones));
    }
}

/// The portable kernel's float steps, in its order:
/// `acc = (dot·scale)·d + acc`, then `acc = m·ds + acc` with a minimum.
#[inline(always)]
fn accumulate<const MIN: bool>(
    simd: Avx2F16c,
    acc: __m256,
    dot: __m256i,
    scale: __m256,
    min: __m256,
    d: f32,
    ds: f32,
) -> __m256 {
    let (avx, fma) = (simd.avx, simd.fma);
    let t = avx._mm256_mul_ps(avx._mm256_cvtepi32_ps(dot), scale);
    let acc = fma._mm256_fmadd_ps(t, avx._mm256_set1_ps(d), acc);
    if MIN {
        fma._mm256_fmadd_ps(min, avx._mm256_set1_ps(ds), acc)
    } else {
        acc
    }
}

/// Block `b`'s scales (and minimums, zero without `MIN`) for half `half`.
#[inline(always)]
fn scales<const MIN: bool>(
    simd: Avx2F16c,
    panel: &Panel<'_>,
    b: usize,
    half: usize,
) -> (__m256, __m256) {
    let at = b * LANES + half * HALF;
    let scale = widen_f16(simd, &panel.scale[at..at + HALF]);
    let min = if MIN {
        widen_f16(simd, &panel.min[at..at + HALF])
    } else {
        simd.avx._mm256_setzero_ps()
    };
    (scale, min)
}

/// 8 f16 values (bits) widened to f32, exactly (`vcvtph2ps`).
#[inline(always)]
fn widen_f16(simd: Avx2F16c, bits: &[u16]) -> __m256 {
    let mut h = [0u16; HALF];
    h.copy_from_slice(bits);
    simd.widen_f16(h)
}

/// Asks for the cache lines of the block `PREFETCH_BLOCKS` past `codes`
/// (`lines` 64-byte lines a block); a prefetch never faults, whatever
/// the address, and `wrapping_add` forms it without a dereference.
#[inline(always)]
fn prefetch(simd: Avx2F16c, codes: &[[u8; LOAD]], lines: usize) {
    let at = codes
        .as_ptr()
        .cast::<u8>()
        .wrapping_add(PREFETCH_BLOCKS * lines * 64);
    for line in 0..lines {
        simd.sse
            ._mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.wrapping_add(line * 64).cast());
    }
}

/// Writes each row's 8 outputs into its half of `out` (`[rows][LANES]`).
#[inline(always)]
fn store<const R: usize>(at: Part, acc: [__m256; R], out: &mut [f32]) {
    for (r, a) in acc.into_iter().enumerate() {
        let o = (at.row + r) * LANES + at.half * HALF;
        let v: [f32; HALF] = pulp::cast(a);
        out[o..o + HALF].copy_from_slice(&v);
    }
}
