//! Statistical tests used to prove properties of randomised algorithms:
//! chi-square goodness of fit (exactness of samplers) and normal tail
//! probabilities (coverage of conformal sets). Plain `f64` Rust.

use crate::error::{CoreError, Result};

/// `ln Γ(x)` for `x > 0` (Lanczos approximation, g = 7, n = 9; relative error < 1e-13).
///
/// ```
/// let v = lastmile_core::stats::ln_gamma(5.0);
/// assert!((v - 24f64.ln()).abs() < 1e-12);
/// ```
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        return std::f64::consts::PI.ln()
            - (std::f64::consts::PI * x).sin().abs().ln()
            - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Regularised upper incomplete gamma `Q(a, x) = Γ(a, x) / Γ(a)`.
///
/// Series for `x < a + 1`, Lentz continued fraction otherwise
/// (Numerical Recipes §6.2). Returns NaN for invalid arguments.
///
/// ```
/// // Q(1, x) = e^{-x}
/// let q = lastmile_core::stats::gamma_q(1.0, 2.0);
/// assert!((q - (-2f64).exp()).abs() < 1e-12);
/// ```
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if a.is_nan() || x.is_nan() || a <= 0.0 || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return 1.0;
    }
    let ln_prefix = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        let (mut sum, mut term, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        (1.0 - sum * ln_prefix.exp()).clamp(0.0, 1.0)
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (ln_prefix.exp() * h).clamp(0.0, 1.0)
    }
}

/// Upper tail `P(X ≥ x)` of a chi-square distribution with `dof` degrees of freedom.
///
/// ```
/// // the 95% quantile of chi2(1) is 3.841
/// let p = lastmile_core::stats::chi_square_sf(3.841_458_8, 1.0);
/// assert!((p - 0.05).abs() < 1e-6);
/// ```
pub fn chi_square_sf(x: f64, dof: f64) -> f64 {
    gamma_q(dof / 2.0, x / 2.0)
}

/// Standard normal CDF `Φ(z)`, through the identity `erfc(x) = Q(1/2, x²)`
/// for `x ≥ 0` (see [`gamma_q`]).
///
/// ```
/// let p = lastmile_core::stats::normal_cdf(1.959_963_985);
/// assert!((p - 0.975).abs() < 1e-9);
/// ```
pub fn normal_cdf(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let erfc_abs = gamma_q(0.5, x * x);
    if z >= 0.0 {
        1.0 - 0.5 * erfc_abs
    } else {
        0.5 * erfc_abs
    }
}

/// Result of a chi-square goodness-of-fit test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChiSquare {
    /// Pearson's statistic `Σ (O − E)² / E` over the pooled bins.
    pub statistic: f64,
    /// Degrees of freedom: pooled bins − 1.
    pub dof: usize,
    /// `P(χ²_dof ≥ statistic)`.
    pub p_value: f64,
}

/// Pearson chi-square goodness-of-fit test of observed counts against
/// expected probabilities.
///
/// Bins with expected count below 5 are pooled (in order) so the chi-square
/// approximation holds. Observations in a bin of probability 0 make the test
/// reject outright (`p_value = 0`): an exact sampler never produces them.
///
/// # Errors
/// [`CoreError::ShapeMismatch`] when the slices differ in length,
/// [`CoreError::Empty`] with no observations, [`CoreError::NotAProbability`]
/// when `expected` is not a distribution.
///
/// ```
/// use lastmile_core::stats::chi_square_gof;
/// let t = chi_square_gof(&[250, 250, 500], &[0.25, 0.25, 0.5]).unwrap();
/// assert!(t.p_value > 0.99);
/// let t = chi_square_gof(&[400, 100, 500], &[0.25, 0.25, 0.5]).unwrap();
/// assert!(t.p_value < 1e-6);
/// ```
pub fn chi_square_gof(observed: &[u64], expected: &[f64]) -> Result<ChiSquare> {
    if observed.len() != expected.len() {
        return Err(CoreError::shape(
            "observed counts",
            format!(
                "{} bins, as many as the expected probabilities",
                expected.len()
            ),
            &[observed.len()],
        ));
    }
    let n: u64 = observed.iter().sum();
    if n == 0 {
        return Err(CoreError::Empty {
            what: "observed counts".to_owned(),
            min: 1,
        });
    }
    let total: f64 = expected.iter().sum();
    if expected.iter().any(|p| !p.is_finite() || *p < 0.0) || (total - 1.0).abs() > 1e-6 {
        return Err(CoreError::NotAProbability {
            what: "expected probabilities".to_owned(),
            row: 0,
            reason: format!("sum {total} or a negative/non-finite entry"),
            tolerance: 1e-6,
        });
    }
    let n_f = n as f64;
    if observed
        .iter()
        .zip(expected)
        .any(|(&o, &p)| p == 0.0 && o > 0)
    {
        return Ok(ChiSquare {
            statistic: f64::INFINITY,
            dof: 1,
            p_value: 0.0,
        });
    }
    // Pool consecutive bins until each has an expected count of at least 5.
    let mut pooled: Vec<(f64, f64)> = Vec::new();
    let (mut o_acc, mut e_acc) = (0.0, 0.0);
    for (&o, &p) in observed.iter().zip(expected) {
        if p == 0.0 {
            continue;
        }
        o_acc += o as f64;
        e_acc += p * n_f;
        if e_acc >= 5.0 {
            pooled.push((o_acc, e_acc));
            o_acc = 0.0;
            e_acc = 0.0;
        }
    }
    if e_acc > 0.0 {
        match pooled.last_mut() {
            Some(last) => {
                last.0 += o_acc;
                last.1 += e_acc;
            }
            None => pooled.push((o_acc, e_acc)),
        }
    }
    if pooled.len() < 2 {
        return Ok(ChiSquare {
            statistic: 0.0,
            dof: 0,
            p_value: 1.0,
        });
    }
    let statistic: f64 = pooled.iter().map(|(o, e)| (o - e).powi(2) / e).sum();
    let dof = pooled.len() - 1;
    Ok(ChiSquare {
        statistic,
        dof,
        p_value: chi_square_sf(statistic, dof as f64),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chi_square_quantiles_match_tables() {
        // (x, dof, upper tail) from standard tables
        for (x, k, p) in [
            (3.841_458_820_694_124, 1.0, 0.05),
            (18.307_038_053_275_146, 10.0, 0.05),
            (6.634_896_601_021_214, 1.0, 0.01),
            (124.342_113_404_066_4, 100.0, 0.05),
        ] {
            assert!((chi_square_sf(x, k) - p).abs() < 1e-9, "x={x} k={k}");
        }
    }

    #[test]
    fn normal_cdf_matches_reference() {
        for (z, p) in [
            (0.0, 0.5),
            (-1.0, 0.158_655_253_931_457),
            (2.326_347_874, 0.99),
        ] {
            assert!((normal_cdf(z) - p).abs() < 1e-9, "z={z}");
        }
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut fact = 1.0f64;
        for n in 1..30 {
            fact *= n as f64;
            assert!((ln_gamma(n as f64 + 1.0) - fact.ln()).abs() < 1e-10 * fact.ln().max(1.0));
        }
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    }

    #[test]
    fn gof_pools_small_bins_and_rejects_impossible() {
        let t = chi_square_gof(&[10, 0, 0, 1], &[0.9, 0.0001, 0.0001, 0.0998]);
        assert!(t.is_ok());
        let t = chi_square_gof(&[10, 1], &[1.0, 0.0]).unwrap();
        assert_eq!(t.p_value, 0.0);
        assert!(chi_square_gof(&[1, 2], &[0.5]).is_err());
        assert!(chi_square_gof(&[0, 0], &[0.5, 0.5]).is_err());
        assert!(chi_square_gof(&[1, 2], &[0.5, 0.6]).is_err());
    }
}
