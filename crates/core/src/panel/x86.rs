//! The AVX2 + FMA kernel (x86-64-v3), safe through `pulp`'s feature token.
//!
//! Each call of a panel kernel computes `R` input rows against one panel
//! of 8 outputs: per input `k`, one vector of 8 weights (loaded, or
//! dequantised from 8 codes) is multiplied by each row's `x[r][k]`
//! (broadcast) into that row's accumulator. With fewer than 8 rows, `U`
//! interleaved accumulators per row along `k` keep `R·U = 8` FMA chains in
//! flight, enough to cover the FMA latency.

use std::arch::x86_64::{__m128i, __m256};

use pulp::x86::V3;

use super::{BLOCK, Codes, Exact, Job, PANEL};

/// Computes `job` into `out` (`[panel][rows][PANEL]`).
pub(super) fn panels(simd: V3, job: Job<'_>, out: &mut [f32]) {
    // Through `WithSimd`, whose body pulp inlines into a function compiled
    // with the V3 features (a closure's body may be left outside it, and
    // then every intrinsic becomes a call).
    pulp::Simd::vectorize(simd, Panels { simd, job, out });
}

struct Panels<'a> {
    simd: V3,
    job: Job<'a>,
    out: &'a mut [f32],
}

impl pulp::WithSimd for Panels<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let Panels { simd, job, out } = self;
        let Job {
            weights,
            inp,
            first,
            x,
            rows,
        } = job;
        for (j, out) in out.chunks_exact_mut(rows * PANEL).enumerate() {
            let p = first + j;
            for &(r0, n) in &x.blocks {
                let xb = &x.values[r0 * inp..(r0 + n) * inp];
                let o = &mut out[r0 * PANEL..(r0 + n) * PANEL];
                match weights {
                    Exact::F32(w) => {
                        let w = &w[p * inp * PANEL..(p + 1) * inp * PANEL];
                        match n {
                            8 => f32_panel::<8, 1>(simd, w, xb, o),
                            4 => f32_panel::<4, 2>(simd, w, xb, o),
                            2 => f32_panel::<2, 4>(simd, w, xb, o),
                            _ => f32_panel::<1, 8>(simd, w, xb, o),
                        }
                    }
                    Exact::Codes(c) => {
                        let panel = CodePanel::new(c, p, inp);
                        match (n, c.min.is_some()) {
                            (8, false) => code_panel::<8, 1, false>(simd, &panel, xb, o),
                            (4, false) => code_panel::<4, 2, false>(simd, &panel, xb, o),
                            (2, false) => code_panel::<2, 4, false>(simd, &panel, xb, o),
                            (_, false) => code_panel::<1, 8, false>(simd, &panel, xb, o),
                            (8, true) => code_panel::<8, 1, true>(simd, &panel, xb, o),
                            (4, true) => code_panel::<4, 2, true>(simd, &panel, xb, o),
                            (2, true) => code_panel::<2, 4, true>(simd, &panel, xb, o),
                            (_, true) => code_panel::<1, 8, true>(simd, &panel, xb, o),
                        }
                    }
                }
            }
        }
    }
}

/// One panel's codes and block scales (and minimums).
struct CodePanel<'a> {
    q: &'a [[i8; PANEL]],
    scale: &'a [[f32; PANEL]],
    min: &'a [[f32; PANEL]],
}

impl<'a> CodePanel<'a> {
    #[inline(always)]
    fn new(c: &'a Codes, p: usize, inp: usize) -> Self {
        let nb = inp / BLOCK;
        let q = c.q[p * inp * PANEL..(p + 1) * inp * PANEL]
            .as_chunks::<PANEL>()
            .0;
        let scale = c.scale[p * nb * PANEL..(p + 1) * nb * PANEL]
            .as_chunks::<PANEL>()
            .0;
        let min = match &c.min {
            Some(m) => {
                m[p * nb * PANEL..(p + 1) * nb * PANEL]
                    .as_chunks::<PANEL>()
                    .0
            }
            None => &[],
        };
        Self { q, scale, min }
    }
}

/// `R` rows (`xb`: `[in][R]`) against an f32 panel (`w`: `[in][8]`).
#[inline(always)]
fn f32_panel<const R: usize, const U: usize>(simd: V3, w: &[f32], xb: &[f32], out: &mut [f32]) {
    let w = w.as_chunks::<PANEL>().0;
    let x = xb.as_chunks::<R>().0;
    let mut acc = [[simd.avx._mm256_setzero_ps(); R]; U];
    let whole = w.len() / U * U;
    for (ws, xs) in w[..whole].chunks_exact(U).zip(x[..whole].chunks_exact(U)) {
        for u in 0..U {
            fma_rows(simd, pulp::cast(ws[u]), &xs[u], &mut acc[u]);
        }
    }
    // The input length need not divide by U.
    for (wk, xk) in w[whole..].iter().zip(&x[whole..]) {
        fma_rows(simd, pulp::cast(*wk), xk, &mut acc[0]);
    }
    store(simd, acc, out);
}

/// `R` rows against a panel of codes. The weights are formed as
/// [`crate::gguf::dequantize`] forms them (`q·d`, then `+ m`), unfused, so
/// that they are the same f32 values.
#[inline(always)]
fn code_panel<const R: usize, const U: usize, const MIN: bool>(
    simd: V3,
    panel: &CodePanel<'_>,
    xb: &[f32],
    out: &mut [f32],
) {
    let x = xb.as_chunks::<R>().0;
    let mut acc = [[simd.avx._mm256_setzero_ps(); R]; U];
    let blocks = panel.q.chunks_exact(BLOCK).zip(x.chunks_exact(BLOCK));
    for (b, (qb, xb)) in blocks.enumerate() {
        let d: __m256 = pulp::cast(panel.scale[b]);
        let m: __m256 = if MIN {
            pulp::cast(panel.min[b])
        } else {
            simd.avx._mm256_setzero_ps()
        };
        for (qs, xs) in qb.chunks_exact(U).zip(xb.chunks_exact(U)) {
            for u in 0..U {
                let bytes: [u8; PANEL] = pulp::cast(qs[u]);
                let q: __m128i = simd.sse2._mm_set_epi64x(0, i64::from_le_bytes(bytes));
                let q = simd
                    .avx
                    ._mm256_cvtepi32_ps(simd.avx2._mm256_cvtepi8_epi32(q));
                let mut wv = simd.avx._mm256_mul_ps(q, d);
                if MIN {
                    wv = simd.avx._mm256_add_ps(wv, m);
                }
                fma_rows(simd, wv, &xs[u], &mut acc[u]);
            }
        }
    }
    store(simd, acc, out);
}

/// `acc[r] += w · x[r]` for each row.
#[inline(always)]
fn fma_rows<const R: usize>(simd: V3, w: __m256, x: &[f32; R], acc: &mut [__m256; R]) {
    for (a, &xr) in acc.iter_mut().zip(x) {
        *a = simd.fma._mm256_fmadd_ps(w, simd.avx._mm256_set1_ps(xr), *a);
    }
}

/// Sums the `U` accumulators of each row into `out` (`[R][8]`).
#[inline(always)]
fn store<const R: usize, const U: usize>(simd: V3, acc: [[__m256; R]; U], out: &mut [f32]) {
    for (r, o) in out.chunks_exact_mut(PANEL).take(R).enumerate() {
        let mut sum = acc[0][r];
        for a in &acc[1..] {
            sum = simd.avx._mm256_add_ps(sum, a[r]);
        }
        let v: [f32; PANEL] = pulp::cast(sum);
        o.copy_from_slice(&v);
    }
}
