//! The AVX-512 VNNI kernel for 8-bit activations ([`super::int8`]).
//!
//! Per block of 32 inputs and per row, 8 `vpdpbusd` each add 4 byte
//! products into 16 i32 lanes (16 outputs): the 64-byte load of 16
//! outputs' codes for 4 inputs is shared by a register block of up to 12
//! rows ([`MAX_ROWS`](super::int8::MAX_ROWS)), each row's 4 codes
//! broadcast to every lane. The block's integer sum then becomes f32 as
//! in the portable kernel. With 8 rows or fewer, `U` integer
//! accumulators per row along the block keep 8 to 16 chains in flight. 4-bit
//! codes come two a byte: one load, a mask and a shift give two groups'
//! codes, half the bytes read for the same `vpdpbusd`s; 5-bit codes add
//! each group's fifth bits from their plane (a shift and a mask a group,
//! shared by the rows); the block scales are widened from f16
//! (`vcvtph2ps`).
//!
//! `pulp` has no safe token for VNNI, so this module uses `std::arch`
//! directly: the kernel is a `#[target_feature]` function, entered only
//! after run-time detection ([`available`]), and its only unsafe operations
//! are unaligned loads and stores through references to arrays of exactly
//! the vector's size. It is the workspace's one module allowed unsafe code.

#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m512, __m512i, _MM_HINT_T0, _mm_prefetch, _mm_storeu_si128, _mm256_loadu_si256,
    _mm512_add_epi32, _mm512_and_si512, _mm512_castps_si512, _mm512_cvtepi32_epi8,
    _mm512_cvtepi32_ps, _mm512_cvtph_ps, _mm512_cvtps_epi32, _mm512_dpbusd_epi32, _mm512_fmadd_ps,
    _mm512_loadu_ps, _mm512_loadu_si512, _mm512_max_epu32, _mm512_max_ps, _mm512_min_ps,
    _mm512_mul_ps, _mm512_or_si512, _mm512_reduce_add_epi32, _mm512_reduce_max_epu32,
    _mm512_set1_epi8, _mm512_set1_epi32, _mm512_set1_ps, _mm512_setzero_ps, _mm512_shuffle_epi8,
    _mm512_slli_epi16, _mm512_srli_epi16, _mm512_storeu_ps,
};

use super::BLOCK;
use super::int8::{Int8Codes, Int8Job, LANES, PAIRS, Q8Block, Q8Rows, QUAD, QUADS};

/// Whether this CPU runs the kernel (AVX-512 F, BW, VL and VNNI).
pub(crate) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// Computes `job` into `out`. The caller has checked [`available`].
pub(crate) fn panels(job: Int8Job<'_>, out: &mut [f32]) {
    debug_assert!(available());
    // SAFETY: the caller checked that the CPU has the kernel's features.
    unsafe { panels_vnni(job, out) }
}

/// [`super::int8::quantise_rows`] compiled for AVX-512 (vectorised by
/// the compiler). The caller has checked [`available`].
pub(crate) fn quantise(x: &[f32], rows: usize, inp: usize) -> Q8Rows {
    debug_assert!(available());
    // SAFETY: the caller checked that the CPU has the features.
    unsafe { quantise_avx512(x, rows, inp) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn quantise_avx512(x: &[f32], rows: usize, inp: usize) -> Q8Rows {
    super::int8::quantise_rows(x, rows, inp, |b| q8_block(b))
}

/// [`super::int8::q8_block`] in AVX-512: the same maximum of the bit
/// patterns, product, clamp and round to nearest even (the conversion's
/// default rounding), so the same codes for every finite block; the sum
/// and the packing into groups of four stay in vector registers.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn q8_block(x: &[f32; BLOCK]) -> Q8Block {
    let halves = x.as_chunks::<LANES>().0;
    let (lo, hi) = (load(&halves[0]), load(&halves[1]));
    let abs = _mm512_set1_epi32(0x7FFF_FFFF);
    let bits = _mm512_max_epu32(
        _mm512_and_si512(_mm512_castps_si512(lo), abs),
        _mm512_and_si512(_mm512_castps_si512(hi), abs),
    );
    let amax = f32::from_bits(_mm512_reduce_max_epu32(bits));
    let d = amax / 127.0;
    let id = _mm512_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
    let (low, high) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
    let round = |v: __m512| {
        _mm512_cvtps_epi32(_mm512_min_ps(
            _mm512_max_ps(_mm512_mul_ps(v, id), low),
            high,
        ))
    };
    let (q_lo, q_hi) = (round(lo), round(hi));
    let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q_lo, q_hi));
    let mut groups = [0i32; QUADS];
    let (g_lo, g_hi) = groups.split_at_mut(QUADS / 2);
    // SAFETY: each half of `groups` is 16 bytes, the stored vector's size.
    unsafe {
        _mm_storeu_si128(g_lo.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(q_lo));
        _mm_storeu_si128(g_hi.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(q_hi));
    }
    Q8Block { d, sum, groups }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn panels_vnni(job: Int8Job<'_>, out: &mut [f32]) {
    let Int8Job {
        w,
        inp,
        first,
        x,
        rows,
    } = job;
    let nb = inp / BLOCK;
    for (j, out) in out.chunks_exact_mut(rows * LANES).enumerate() {
        let panel = Panel::of(w, first + j, nb);
        for &(r0, n) in &x.blocks {
            let q = &x.q[r0 * inp / QUAD..(r0 + n) * inp / QUAD];
            let rb = r0 * nb..(r0 + n) * nb;
            let rows = Rows {
                q,
                offset: w.offset,
                sum: &x.sum[rb.clone()],
                d: &x.d[rb.clone()],
                ds: &x.ds[rb],
            };
            let o = &mut out[r0 * LANES..(r0 + n) * LANES];
            // `U` accumulators per row keep several chains of `vpdpbusd`
            // in flight whatever the rows. At 8 rows, two a row (chains of
            // 4 instead of 8) made the kernel 5-7 % faster on an Emerald
            // Rapids Xeon, which issues two a cycle (`docs/benchmarks.md`);
            // 9-12 rows have no registers left for a second.
            macro_rules! by_rows {
                ($min:literal, $nib:literal, $high:literal, $lut:literal) => {
                    match n {
                        12 => panel_rows::<12, 1, $min, $nib, $high, $lut>(&panel, &rows, o),
                        11 => panel_rows::<11, 1, $min, $nib, $high, $lut>(&panel, &rows, o),
                        10 => panel_rows::<10, 1, $min, $nib, $high, $lut>(&panel, &rows, o),
                        9 => panel_rows::<9, 1, $min, $nib, $high, $lut>(&panel, &rows, o),
                        8 => panel_rows::<8, 2, $min, $nib, $high, $lut>(&panel, &rows, o),
                        7 => panel_rows::<7, 2, $min, $nib, $high, $lut>(&panel, &rows, o),
                        6 => panel_rows::<6, 2, $min, $nib, $high, $lut>(&panel, &rows, o),
                        5 => panel_rows::<5, 2, $min, $nib, $high, $lut>(&panel, &rows, o),
                        4 => panel_rows::<4, 2, $min, $nib, $high, $lut>(&panel, &rows, o),
                        3 => panel_rows::<3, 3, $min, $nib, $high, $lut>(&panel, &rows, o),
                        2 => panel_rows::<2, 4, $min, $nib, $high, $lut>(&panel, &rows, o),
                        _ => panel_rows::<1, 8, $min, $nib, $high, $lut>(&panel, &rows, o),
                    }
                };
            }
            match (w.min.is_some(), w.nibbles, w.high.is_some(), w.levels) {
                (false, false, _, _) => by_rows!(false, false, false, false),
                (false, true, false, false) => by_rows!(false, true, false, false),
                (false, true, false, true) => by_rows!(false, true, false, true),
                (false, true, true, _) => by_rows!(false, true, true, false),
                (true, false, _, _) => by_rows!(true, false, false, false),
                (true, true, false, _) => by_rows!(true, true, false, false),
                (true, true, true, _) => by_rows!(true, true, true, false),
            }
        }
    }
}

/// One panel: codes per byte group (two groups a load for nibbles),
/// scales and minimums (f16 bits) and fifth bits (5-bit codes) per block.
pub(super) struct Panel<'a> {
    pub(super) u: &'a [[u8; QUAD * LANES]],
    pub(super) scale: &'a [[u16; LANES]],
    /// Empty without minimums.
    pub(super) min: &'a [[u16; LANES]],
    /// Empty without fifth bits.
    pub(super) high: &'a [[u8; QUAD * LANES]],
}

impl<'a> Panel<'a> {
    /// Panel `p` of `w` (`nb` blocks a row).
    pub(super) fn of(w: &'a Int8Codes, p: usize, nb: usize) -> Self {
        let block_bytes = w.block_bytes();
        let blocks = p * nb * LANES..(p + 1) * nb * LANES;
        Panel {
            u: w.u[p * nb * block_bytes..(p + 1) * nb * block_bytes]
                .as_chunks::<{ QUAD * LANES }>()
                .0,
            scale: w.scale[blocks.clone()].as_chunks::<LANES>().0,
            min: match &w.min {
                Some(m) => m[blocks].as_chunks::<LANES>().0,
                None => &[],
            },
            high: match &w.high {
                Some(h) => {
                    h[p * nb * QUAD * LANES..(p + 1) * nb * QUAD * LANES]
                        .as_chunks::<{ QUAD * LANES }>()
                        .0
                }
                None => &[],
            },
        }
    }
}

/// One register block of `R` rows (layouts of [`Q8Rows`]).
struct Rows<'a> {
    q: &'a [i32],
    /// The codes' offset (the integer sums start at `−offset · Σ q`).
    offset: i32,
    sum: &'a [i32],
    d: &'a [f32],
    ds: &'a [f32],
}

/// `R` rows times one panel; `U` integer accumulators per row along a
/// block (byte group `g` adds into accumulator `g mod U`); `MIN`: blocks
/// have minimums (Q4_1); `NIB`: codes are packed two a byte; `HIGH`:
/// with fifth bits (5-bit codes, with `NIB`); `LUT`: the nibbles index
/// IQ4's levels, looked up as `level + 128` (`vpshufb`, with `NIB`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn panel_rows<
    const R: usize,
    const U: usize,
    const MIN: bool,
    const NIB: bool,
    const HIGH: bool,
    const LUT: bool,
>(
    panel: &Panel<'_>,
    x: &Rows<'_>,
    out: &mut [f32],
) {
    let mut acc = [_mm512_setzero_ps(); R];
    let q = x.q.as_chunks::<R>().0;
    let (sum, d, ds) = (
        x.sum.as_chunks::<R>().0,
        x.d.as_chunks::<R>().0,
        x.ds.as_chunks::<R>().0,
    );
    let loads = if NIB { PAIRS } else { QUADS };
    let low = _mm512_set1_epi8(0x0F);
    let lut = level_table();
    for (b, codes) in panel.u.chunks_exact(loads).enumerate() {
        prefetch::<NIB>(&codes[0]);
        prefetch_line(&panel.scale[b]);
        if MIN {
            prefetch_line(&panel.min[b]);
        }
        let mut dot = [[_mm512_set1_epi32(0); R]; U];
        // Codes with a minimum (Q4_1) are unsigned as stored (offset 0).
        if !MIN {
            for r in 0..R {
                dot[0][r] = _mm512_set1_epi32(-x.offset * sum[b][r]);
            }
        }
        let qb = &q[b * QUADS..(b + 1) * QUADS];
        let fifths = if HIGH {
            load_codes(&panel.high[b])
        } else {
            _mm512_set1_epi8(0)
        };
        for (g, bytes) in codes.iter().enumerate() {
            let wv = load_codes(bytes);
            if NIB {
                let mut lo = _mm512_and_si512(wv, low);
                let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(wv), low);
                if HIGH {
                    let (l, h) = fifth_bits(fifths, g);
                    lo = _mm512_or_si512(lo, l);
                    hi = _mm512_or_si512(hi, h);
                }
                if LUT {
                    lo = _mm512_shuffle_epi8(lut, lo);
                    hi = _mm512_shuffle_epi8(lut, hi);
                }
                let (a, c) = (g % U, (g + PAIRS) % U);
                for r in 0..R {
                    dot[a][r] = _mm512_dpbusd_epi32(dot[a][r], lo, _mm512_set1_epi32(qb[g][r]));
                    let xs = _mm512_set1_epi32(qb[g + PAIRS][r]);
                    dot[c][r] = _mm512_dpbusd_epi32(dot[c][r], hi, xs);
                }
            } else {
                let a = g % U;
                for r in 0..R {
                    dot[a][r] = _mm512_dpbusd_epi32(dot[a][r], wv, _mm512_set1_epi32(qb[g][r]));
                }
            }
        }
        let scale = load_f16(&panel.scale[b]);
        let min = if MIN {
            load_f16(&panel.min[b])
        } else {
            _mm512_setzero_ps()
        };
        for r in 0..R {
            let mut sum = dot[0][r];
            for du in &dot[1..] {
                sum = _mm512_add_epi32(sum, du[r]);
            }
            let t = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), scale);
            acc[r] = _mm512_fmadd_ps(t, _mm512_set1_ps(d[b][r]), acc[r]);
            if MIN {
                acc[r] = _mm512_fmadd_ps(min, _mm512_set1_ps(ds[b][r]), acc[r]);
            }
        }
    }
    for (o, a) in out.as_chunks_mut::<LANES>().0.iter_mut().zip(acc) {
        // SAFETY: `o` is 16 f32, the vector's size; unaligned stores are allowed.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
    }
}

/// IQ4's 16 levels plus 128 (unsigned bytes), in each 128-bit lane: the
/// table `vpshufb` looks nibbles up in.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn level_table() -> __m512i {
    let mut table = [0u8; QUAD * LANES];
    for (t, &l) in table.iter_mut().zip(super::int8::IQ4_LEVELS.iter().cycle()) {
        *t = (i16::from(l) + 128) as u8;
    }
    load_codes(&table)
}

/// The fifth bits of load `g`'s two groups (`g` and `g + PAIRS`) moved to
/// bit 4 of each byte: bit `g` of the plane's byte for the low nibbles,
/// bit `g + 4` for the high ones. The 16-bit shifts move no set bit across
/// a byte before the mask: by at most 4 places, from bits below 4 up or
/// from bits 4..8 down.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn fifth_bits(plane: __m512i, g: usize) -> (__m512i, __m512i) {
    let bit4 = _mm512_set1_epi8(0x10);
    let (lo, hi) = match g {
        0 => (_mm512_slli_epi16::<4>(plane), plane),
        1 => (_mm512_slli_epi16::<3>(plane), _mm512_srli_epi16::<1>(plane)),
        2 => (_mm512_slli_epi16::<2>(plane), _mm512_srli_epi16::<2>(plane)),
        _ => (_mm512_slli_epi16::<1>(plane), _mm512_srli_epi16::<3>(plane)),
    };
    (_mm512_and_si512(lo, bit4), _mm512_and_si512(hi, bit4))
}

/// How far ahead in the codes [`prefetch`] reaches, in blocks (4–8 KiB
/// of Q4_1 codes, scales and minimums). On a Xeon whose 480 MB L3 holds
/// the weights, 16 made both a one-token step and an 8-token pass 5–8 %
/// faster than 4 in alternating passes (8 to 32 within 2 % of one
/// another); on the AMD EPYC, where the weights stream from memory, 8 and
/// 16 had shown no change from 4 (`docs/benchmarks.md`).
const PREFETCH_BLOCKS: usize = 16;

/// Asks for the codes of the block `PREFETCH_BLOCKS` past `v`'s to be
/// brought into the cache (`NIB`: blocks of nibbles, half the lines):
/// with several rows the kernel reads memory too slowly for the hardware
/// prefetchers to run ahead of it (measured: 8 rows over SmolLM2's
/// matrices took twice the time of 1 without this).
#[inline]
#[target_feature(enable = "avx512f")]
fn prefetch<const NIB: bool>(v: &[u8; QUAD * LANES]) {
    let lines = if NIB { PAIRS } else { QUADS };
    let at = v.as_ptr().wrapping_add(PREFETCH_BLOCKS * lines * 64);
    for line in 0..lines {
        // A prefetch is a hint that never faults, whatever the address;
        // `wrapping_add` computes the address without a dereference.
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line * 64).cast());
    }
}

/// [`prefetch`] for the block scales (or minimums), as many blocks ahead
/// in their stream (32 bytes a block: a line covers two).
#[inline]
#[target_feature(enable = "avx512f")]
fn prefetch_line(v: &[u16; LANES]) {
    const AHEAD: usize = PREFETCH_BLOCKS * 2 * LANES;
    _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().cast::<u8>().wrapping_add(AHEAD).cast());
}

/// 16 f16 values (bits) widened to f32, exactly.
#[inline]
#[target_feature(enable = "avx512f")]
fn load_f16(v: &[u16; LANES]) -> __m512 {
    // SAFETY: `v` is 32 bytes, the loaded vector's size; unaligned loads are allowed.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(v.as_ptr().cast()) })
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load_codes(v: &[u8; QUAD * LANES]) -> __m512i {
    // SAFETY: `v` is 64 bytes, the vector's size; unaligned loads are allowed.
    unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load(v: &[f32; LANES]) -> __m512 {
    // SAFETY: `v` is 16 f32, the vector's size; unaligned loads are allowed.
    unsafe { _mm512_loadu_ps(v.as_ptr()) }
}
