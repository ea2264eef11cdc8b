//! What the target's verify pass costs by its length.

use std::ops::Bound::{Included, Unbounded};

use lastmile_core::validate::{check_at_least, check_interval, check_positive};

use crate::error::Result;

/// The cost `v(k)` of a target pass over `k` tokens, in one-token steps
/// (`v(1) = 1`): what verifying `j` draft tokens costs (`v(j + 1)`, the
/// draft tokens and the bonus position).
///
/// Leviathan et al. (2023) take `v(k) = 1`, a memory-bound accelerator;
/// [`PassCosts::linear`] adds a marginal cost `c_v` per extra token. On a
/// CPU neither holds: a pass's cost follows the kernel's register blocks,
/// nearly flat for a few tokens and then rising (SmolLM2-135M on 2 cores:
/// 2 to 4 tokens about 1.0 step, 8 tokens about 1.5, in
/// `docs/benchmarks.md`), so [`PassCosts::from_times`] takes the measured
/// times of passes over `1..=K` tokens. Past the table the last marginal
/// cost repeats.
///
/// ```
/// use lastmile_spec_decode::PassCosts;
/// let linear = PassCosts::linear(0.1)?;
/// assert!((linear.verify(3) - 1.3).abs() < 1e-12);
/// // Passes over 1, 2, 3, 4 tokens timed 5.0, 5.1, 5.0 (noise) and 6.0 ms:
/// let measured = PassCosts::from_times(&[5.0e-3, 5.1e-3, 5.0e-3, 6.0e-3])?;
/// assert!((measured.marginal(0) - 0.02).abs() < 1e-12); // the 2nd token
/// assert_eq!(measured.marginal(1), 0.0); // never negative
/// assert!((measured.verify(3) - 1.2).abs() < 1e-12);
/// assert!((measured.verify(4) - 1.38).abs() < 1e-12); // the last marginal repeats
/// assert!(PassCosts::from_times(&[5.0e-3]).is_err()); // no second length
/// # Ok::<(), lastmile_spec_decode::SpecDecodeError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct PassCosts {
    /// `v(j + 2) − v(j + 1)`: the cost of draft token `j + 1` in the pass.
    marginal: Vec<f64>,
}

impl PassCosts {
    /// `v(k) = 1 + c_v·(k − 1)`.
    ///
    /// # Errors
    /// `c_v` negative or not finite.
    pub fn linear(verify_cost: f64) -> Result<Self> {
        let c_v = check_interval("verify_cost", verify_cost, Included(0.0), Unbounded)?;
        Ok(Self {
            marginal: vec![c_v],
        })
    }

    /// The costs from `seconds[k − 1]`, the measured time of a pass over
    /// `k` tokens (`k = 1..=K`, `K ≥ 2`), in units of the one-token pass.
    /// A longer pass never costs less than a shorter one (it can always
    /// do the shorter one's work), so each time is first raised to the
    /// largest before it: timing noise never makes a token free to verify
    /// where the one before it was not.
    ///
    /// # Errors
    /// Fewer than two times, or a time that is not positive and finite.
    pub fn from_times(seconds: &[f64]) -> Result<Self> {
        check_at_least("pass times", seconds.len(), 2)?;
        for &t in seconds {
            check_positive("pass time", t)?;
        }
        let mut steps = Vec::with_capacity(seconds.len());
        let mut most = 0.0f64;
        for &t in seconds {
            most = most.max(t / seconds[0]);
            steps.push(most);
        }
        Ok(Self {
            marginal: steps.windows(2).map(|w| w[1] - w[0]).collect(),
        })
    }

    /// What verifying draft token number `drafted + 1` adds to the pass,
    /// in steps.
    pub fn marginal(&self, drafted: usize) -> f64 {
        let last = self.marginal.len() - 1;
        self.marginal[drafted.min(last)]
    }

    /// The pass that verifies `drafted` draft tokens, `v(drafted + 1)`, in
    /// steps.
    pub fn verify(&self, drafted: usize) -> f64 {
        let table = drafted.min(self.marginal.len());
        let beyond = (drafted - table) as f64 * self.marginal(drafted);
        1.0 + self.marginal[..table].iter().sum::<f64>() + beyond
    }

    /// The mean marginal cost over the first `drafted` draft tokens:
    /// `(v(drafted + 1) − 1) / drafted` (the linear model's `c_v` that
    /// prices a pass verifying `drafted` tokens the same).
    ///
    /// ```
    /// use lastmile_spec_decode::PassCosts;
    /// // A pass over 9 tokens timed at 1.6 one-token passes: 0.075 a token over 8.
    /// let costs = PassCosts::from_times(&[4.0, 4.0, 4.0, 4.0, 4.4, 4.8, 5.2, 5.6, 6.4])?;
    /// assert!((costs.mean_marginal(8) - 0.075).abs() < 1e-12);
    /// assert_eq!(costs.mean_marginal(0), costs.marginal(0));
    /// # Ok::<(), lastmile_spec_decode::SpecDecodeError>(())
    /// ```
    pub fn mean_marginal(&self, drafted: usize) -> f64 {
        if drafted == 0 {
            self.marginal(0)
        } else {
            (self.verify(drafted) - 1.0) / drafted as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_costs_grow_by_c_v() {
        let p = PassCosts::linear(0.25).unwrap_or_else(|e| panic!("{e}"));
        for j in 0..20 {
            assert!((p.verify(j) - (1.0 + 0.25 * j as f64)).abs() < 1e-12);
            assert_eq!(p.marginal(j), 0.25);
        }
        assert!(PassCosts::linear(-0.1).is_err());
        assert!(PassCosts::linear(f64::INFINITY).is_err());
    }

    #[test]
    fn measured_costs_are_the_running_maximum() {
        let times = [4.0, 4.4, 4.2, 4.8, 6.0];
        let p = PassCosts::from_times(&times).unwrap_or_else(|e| panic!("{e}"));
        let want = [1.0, 1.1, 1.1, 1.2, 1.5, 1.8, 2.1];
        for (j, w) in want.iter().enumerate() {
            assert!(
                (p.verify(j) - w).abs() < 1e-12,
                "{j}: {} vs {w}",
                p.verify(j)
            );
        }
        assert!((0..10).all(|j| p.marginal(j) >= 0.0));
        assert!((p.mean_marginal(4) - 0.125).abs() < 1e-12);
        assert!(PassCosts::from_times(&[4.0, 0.0]).is_err());
        assert!(PassCosts::from_times(&[4.0, f64::NAN]).is_err());
        assert!(PassCosts::from_times(&[]).is_err());
    }
}
