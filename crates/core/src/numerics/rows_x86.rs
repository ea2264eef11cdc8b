//! The host row kernels' scans written in AVX2 (pulp's V3 token), for
//! CPUs that have it.
//!
//! The portable loops keep 8 running flags in arrays of `bool`; the
//! compiler vectorised them across consecutive chunks instead (8 registers
//! of one lane each, and shuffles to transpose them): measured, a
//! finiteness check over 49 152 values took ~16 µs on the reference VM,
//! 4–5 µs here. One register holds the 8 lanes, each doing the portable
//! loop's comparisons, so the results are the same (tested against the
//! portable loops). The `exp` passes vectorise well as written (the same
//! speed in this form, measured), so they stay portable.

use std::arch::x86_64::{__m256, _CMP_NLT_UQ};

use pulp::x86::V3;

/// Lanes per register.
const LANES: usize = 8;

/// `max_and_tame` in one register of lanes: the lanes' maxima (NaN
/// ignored, as `v > m`), then the portable loop's fold and tail.
#[inline(always)]
pub(super) fn max_and_tame(simd: V3, row: &[f32]) -> (f32, bool) {
    let avx = simd.avx;
    let (body, tail) = row.as_chunks::<LANES>();
    let inf = avx._mm256_set1_ps(f32::INFINITY);
    let mut max = avx._mm256_set1_ps(f32::NEG_INFINITY);
    let mut wild = avx._mm256_setzero_ps();
    for chunk in body {
        let v: __m256 = pulp::cast(*chunk);
        // NaN or +inf: not less than +inf, unordered included.
        wild = avx._mm256_or_ps(wild, avx._mm256_cmp_ps::<_CMP_NLT_UQ>(v, inf));
        // (v > m) ? v : m, the portable loop's select.
        max = avx._mm256_max_ps(v, max);
    }
    let lanes: [f32; LANES] = pulp::cast(max);
    let mut max = lanes.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let mut any_wild = avx._mm256_movemask_ps(wild) != 0;
    for &v in tail {
        any_wild |= v.is_nan() | (v == f32::INFINITY);
        max = max.max(v);
    }
    (max, !any_wild)
}

/// Whether every value is finite: `|v|` not less than `+inf` is an
/// infinity or NaN.
#[inline(always)]
pub(super) fn all_finite(simd: V3, values: &[f32]) -> bool {
    let avx = simd.avx;
    let (body, tail) = values.as_chunks::<LANES>();
    let inf = avx._mm256_set1_ps(f32::INFINITY);
    let magnitude = avx._mm256_castsi256_ps(avx._mm256_set1_epi32(0x7FFF_FFFF));
    let mut bad = avx._mm256_setzero_ps();
    for chunk in body {
        let v = avx._mm256_and_ps(pulp::cast(*chunk), magnitude);
        bad = avx._mm256_or_ps(bad, avx._mm256_cmp_ps::<_CMP_NLT_UQ>(v, inf));
    }
    avx._mm256_movemask_ps(bad) == 0 && tail.iter().all(|x| x.is_finite())
}
