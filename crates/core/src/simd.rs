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
