//! Loops compiled for AVX2 + FMA when the CPU has them, with one binary
//! for every x86-64 CPU.
//!
//! The workspace builds for baseline x86-64, whose loops vectorise 4 wide
//! (SSE2). pulp, already the panel kernel's dispatcher, detects the CPU's
//! features at run time and inlines an operation into a function compiled
//! with them, so the same loops run 8 wide: measured on SmolLM2-135M,
//! attention had been a sixth of a verify pass over 8 tokens, and a draft
//! token's softmax signals over its 49 152-token row most of the decoding
//! loop's host work (`docs/benchmarks.md`). Rust never reorders or fuses
//! float operations, so the results are bit-identical on every path.

/// pulp's operation and its SIMD token, so that crates need no pulp of their own.
pub use pulp::{Simd, WithSimd};

/// Runs `op` compiled for AVX2 + FMA when the CPU has them (else as
/// built). pulp inlines its `with_simd` into a function built with those
/// features; that `with_simd` must be `#[inline(always)]`, and a large
/// body is best an operation of its own rather than a closure (measured:
/// attention as a closure was left outside, unvectorised).
///
/// ```
/// use lastmile_core::simd::{Vectorized, vectorize};
/// let x = [1.0f32, 2.0, 3.0];
/// let sum: f32 = vectorize(Vectorized(|| x.iter().sum()));
/// assert_eq!(sum, 6.0);
/// ```
#[inline(always)]
pub fn vectorize<Op: WithSimd>(op: Op) -> Op::Output {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        return pulp::Simd::vectorize(simd, op);
    }
    op.with_simd(pulp::Scalar::new())
}

/// A small closure as pulp's operation, for [`vectorize`]: the closure
/// and what it calls must be inlined (`#[inline(always)]` helpers) to be
/// compiled with the wider features.
///
/// ```
/// use lastmile_core::simd::{Vectorized, vectorize};
/// let mut v = vec![1.0f32; 20];
/// vectorize(Vectorized(|| v.iter_mut().for_each(|x| *x *= 2.0)));
/// assert!(v.iter().all(|x| *x == 2.0));
/// ```
#[derive(Debug)]
pub struct Vectorized<F>(pub F);

impl<R, F: FnOnce() -> R> WithSimd for Vectorized<F> {
    type Output = R;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> R {
        (self.0)()
    }
}

#[cfg(target_arch = "x86_64")]
pulp::simd_type! {
    /// AVX2, FMA and F16C: the x86-64-v3 features lastmile's AVX2 kernels
    /// use, and F16C, which pulp's `V3` token lacks (every CPU with AVX2
    /// has it). `try_new` checks the CPU; `vectorize` runs an operation
    /// ([`pulp::NullaryFnOnce`], `#[inline(always)]`) compiled with the
    /// features. The fields are pulp's per-feature intrinsic tokens.
    ///
    /// ```
    /// # #[cfg(target_arch = "x86_64")] {
    /// use lastmile_core::simd::Avx2F16c;
    /// if let Some(simd) = Avx2F16c::try_new() {
    ///     // 1.0, −2.0 and 65 504 (f16's largest) as f16 bits, widened.
    ///     let bits = [0x3C00, 0xC000, 0x7BFF, 0, 0, 0, 0, 0];
    ///     let v: [f32; 8] = simd.vectorize(|| pulp::cast(simd.widen_f16(bits)));
    ///     assert_eq!(v[..3], [1.0, -2.0, 65504.0]);
    /// }
    /// # }
    /// ```
    #[allow(missing_docs)]
    pub struct Avx2F16c {
        pub sse: "sse",
        pub avx: "avx",
        pub avx2: "avx2",
        pub fma: "fma",
        pub f16c: "f16c",
    }
}

#[cfg(target_arch = "x86_64")]
impl Avx2F16c {
    /// 8 f16 values (their bits) widened to f32, exactly: one
    /// `vcvtph2ps` inside [`Avx2F16c::vectorize`] (pulp wraps none of
    /// F16C's intrinsics, hence the one `unsafe` call here).
    ///
    /// ```
    /// # #[cfg(target_arch = "x86_64")] {
    /// use lastmile_core::simd::Avx2F16c;
    /// if let Some(simd) = Avx2F16c::try_new() {
    ///     let v: [f32; 8] = pulp::cast(simd.widen_f16([0x3555; 8])); // 1/3 in f16
    ///     assert_eq!(v[7], 0.333_251_95);
    /// }
    /// # }
    /// ```
    #[inline(always)]
    #[allow(unsafe_code)]
    pub fn widen_f16(self, bits: [u16; 8]) -> std::arch::x86_64::__m256 {
        let h: std::arch::x86_64::__m128i = pulp::cast(bits);
        // SAFETY: the token exists only where the CPU has F16C (`try_new`).
        unsafe { std::arch::x86_64::_mm256_cvtph_ps(h) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastmath::exp;

    /// Lane sums of `exp` over 8 running lanes, the shape of the host loops.
    #[inline(always)]
    fn lane_exp_sum(x: &[f32]) -> f32 {
        let mut lanes = [0.0f32; 8];
        for chunk in x.as_chunks::<8>().0 {
            for l in 0..8 {
                lanes[l] += exp(chunk[l]) * chunk[l];
            }
        }
        lanes.iter().sum()
    }

    #[test]
    fn vectorised_loops_give_the_plain_loops_bits() {
        let x: Vec<f32> = (0..4099)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 37.0)
            .collect();
        let plain = lane_exp_sum(&x);
        let wide = vectorize(Vectorized(|| lane_exp_sum(&x)));
        assert_eq!(plain.to_bits(), wide.to_bits(), "{plain} vs {wide}");
        assert!(plain.is_finite() && plain != 0.0);
    }
}
