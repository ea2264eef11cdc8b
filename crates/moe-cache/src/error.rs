//! The error type of `lastmile-moe-cache`.

use lastmile_core::CoreError;
use thiserror::Error;

/// Errors returned by the expert store, caches, policies, routing rules,
/// traces and MoE layers of this crate.
///
/// Checks shared with the rest of lastmile (parameter ranges, lengths, finite
/// values, I/O) arrive as [`MoeCacheError::Core`]; the other variants are
/// specific to expert caching. Every message says what was wrong and what was
/// expected.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MoeCacheError {
    /// A lower-level check failed (parameter range, length, non-finite value, I/O, ...).
    #[error(transparent)]
    Core(#[from] CoreError),

    /// More experts per token were asked for than a layer has.
    #[error(
        "k = {k} experts per token but the layer has only {experts}; expected 1 <= k <= {experts}"
    )]
    KAboveExperts {
        /// Experts chosen per token.
        k: usize,
        /// Experts in the layer.
        experts: usize,
    },

    /// A cache budget holds no expert at all.
    #[error(
        "the cache budget of {} holds 0 experts of {expert_bytes} bytes; expected room for at least k",
        layer_name(*layer)
    )]
    ZeroCapacity {
        /// The layer (`None` for a global budget).
        layer: Option<usize>,
        /// Bytes of one expert of that layer.
        expert_bytes: u64,
    },

    /// A cache budget holds fewer experts than one token needs.
    #[error(
        "the cache budget of {} holds {capacity} expert(s) but a token needs k = {k}; expected capacity >= k",
        layer_name(*layer)
    )]
    CapacityBelowK {
        /// The layer (`None` for a global budget).
        layer: Option<usize>,
        /// Experts that fit in the budget.
        capacity: usize,
        /// Experts per token.
        k: usize,
    },

    /// One step (several tokens, or pinned experts plus new ones) needs more
    /// experts resident at once than the budget holds. Nothing was changed.
    #[error(
        "layer {layer}: the step needs {needed_bytes} bytes of experts resident at once but the budget holds {budget_bytes}; split the step or raise the budget"
    )]
    StepExceedsCapacity {
        /// The layer of the step.
        layer: usize,
        /// Bytes that must be resident together (pinned plus requested).
        needed_bytes: u64,
        /// Bytes of the budget that serves the layer.
        budget_bytes: u64,
    },

    /// A layer index was out of range.
    #[error("layer {layer} is out of range; expected a layer < {layers}")]
    LayerOutOfRange {
        /// The offending layer.
        layer: usize,
        /// Number of layers.
        layers: usize,
    },

    /// An expert index was out of range.
    #[error("layer {layer}: expert {expert} is out of range; expected an expert < {experts}")]
    ExpertOutOfRange {
        /// The layer.
        layer: usize,
        /// The offending expert.
        expert: usize,
        /// Experts in the layer.
        experts: usize,
    },

    /// The same expert appeared twice where distinct experts are required.
    #[error("layer {layer}: expert {expert} appears twice; expected distinct experts")]
    DuplicateExpert {
        /// The layer.
        layer: usize,
        /// The repeated expert.
        expert: usize,
    },

    /// An expert's tensors do not have the shapes its layer declares.
    #[error(
        "layer {layer}, expert {expert}: tensor `{tensor}` has shape {found:?}; expected {expected:?} (all experts of a layer share one shape)"
    )]
    ExpertShapeMismatch {
        /// The layer.
        layer: usize,
        /// The expert.
        expert: usize,
        /// The tensor's name.
        tensor: String,
        /// The layer's shape for that tensor.
        expected: Vec<usize>,
        /// The shape supplied.
        found: Vec<usize>,
    },

    /// An expert store was finished before every expert had been written.
    #[error(
        "layer {layer}, expert {expert} was never written; expected every expert of every layer"
    )]
    MissingExpert {
        /// The layer.
        layer: usize,
        /// The expert.
        expert: usize,
    },

    /// A file did not start with the expected magic bytes.
    #[error("{what}: bad magic {found:?}; expected {expected:?}")]
    BadMagic {
        /// Which kind of file (`"expert store"`, `"trace"`).
        what: &'static str,
        /// The bytes found.
        found: Vec<u8>,
        /// The bytes expected.
        expected: Vec<u8>,
    },

    /// A file's format version is not one this build reads.
    #[error("{what}: format version {found} is not supported; expected version {supported}")]
    UnsupportedVersion {
        /// Which kind of file.
        what: &'static str,
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },

    /// A file is shorter (or longer) than its own header says.
    #[error(
        "{what}: {found} bytes, but its header implies {expected}; the file is truncated or padded"
    )]
    Truncated {
        /// Which kind of file.
        what: &'static str,
        /// Bytes the header implies.
        expected: u64,
        /// Bytes present.
        found: u64,
    },

    /// A checksum did not match the data it covers.
    #[error(
        "{what}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x}); the data is corrupt"
    )]
    ChecksumMismatch {
        /// What the checksum covers.
        what: String,
        /// The checksum in the file.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },

    /// A file is structurally invalid (lying counts, offsets, sizes, ids, ...).
    #[error("{what} is corrupt: {reason}")]
    CorruptFile {
        /// Which kind of file.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A file is larger than the caller's limit; it was not read.
    #[error("{what} is {size} bytes, over the {limit}-byte limit")]
    FileTooLarge {
        /// Which kind of file.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// Dropping the page cache for a file region is not possible on this platform.
    #[error(
        "dropping the page cache (posix_fadvise DONTNEED) is not supported on this platform; open the store with PageCache::Keep"
    )]
    PageCacheUnsupported,

    /// A routing rule that re-ranks experts needs router logits the trace does not hold.
    #[error(
        "routing rule `{rule}` needs router logits but the trace stores none; record logits or replay the recorded experts"
    )]
    TraceWithoutLogits {
        /// The rule's name.
        rule: &'static str,
    },

    /// Belady/OPT needs the future accesses, which a cache-dependent routing rule makes unknowable.
    #[error(
        "Belady/OPT needs a fixed access sequence, but routing rule `{rule}` depends on the cache's contents; use recorded or top-k routing"
    )]
    OracleNeedsFixedRouting {
        /// The rule's name.
        rule: &'static str,
    },

    /// Belady/OPT was built without the future access sequence it needs.
    #[error(
        "Belady/OPT needs the future access sequence of every cache partition; build it through replay or ExpertCache::with_policies"
    )]
    OracleNeedsFuture,

    /// The accesses served by Belady/OPT departed from the future it was given.
    #[error(
        "Belady/OPT was told access {position} would be id {expected} but saw id {found}; its future sequence does not match the accesses"
    )]
    OracleMismatch {
        /// Index of the access in the partition's sequence.
        position: usize,
        /// The id the future sequence holds there (`usize::MAX` past its end).
        expected: usize,
        /// The id actually accessed.
        found: usize,
    },

    /// A total budget cannot give every layer its minimum of k experts.
    #[error(
        "a total budget of {budget} bytes cannot hold k experts in every layer, which needs {needed} bytes"
    )]
    BudgetTooSmall {
        /// The budget.
        budget: u64,
        /// The minimum the layers need.
        needed: u64,
    },

    /// An MoE layer's dimensions do not match the store it loads experts from.
    #[error("layer {layer}: {reason}")]
    LayerMismatch {
        /// The layer.
        layer: usize,
        /// What does not match.
        reason: String,
    },
}

fn layer_name(layer: Option<usize>) -> String {
    match layer {
        Some(l) => format!("layer {l}"),
        None => "the global pool".to_owned(),
    }
}

/// Result alias of this crate.
pub type Result<T, E = MoeCacheError> = std::result::Result<T, E>;

impl MoeCacheError {
    /// Shorthand for an out-of-range parameter, reported through [`CoreError::OutOfRange`].
    pub(crate) fn param(name: &str, value: f64, expected: &str) -> Self {
        Self::Core(CoreError::out_of_range(name, value, expected))
    }

    /// Shorthand for an I/O error on `path`, reported through [`CoreError::Io`].
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Core(CoreError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}
