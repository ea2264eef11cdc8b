//! The digits data set split for federated learning: standardised features,
//! a fixed stratified held-out set, and the training rows spread over
//! clients with Dirichlet(α) label skew. One definition, shared by the
//! in-process simulation's example and the Flower app (which must partition
//! exactly as the simulation does for their accuracies to be comparable).

use crate::dataset::Dataset;
use crate::error::{DatasetError, Result};
use crate::loaders::digits;
use crate::partition::dirichlet_partition;
use crate::split::{SplitFractions, stratified_split};
use crate::standardize::Standardizer;

/// Partition draws tried before giving up on a split without empty clients.
const MAX_DRAWS: usize = 100;

/// Clients' training sets and the held-out set of [`digits_federation`].
#[derive(Clone, Debug)]
pub struct Federation {
    /// One data set per client, in client order.
    pub clients: Vec<Dataset>,
    /// The held-out 20 % (stratified, the same for every `alpha` and seed).
    pub test: Dataset,
    /// Partition draws rejected because a client got no sample.
    pub redraws: usize,
}

/// Digits (8×8 images, 10 classes) for `n_clients` federated clients.
///
/// 1. A stratified 80/20 train/test split (seed 0, independent of `seed`).
/// 2. Features standardised with the training rows' mean and scale.
/// 3. The training rows partitioned by [`dirichlet_partition`] with
///    concentration `alpha` and seed `seed · 1000 + r`, where `r` counts
///    draws rejected because a client got no sample (likely at α = 0.1).
///
/// # Errors
/// [`DatasetError::Core`] for `n_clients = 0` or a non-positive `alpha`;
/// [`DatasetError::InvalidSplit`] if 100 draws all leave a client empty
/// (more clients than samples, or a tiny `alpha`).
///
/// ```
/// let fed = lastmile_datasets::digits_federation(1.0, 5, 0)?;
/// assert_eq!(fed.clients.len(), 5);
/// let rows: usize = fed.clients.iter().map(|c| c.n_samples()).sum();
/// assert_eq!(rows + fed.test.n_samples(), 1797);
/// # Ok::<(), lastmile_datasets::DatasetError>(())
/// ```
pub fn digits_federation(alpha: f64, n_clients: usize, seed: u64) -> Result<Federation> {
    let data = digits()?;
    let labels = data.labels().map(<[usize]>::to_vec).unwrap_or_default();
    let split = stratified_split(&labels, 10, SplitFractions::new(0.8, 0.0, 0.2), 0)?;
    let train = data.subset(&split.train)?;
    let scaler = Standardizer::fit(&train)?;
    let train = scaler.transformed(&train)?;
    let test = scaler.transformed(&data.subset(&split.test)?)?;
    let train_labels = train.labels().map(<[usize]>::to_vec).unwrap_or_default();
    for redraws in 0..MAX_DRAWS {
        let parts = dirichlet_partition(
            &train_labels,
            10,
            n_clients,
            alpha,
            seed.wrapping_mul(1000).wrapping_add(redraws as u64),
        )?;
        if parts.iter().any(Vec::is_empty) {
            continue;
        }
        let clients = parts
            .iter()
            .map(|idx| train.subset(idx))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Federation {
            clients,
            test,
            redraws,
        });
    }
    Err(DatasetError::InvalidSplit {
        found: format!(
            "{MAX_DRAWS} Dirichlet({alpha}) partitions of {} rows over {n_clients} clients, each leaving a client empty",
            train.n_samples()
        ),
        expected: "fewer clients or a larger alpha, so that every client gets a sample".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_training_row_goes_to_exactly_one_client() {
        let fed = digits_federation(0.5, 7, 3).expect("federation");
        assert_eq!(fed.clients.len(), 7);
        assert!(fed.clients.iter().all(|c| !c.is_empty()));
        let rows: usize = fed.clients.iter().map(Dataset::n_samples).sum();
        assert_eq!(rows + fed.test.n_samples(), 1797);
        // the held-out set does not depend on alpha or seed
        let other = digits_federation(10.0, 3, 9).expect("federation");
        assert_eq!(other.test.features(), fed.test.features());
    }

    #[test]
    fn impossible_partition_is_a_typed_error() {
        // more clients than training rows: every draw leaves a client empty
        let err = digits_federation(1.0, 2000, 0).expect_err("too many clients");
        assert!(matches!(err, DatasetError::InvalidSplit { .. }), "{err}");
    }
}
