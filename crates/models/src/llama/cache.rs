//! The key/value cache of the Llama model: per layer, the rotated keys and
//! the values of every cached position, for a ragged batch.

use burn::tensor::Tensor;
use lastmile_core::lm::LmError;

use super::error::{LlamaError, LlamaResult};

/// Positions reserved at a time when a layer's cache grows (so decoding
/// does not re-allocate at every step, and a long context costs memory only
/// when used).
pub const CACHE_CHUNK: usize = 256;

/// Keys and values of every layer for a batch of sequences of different lengths.
///
/// Row `b` holds `len(b)` valid positions; entries past that are stale and
/// masked out, so [`truncate`](LlamaCache::truncate) (rollback) is free.
/// Keys are stored after RoPE and hold the `n_kv_heads` key/value heads
/// only (grouped-query attention shares them between query heads).
///
/// ```
/// use lastmile_models::llama::LlamaCache;
/// let mut c = LlamaCache::new(2, 30);
/// assert_eq!((c.batch(), c.len(1)), (2, 0));
/// c.truncate(1, 0)?;
/// assert!(c.truncate(2, 0).is_err());
/// # Ok::<(), lastmile_models::llama::LlamaError>(())
/// ```
#[derive(Clone, Debug)]
pub struct LlamaCache {
    /// Per layer, `[b, n_kv_heads, capacity, head_dim]`.
    pub(crate) keys: Vec<Option<Tensor<4>>>,
    /// Per layer, `[b, n_kv_heads, capacity, head_dim]`.
    pub(crate) values: Vec<Option<Tensor<4>>>,
    pub(crate) lens: Vec<usize>,
    /// The host storages' cache ([`super::host`]): per layer, per row,
    /// `[position][n_kv_heads · head_dim]` keys and values in host memory.
    pub(crate) host: Vec<HostKv>,
}

/// How the host storages ([`super::WeightStorage::is_host`]) keep the
/// cached keys and values.
///
/// A decoding step reads every cached key and value of every layer; past a
/// few hundred positions that is a large part of its bytes (on SmolLM2,
/// 30 layers × 384 keys and values × 4 bytes = 92 KB per position in f32).
/// `F16` halves them, as llama.cpp's default cache type does: each key
/// and value is rounded to the nearest f16 when written (relative error
/// ≤ 2⁻¹¹; beyond ±65 504 it becomes ±∞, as in llama.cpp) and widened
/// exactly when read, so attention still sums in f32 and a token's logits
/// still do not depend on how the tokens were split into passes.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_models::llama::{KvPrecision, LlamaConfig, WeightStorage};
/// let model = LlamaConfig::tiny()
///     .init_random(1, WeightStorage::Blocks, &Device::flex())?
///     .with_kv_precision(KvPrecision::F16)?;
/// assert_eq!(model.kv_precision(), KvPrecision::F16);
/// let mut cache = model.new_cache(1)?;
/// let logits = model.forward_cached(&mut cache, &[vec![1, 2, 3]])?;
/// assert_eq!(logits.dims(), [1, 3, 64]);
/// # }
/// # Ok::<(), lastmile_models::llama::LlamaError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvPrecision {
    /// f32, 4 bytes a value (every storage).
    #[default]
    F32,
    /// f16, 2 bytes a value (host storages only).
    F16,
}

/// One layer's keys and values in host memory, per batch row, in
/// `f32` or f16 bits ([`KvPrecision`]).
#[derive(Clone, Debug)]
pub(crate) enum HostKv {
    F32(KvRows<f32>),
    F16(KvRows<u16>),
}

/// The keys and values of one layer per (batch row, key/value head), at
/// index `row · n_kv_heads + head` (layouts in [`super::host_attention`];
/// empty until the first pass writes them).
#[derive(Clone, Debug)]
pub(crate) struct KvRows<E> {
    pub(crate) keys: Vec<Vec<E>>,
    pub(crate) values: Vec<Vec<E>>,
}

impl<E> Default for KvRows<E> {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl HostKv {
    /// An empty layer in `precision`.
    fn new(precision: KvPrecision) -> Self {
        match precision {
            KvPrecision::F32 => Self::F32(KvRows::default()),
            KvPrecision::F16 => Self::F16(KvRows::default()),
        }
    }
}

impl LlamaCache {
    /// An empty cache for `batch` rows of a model with `n_layers` blocks
    /// (keys and values in f32; [`super::LlamaModel::new_cache`] gives one in
    /// the model's [`KvPrecision`]).
    pub fn new(batch: usize, n_layers: usize) -> Self {
        Self::with_precision(batch, n_layers, KvPrecision::F32)
    }

    /// [`LlamaCache::new`] keeping the host storages' keys and values in `precision`.
    pub(crate) fn with_precision(batch: usize, n_layers: usize, precision: KvPrecision) -> Self {
        Self {
            keys: vec![None; n_layers],
            values: vec![None; n_layers],
            lens: vec![0; batch],
            host: vec![HostKv::new(precision); n_layers],
        }
    }

    /// Number of rows.
    pub fn batch(&self) -> usize {
        self.lens.len()
    }

    /// Valid positions of `row` (0 for an unknown row).
    pub fn len(&self, row: usize) -> usize {
        self.lens.get(row).copied().unwrap_or(0)
    }

    /// Whether every row is empty.
    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|l| *l == 0)
    }

    /// Keeps only the first `len` positions of `row` (no-op if it is shorter).
    ///
    /// # Errors
    /// [`LmError::Batch`] (as [`LlamaError::Lm`]) for a row out of range.
    pub fn truncate(&mut self, row: usize, len: usize) -> LlamaResult<()> {
        let n = self.lens.len();
        let slot = self.lens.get_mut(row).ok_or_else(|| {
            LlamaError::Lm(LmError::Batch {
                what: "row index".to_owned(),
                expected: format!("< {n} (the cache's rows)"),
                found: row,
            })
        })?;
        *slot = (*slot).min(len);
        Ok(())
    }
}

/// Writes `new` `[b, h, n, dh]` at each row's offset into `cache`, growing
/// it (by whole [`CACHE_CHUNK`]s, at most to `max_context`) to hold `total`
/// positions. Returns the cache.
pub(crate) fn write(
    cache: Option<Tensor<4>>,
    new: Tensor<4>,
    offsets: &[usize],
    total: usize,
    max_context: usize,
) -> Tensor<4> {
    let [b, h, n, dh] = new.dims();
    let device = new.device();
    let grown = total.div_ceil(CACHE_CHUNK) * CACHE_CHUNK;
    let capacity = grown.min(max_context).max(total);
    let mut cache = match cache {
        Some(c) if c.dims()[2] >= total => c,
        Some(c) => {
            let have = c.dims()[2];
            Tensor::cat(
                vec![c, Tensor::zeros([b, h, capacity - have, dh], &device)],
                2,
            )
        }
        None => Tensor::zeros([b, h, capacity, dh], &device),
    };
    if offsets.iter().all(|o| *o == offsets[0]) {
        let o = offsets[0];
        return cache.slice_assign([0..b, 0..h, o..o + n, 0..dh], new);
    }
    for (row, &o) in offsets.iter().enumerate() {
        let part = new.clone().slice([row..row + 1, 0..h, 0..n, 0..dh]);
        cache = cache.slice_assign([row..row + 1, 0..h, o..o + n, 0..dh], part);
    }
    cache
}
