//! Evaluation metrics: coverage (overall, per class, per set size) and
//! inefficiency.

use crate::error::Result;
use crate::input::{check_labels, check_not_empty};
use crate::sets::PredictionSets;

fn check(sets: &PredictionSets, labels: &[usize]) -> Result<()> {
    check_not_empty("prediction sets", sets.len())?;
    Ok(check_labels(labels, sets.len(), sets.n_classes())?)
}

/// Empirical coverage: the fraction of examples whose label is in its set.
///
/// # Errors
/// [`CoreError::Empty`](lastmile_core::CoreError::Empty) for no sets;
/// [`CoreError::LengthMismatch`](lastmile_core::CoreError::LengthMismatch)
/// unless there is one label per set;
/// [`CoreError::IndexOutOfRange`](lastmile_core::CoreError::IndexOutOfRange)
/// for a label `≥ n_classes`.
///
/// # Examples
/// ```
/// use lastmile_conformal::{PredictionSets, coverage};
/// let sets = PredictionSets::from_sets(3, vec![vec![0, 1], vec![2]]).unwrap();
/// assert_eq!(coverage(&sets, &[1, 0]).unwrap(), 0.5);
/// ```
pub fn coverage(sets: &PredictionSets, labels: &[usize]) -> Result<f64> {
    check(sets, labels)?;
    let hits = labels
        .iter()
        .enumerate()
        .filter(|&(i, &y)| sets.contains(i, y))
        .count();
    Ok(hits as f64 / labels.len() as f64)
}

/// Coverage per class (`None` for a class with no example).
///
/// # Errors
/// As [`coverage`].
///
/// # Examples
/// ```
/// use lastmile_conformal::{PredictionSets, class_coverage};
/// let sets = PredictionSets::from_sets(3, vec![vec![0], vec![0], vec![1]]).unwrap();
/// let per = class_coverage(&sets, &[0, 1, 1]).unwrap();
/// assert_eq!(per, vec![Some(1.0), Some(0.5), None]);
/// ```
pub fn class_coverage(sets: &PredictionSets, labels: &[usize]) -> Result<Vec<Option<f64>>> {
    check(sets, labels)?;
    let k = sets.n_classes();
    let mut hits = vec![0usize; k];
    let mut counts = vec![0usize; k];
    for (i, &y) in labels.iter().enumerate() {
        counts[y] += 1;
        hits[y] += usize::from(sets.contains(i, y));
    }
    Ok(hits
        .iter()
        .zip(&counts)
        .map(|(&h, &c)| (c > 0).then(|| h as f64 / c as f64))
        .collect())
}

/// Coverage among the examples whose set has a given size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizeStratum {
    /// The set size.
    pub size: usize,
    /// Number of examples with that set size.
    pub count: usize,
    /// Their empirical coverage.
    pub coverage: f64,
}

/// Size-stratified coverage (Angelopoulos et al. 2021, §4): coverage within
/// each observed set size, in increasing size. A method with good
/// conditional behaviour covers about `1 − α` in every stratum.
///
/// # Errors
/// As [`coverage`].
///
/// # Examples
/// ```
/// use lastmile_conformal::{PredictionSets, size_stratified_coverage};
/// let sets = PredictionSets::from_sets(3, vec![vec![0], vec![1], vec![0, 1]]).unwrap();
/// let strata = size_stratified_coverage(&sets, &[0, 0, 1]).unwrap();
/// assert_eq!((strata[0].size, strata[0].count, strata[0].coverage), (1, 2, 0.5));
/// ```
pub fn size_stratified_coverage(
    sets: &PredictionSets,
    labels: &[usize],
) -> Result<Vec<SizeStratum>> {
    check(sets, labels)?;
    let mut hits = vec![0usize; sets.n_classes() + 1];
    let mut counts = vec![0usize; sets.n_classes() + 1];
    for (i, &y) in labels.iter().enumerate() {
        let s = sets.size(i);
        counts[s] += 1;
        hits[s] += usize::from(sets.contains(i, y));
    }
    Ok((0..counts.len())
        .filter(|&s| counts[s] > 0)
        .map(|s| SizeStratum {
            size: s,
            count: counts[s],
            coverage: hits[s] as f64 / counts[s] as f64,
        })
        .collect())
}
