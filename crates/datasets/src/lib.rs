//! Small real datasets for lastmile's tests, examples and benchmarks, with the
//! preprocessing they need.
//!
//! * Tabular sets from scikit-learn, embedded in the library:
//!   [`digits`] (1797 × 64, 10 classes), [`wine`] (178 × 13, 3 classes),
//!   [`breast_cancer`] (569 × 30, 2 classes), [`iris`] (150 × 4, 3 classes)
//!   and [`diabetes`] (442 × 10, regression). Each loads into a [`Dataset`]
//!   (row-major `f32` features plus typed [`Targets`]) that converts to burn
//!   tensors ([`Dataset::features_tensor`], [`Dataset::labels_tensor`],
//!   [`Dataset::targets_tensor`]).
//! * Parsers for the underlying formats ([`parse_sklearn_csv`],
//!   [`parse_digits_csv`], [`parse_whitespace_regression`], [`gunzip`]) that
//!   return a typed [`DatasetError`] for malformed input.
//! * Seeded train / calibration / test splits ([`split_indices`],
//!   [`split_counts`], [`stratified_split`]), per-feature standardisation
//!   fitted on training rows ([`Standardizer`]) and the Dirichlet(α) non-IID
//!   partition across federated clients ([`dirichlet_partition`]).
//! * A text corpus ([`rust_book`]), byte-level tokenisation
//!   ([`ByteTokenizer`]), a contiguous train/validation split
//!   ([`TextCorpus`]) and seeded batches of fixed-length windows with
//!   next-token targets ([`WindowBatcher`]).
//!
//! The data files live in `crates/datasets/data/` (provenance and licences in
//! `data/README.md`) and are compiled in with `include_bytes!`, so nothing is
//! read from disk at run time. The `.gz` files are decompressed with
//! [`flate2`], the standard pure-Rust DEFLATE/gzip crate (its default backend,
//! `miniz_oxide`, needs no C compiler or system zlib).
//!
//! The crate enables no burn backend itself (it uses `lastmile-core` without
//! default features): pass any [`burn::prelude::Device`].
//!
//! # Errors
//! Every fallible function returns a [`DatasetError`]. Generic input checks
//! (a parameter out of range, an empty input, a buffer that is not
//! `[n_samples, n_features]`, lengths that disagree, a label or sample index
//! out of range) are those of [`lastmile_core::validate`], shared by every
//! lastmile crate, and arrive as [`DatasetError::Core`]; the other variants
//! say where in a file a problem is (line, column), which sample and feature
//! hold a NaN, or what a split, a sequence or a target kind should have been.
//!
//! # Example
//! Load iris, split it, standardise with training statistics and make tensors:
//! ```
//! use burn::prelude::Device;
//! use lastmile_datasets::{iris, stratified_split, SplitFractions, Standardizer};
//!
//! let ds = iris()?;
//! let labels = ds.labels().expect("iris has class labels");
//! let split = stratified_split(labels, 3, SplitFractions::new(0.6, 0.2, 0.2), 42)?;
//!
//! let mut train = ds.subset(&split.train)?;
//! let mut test = ds.subset(&split.test)?;
//! let scaler = Standardizer::fit(&train)?; // training rows only
//! scaler.transform(&mut train)?;
//! scaler.transform(&mut test)?;
//!
//! let device = Device::flex();
//! let x = train.features_tensor(&device);
//! let y = train.labels_tensor(&device)?;
//! assert_eq!(x.dims(), [90, 4]);
//! assert_eq!(y.dims(), [90]);
//! assert_eq!(test.n_samples(), 30);
//! # Ok::<(), lastmile_datasets::DatasetError>(())
//! ```

mod dataset;
mod error;
mod federation;
mod loaders;
mod partition;
mod sklearn;
mod split;
mod standardize;
mod text;

pub use dataset::{Dataset, Targets};
pub use error::{DatasetError, Location, Result};
pub use federation::{Federation, digits_federation};
pub use loaders::{breast_cancer, diabetes, digits, iris, wine};
pub use partition::dirichlet_partition;
pub use sklearn::{gunzip, parse_digits_csv, parse_sklearn_csv, parse_whitespace_regression};
pub use split::{Split, SplitFractions, split_counts, split_indices, stratified_split};
pub use standardize::Standardizer;
pub use text::{ByteTokenizer, TextCorpus, WindowBatch, WindowBatcher, rust_book};
