//! `e^x` and `ln x` in f32 as plain arithmetic, so that loops over them
//! vectorise: the standard library's `f32::exp` and `f32::ln` are a call
//! per element (and take slow paths on underflow and on zero), which made
//! the host-side softmax and entropy of a 49 152-token vocabulary cost more
//! than a small draft model's forward pass. Both follow Cephes' `expf` and
//! `logf` (range reduction and the same polynomial coefficients) and are
//! tested against f64 to 2 ulp.

/// `e^x` by Cody–Waite range reduction and a degree-6 polynomial (Cephes
/// `expf`'s coefficients): `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`,
/// `e^x = 2ⁿ·p(r)`. Within 2 ulp of the exact value on `[−87.3, 88]`;
/// clamped to `[e^−87.3, e^88]` outside that range (callers that need 0
/// for very negative `x` test for it; NaN stays NaN).
///
/// ```
/// use lastmile_core::fastmath::exp;
/// assert_eq!(exp(0.0), 1.0);
/// assert!((exp(1.0) - std::f32::consts::E).abs() < 1e-6);
/// ```
#[inline]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for |n| < 2⁹.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ];
    // Round to nearest by adding and removing 1.5·2²³ (exact for |v| < 2²²).
    const MAGIC: f32 = 12_582_912.0;
    // n = round(x·log2 e) then lies in [−126, 127], a normal 2ⁿ.
    let x = x.clamp(-87.3, 88.0);
    let shifted = x * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = P[0];
    for c in &P[1..] {
        p = p * r + c;
    }
    let p = p * r * r + r + 1.0;
    // 2ⁿ by its exponent bits. `shifted` lies in [2²³, 2²⁴), where the ulp
    // is 1, so its bits are MAGIC's plus n: integer operations that
    // vectorise (`n as i32` is a saturating conversion, which kept every
    // loop over `exp` scalar).
    let n_bits = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
    p * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// `ln x` for finite `x > 0` (subnormals included) by Cephes `logf`'s
/// reduction: `x = m·2ᵉ` with `m ∈ [√½, √2)`, `ln x = e·ln 2 + ln m`, `ln m`
/// by a degree-9 polynomial in `m − 1`. Within 2 ulp of the exact value
/// (tested against f64); other inputs give an unspecified finite or NaN
/// value, so callers test for them.
///
/// ```
/// use lastmile_core::fastmath::ln;
/// assert_eq!(ln(1.0), 0.0);
/// assert!((ln(std::f32::consts::E) - 1.0).abs() < 1e-6);
/// ```
#[inline]
pub fn ln(x: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    const P: [f32; 9] = [
        0.070_376_836,
        -0.115_146_1,
        0.116_769_984,
        -0.124_201_41,
        0.142_493_23,
        -0.166_680_57,
        0.200_007_14,
        -0.249_999_94,
        0.333_333_3,
    ];
    // Subnormals scaled by 2²³ into the normal range first.
    let sub = x < f32::MIN_POSITIVE;
    let (x, shift) = if sub {
        (x * 8_388_608.0, 23.0)
    } else {
        (x, 0.0)
    };
    let bits = x.to_bits();
    // x = m·2ᵉ with m ∈ [½, 1).
    let mut e = ((bits >> 23) & 0xff) as f32 - 126.0 - shift;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    let f = if m < SQRT_HALF {
        e -= 1.0;
        m + m - 1.0
    } else {
        m - 1.0
    };
    let z = f * f;
    let mut y = P[0];
    for c in &P[1..] {
        y = y * f + c;
    }
    let y = y * f * z - 2.121_944_4e-4 * e - 0.5 * z;
    f + y + 0.693_359_4 * e
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Largest error in ulps of the f32 result over `xs`, against `want`.
    fn worst_ulp(xs: impl Iterator<Item = f32>, f: fn(f32) -> f32, want: fn(f64) -> f64) -> f64 {
        xs.map(|x| {
            let w = want(f64::from(x));
            let ulp = f64::from(f32::EPSILON) * w.abs().max(f64::from(f32::MIN_POSITIVE));
            (f64::from(f(x)) - w).abs() / ulp
        })
        .fold(0.0, f64::max)
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        let xs = (0..12_700).map(|i| -87.0 + i as f32 * 0.0137);
        let worst = worst_ulp(xs, exp, f64::exp);
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-200.0) > 0.0 && exp(-200.0) < 1.3e-38);
        assert!(exp(200.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn ln_is_within_two_ulp_of_f64() {
        // Geometric steps over the whole positive range, subnormals included.
        let xs = (0..20_000).map(|i| 2f32.powf(-148.0 + i as f32 * 0.0138));
        let worst = worst_ulp(xs, ln, f64::ln);
        assert!(worst <= 2.0, "worst error {worst} ulp");
        // Near 1, where ln is near 0: within 2 ulp of the result too.
        let near = (1..2000).map(|i| 1.0 + (i as f32 - 1000.0) * 1e-4);
        let worst = worst_ulp(near.filter(|x| *x != 1.0), ln, f64::ln);
        assert!(worst <= 2.0, "near 1: worst error {worst} ulp");
        assert_eq!(ln(1.0), 0.0);
        assert!((ln(f32::MAX) - 88.722_84).abs() < 1e-4);
    }
}
