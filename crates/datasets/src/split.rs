//! Seeded train / calibration / test splits of sample indices.
//!
//! Conformal prediction and other post-hoc calibration methods need a third
//! split, disjoint from the training and test data; hence three parts.

use lastmile_core::validate::{check_at_least, check_indices, check_probability_row};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::error::{DatasetError, Result};

/// Tolerance on the sum of [`SplitFractions`]: `|Σ f − 1| ≤ 1e-9`.
const FRACTION_SUM_TOLERANCE: f64 = 1e-9;

/// Sample indices of a train / calibration / test split.
///
/// The three parts are disjoint; each is in random (seeded) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Indices of the training samples.
    pub train: Vec<usize>,
    /// Indices of the calibration samples.
    pub calibration: Vec<usize>,
    /// Indices of the test samples.
    pub test: Vec<usize>,
}

impl Split {
    /// Total number of indices in the three parts.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::{split_indices, SplitFractions};
    /// let split = split_indices(10, SplitFractions::new(0.6, 0.2, 0.2), 0)?;
    /// assert_eq!(split.len(), 10);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.train.len() + self.calibration.len() + self.test.len()
    }

    /// Whether all three parts are empty.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::{split_indices, SplitFractions};
    /// assert!(split_indices(0, SplitFractions::new(0.6, 0.2, 0.2), 0)?.is_empty());
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Fractions of the samples that go to each part of a [`Split`].
///
/// Each fraction must be finite and non-negative, and they must sum to 1
/// (within `1e-9`): the three form a probability distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitFractions {
    /// Fraction of samples for training.
    pub train: f64,
    /// Fraction of samples for calibration.
    pub calibration: f64,
    /// Fraction of samples for testing.
    pub test: f64,
}

impl SplitFractions {
    /// Fractions `(train, calibration, test)`; they are checked when used.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::SplitFractions;
    /// let f = SplitFractions::new(0.6, 0.2, 0.2);
    /// assert_eq!(f.counts(10)?, [6, 2, 2]);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub const fn new(train: f64, calibration: f64, test: f64) -> Self {
        Self {
            train,
            calibration,
            test,
        }
    }

    /// Checks the fractions.
    ///
    /// # Errors
    /// [`DatasetError::InvalidSplit`] if a fraction is negative or not finite,
    /// or the fractions do not sum to 1.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::SplitFractions;
    /// assert!(SplitFractions::new(0.5, 0.2, 0.2).validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let parts = [self.train, self.calibration, self.test];
        // Core's check names no part; the error lists all three.
        check_probability_row("split fractions", &parts, 0, FRACTION_SUM_TOLERANCE).map_err(|_| {
            DatasetError::InvalidSplit {
                found: format!(
                    "fractions (train {}, calibration {}, test {}) summing to {}",
                    self.train,
                    self.calibration,
                    self.test,
                    parts.iter().sum::<f64>()
                ),
                expected: format!(
                    "finite, non-negative fractions summing to 1 (within {FRACTION_SUM_TOLERANCE})"
                ),
            }
        })
    }

    /// Number of samples per part `[train, calibration, test]` for `n`
    /// samples, by largest remainders: each count is `floor(n·f)` or
    /// `ceil(n·f)` and the counts sum to exactly `n`.
    ///
    /// # Errors
    /// As [`SplitFractions::validate`].
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::SplitFractions;
    /// assert_eq!(SplitFractions::new(0.6, 0.2, 0.2).counts(11)?, [7, 2, 2]);
    /// assert_eq!(SplitFractions::new(0.5, 0.25, 0.25).counts(7)?, [3, 2, 2]);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn counts(&self, n: usize) -> Result<[usize; 3]> {
        self.validate()?;
        let exact = [self.train, self.calibration, self.test].map(|f| f * n as f64);
        let mut counts = exact.map(|x| x.floor() as usize);
        let assigned: usize = counts.iter().sum();
        let mut order = [0, 1, 2];
        // Largest fractional part first; ties go to the earlier part.
        order.sort_by(|&a, &b| {
            let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
            rb.total_cmp(&ra)
        });
        for &part in order.iter().cycle().take(n.saturating_sub(assigned)) {
            counts[part] += 1;
        }
        Ok(counts)
    }
}

/// Splits the indices `0..n` at random into train, calibration and test parts
/// whose sizes are given by `fractions` (see [`SplitFractions::counts`]).
///
/// The same `seed` always gives the same split.
///
/// # Errors
/// [`DatasetError::InvalidSplit`] if the fractions are invalid.
///
/// # Examples
/// ```
/// use lastmile_datasets::{split_indices, SplitFractions};
/// let split = split_indices(150, SplitFractions::new(0.6, 0.2, 0.2), 42)?;
/// assert_eq!((split.train.len(), split.calibration.len(), split.test.len()), (90, 30, 30));
/// assert_eq!(split, split_indices(150, SplitFractions::new(0.6, 0.2, 0.2), 42)?);
/// # Ok::<(), lastmile_datasets::DatasetError>(())
/// ```
pub fn split_indices(n: usize, fractions: SplitFractions, seed: u64) -> Result<Split> {
    let [train, calibration, test] = fractions.counts(n)?;
    split_counts(n, [train, calibration, test], seed)
}

/// Splits a random subset of the indices `0..n` into parts of exactly
/// `counts = [train, calibration, test]` samples; when the counts sum to less
/// than `n`, the remaining indices are left out.
///
/// # Errors
/// [`DatasetError::InvalidSplit`] if the counts sum to more than `n`.
///
/// # Examples
/// ```
/// use lastmile_datasets::split_counts;
/// let split = split_counts(100, [10, 5, 5], 7)?;
/// assert_eq!(split.len(), 20);
/// assert!(split_counts(10, [8, 2, 1], 7).is_err());
/// # Ok::<(), lastmile_datasets::DatasetError>(())
/// ```
pub fn split_counts(n: usize, counts: [usize; 3], seed: u64) -> Result<Split> {
    let total = counts.iter().try_fold(0usize, |acc, &c| acc.checked_add(c));
    if total.is_none_or(|t| t > n) {
        return Err(DatasetError::InvalidSplit {
            found: format!(
                "counts (train {}, calibration {}, test {}) for {n} samples",
                counts[0], counts[1], counts[2]
            ),
            expected: format!("counts summing to at most {n}"),
        });
    }
    let mut indices: Vec<usize> = (0..n).collect();
    indices.shuffle(&mut StdRng::seed_from_u64(seed));
    let test = indices.split_off(counts[0] + counts[1]);
    let calibration = indices.split_off(counts[0]);
    Ok(Split {
        train: indices,
        calibration,
        test: test.into_iter().take(counts[2]).collect(),
    })
}

/// A stratified split: each class is split separately with `fractions`
/// (largest remainders, so each part's count of every class is within 1 of
/// its exact share), then each part is shuffled.
///
/// Because every class is rounded on its own, part sizes can differ from
/// those of [`split_indices`] by up to the number of classes.
///
/// # Errors
/// * [`DatasetError::InvalidSplit`] if the fractions are invalid.
/// * [`CoreError::OutOfRange`](lastmile_core::CoreError::OutOfRange) (through
///   [`DatasetError::Core`]) if `n_classes == 0`.
/// * [`CoreError::IndexOutOfRange`](lastmile_core::CoreError::IndexOutOfRange)
///   (through [`DatasetError::Core`]) if a label is `>= n_classes`.
///
/// # Examples
/// ```
/// use lastmile_datasets::{stratified_split, SplitFractions};
/// let ds = lastmile_datasets::iris()?;
/// let labels = ds.labels().expect("iris is a classification set");
/// let split = stratified_split(labels, 3, SplitFractions::new(0.6, 0.2, 0.2), 0)?;
/// let train = ds.subset(&split.train)?;
/// assert_eq!(train.class_counts(), Some(vec![30, 30, 30]));
/// # Ok::<(), lastmile_datasets::DatasetError>(())
/// ```
pub fn stratified_split(
    labels: &[usize],
    n_classes: usize,
    fractions: SplitFractions,
    seed: u64,
) -> Result<Split> {
    fractions.validate()?;
    check_at_least("n_classes", n_classes, 1)?;
    check_indices("labels", labels, n_classes)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut split = Split {
        train: Vec::new(),
        calibration: Vec::new(),
        test: Vec::new(),
    };
    for members in indices_by_class(labels, n_classes) {
        let mut members = members;
        members.shuffle(&mut rng);
        let [n_train, n_calibration, _] = fractions.counts(members.len())?;
        let test = members.split_off(n_train + n_calibration);
        let calibration = members.split_off(n_train);
        split.train.extend(members);
        split.calibration.extend(calibration);
        split.test.extend(test);
    }
    split.train.shuffle(&mut rng);
    split.calibration.shuffle(&mut rng);
    split.test.shuffle(&mut rng);
    Ok(split)
}

/// The sample indices of each class, in ascending order.
pub(crate) fn indices_by_class(labels: &[usize], n_classes: usize) -> Vec<Vec<usize>> {
    let mut by_class = vec![Vec::new(); n_classes];
    for (i, &label) in labels.iter().enumerate() {
        by_class[label].push(i);
    }
    by_class
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_to_n_and_round_each_part() {
        let fractions = SplitFractions::new(0.7, 0.15, 0.15);
        for n in 0..200 {
            let counts = fractions.counts(n).expect("valid fractions");
            assert_eq!(counts.iter().sum::<usize>(), n);
            for (c, f) in counts.iter().zip([0.7, 0.15, 0.15]) {
                assert!((*c as f64 - f * n as f64).abs() < 1.0, "n={n} {counts:?}");
            }
        }
    }

    #[test]
    fn invalid_fractions() {
        for f in [
            SplitFractions::new(0.5, 0.5, 0.5),
            SplitFractions::new(-0.1, 0.6, 0.5),
            SplitFractions::new(f64::NAN, 0.5, 0.5),
            SplitFractions::new(f64::INFINITY, 0.0, 0.0),
        ] {
            let err = split_indices(10, f, 0).expect_err("invalid");
            assert!(matches!(err, DatasetError::InvalidSplit { .. }), "{err}");
        }
        assert!(matches!(
            split_counts(10, [usize::MAX, 1, 0], 0),
            Err(DatasetError::InvalidSplit { .. })
        ));
    }

    #[test]
    fn zero_fraction_gives_empty_part() {
        let split = split_indices(50, SplitFractions::new(0.8, 0.0, 0.2), 1).expect("valid");
        assert_eq!(
            (split.train.len(), split.calibration.len(), split.test.len()),
            (40, 0, 10)
        );
    }
}
