//! Prediction sets stored compactly (one flat label list plus offsets).

use burn::tensor::{Device, Tensor, TensorData};
use lastmile_core::validate::{check_indices, check_matrix_len};

/// A batch of classification prediction sets.
///
/// Stored as compressed rows: the labels of set `i` are
/// `labels[offsets[i]..offsets[i + 1]]`, in an unspecified order, without
/// duplicates. Sets may be empty (randomised scores allow it).
///
/// # Examples
/// ```
/// use lastmile_conformal::PredictionSets;
/// let sets = PredictionSets::from_sets(3, vec![vec![0, 2], vec![], vec![1]]).unwrap();
/// assert_eq!(sets.len(), 3);
/// assert_eq!(sets.size(0), 2);
/// assert!(sets.contains(0, 2) && !sets.contains(2, 0));
/// assert!((sets.mean_size() - 1.0).abs() < 1e-12);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PredictionSets {
    n_classes: usize,
    offsets: Vec<usize>,
    labels: Vec<u32>,
}

impl PredictionSets {
    pub(crate) fn from_parts(n_classes: usize, offsets: Vec<usize>, labels: Vec<u32>) -> Self {
        Self {
            n_classes,
            offsets,
            labels,
        }
    }

    /// Builds sets from explicit label lists.
    ///
    /// # Errors
    /// [`CoreError::IndexOutOfRange`](lastmile_core::CoreError::IndexOutOfRange)
    /// for a label `≥ n_classes`.
    pub fn from_sets(n_classes: usize, sets: Vec<Vec<usize>>) -> crate::Result<Self> {
        let mut offsets = Vec::with_capacity(sets.len() + 1);
        offsets.push(0);
        let mut labels = Vec::new();
        for (i, set) in sets.into_iter().enumerate() {
            let mut set = set;
            set.sort_unstable();
            set.dedup();
            if check_indices("set", &set, n_classes).is_err() {
                // Rerun with the set's name, built only on the error path.
                check_indices(&format!("sets[{i}]"), &set, n_classes)?;
            }
            labels.extend(set.iter().map(|&y| y as u32));
            offsets.push(labels.len());
        }
        Ok(Self {
            n_classes,
            offsets,
            labels,
        })
    }

    /// Builds sets from a row-major `[rows, n_classes]` membership mask.
    ///
    /// # Errors
    /// [`CoreError::ShapeMismatch`](lastmile_core::CoreError::ShapeMismatch)
    /// when `n_classes = 0` or the mask length is not a multiple of it.
    pub fn from_mask(n_classes: usize, mask: &[bool]) -> crate::Result<Self> {
        // An empty mask is zero sets; anything else must be `[rows, n_classes]`.
        if n_classes == 0 || !mask.is_empty() {
            check_matrix_len("set mask", mask.len(), n_classes)?;
        }
        let mut offsets = vec![0];
        let mut labels = Vec::new();
        for row in mask.chunks(n_classes) {
            labels.extend(
                row.iter()
                    .enumerate()
                    .filter(|(_, in_set)| **in_set)
                    .map(|(j, _)| j as u32),
            );
            offsets.push(labels.len());
        }
        Ok(Self {
            n_classes,
            offsets,
            labels,
        })
    }

    /// Number of sets.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether there are no sets.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes `|𝒴|`.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// The labels in set `i` (unspecified order). Panics if `i ≥ len()`.
    pub fn set(&self, i: usize) -> &[u32] {
        &self.labels[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Size of set `i`. Panics if `i ≥ len()`.
    pub fn size(&self, i: usize) -> usize {
        self.offsets[i + 1] - self.offsets[i]
    }

    /// All set sizes.
    pub fn sizes(&self) -> Vec<usize> {
        self.offsets.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Whether set `i` contains label `y`. Panics if `i ≥ len()`.
    pub fn contains(&self, i: usize, y: usize) -> bool {
        self.set(i).iter().any(|&l| l as usize == y)
    }

    /// Mean set size (inefficiency); 0 for no sets.
    pub fn mean_size(&self) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        self.labels.len() as f64 / self.len() as f64
    }

    /// Row-major `[len, n_classes]` membership mask.
    pub fn to_mask(&self) -> Vec<bool> {
        let mut mask = vec![false; self.len() * self.n_classes];
        for i in 0..self.len() {
            for &y in self.set(i) {
                mask[i * self.n_classes + y as usize] = true;
            }
        }
        mask
    }

    /// Membership as a `[len, n_classes]` float tensor of 0/1 (the "sets"
    /// argument of the bounds and losses).
    pub fn to_tensor(&self, device: &Device) -> Tensor<2> {
        let values: Vec<f32> = self
            .to_mask()
            .into_iter()
            .map(|b| if b { 1.0 } else { 0.0 })
            .collect();
        Tensor::from_data(
            TensorData::new(values, [self.len(), self.n_classes]),
            device,
        )
    }

    /// Concatenates batches of sets with the same number of classes.
    pub(crate) fn concat(n_classes: usize, parts: Vec<(Vec<usize>, Vec<u32>)>) -> Self {
        let mut offsets = vec![0usize];
        let mut labels = Vec::new();
        for (part_sizes, part_labels) in parts {
            let base = labels.len();
            offsets.extend(part_sizes.iter().skip(1).map(|o| o + base));
            labels.extend(part_labels);
        }
        Self {
            n_classes,
            offsets,
            labels,
        }
    }
}
