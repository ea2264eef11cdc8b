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

/// One layer's keys and values in host memory, per batch row.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostKv {
    pub(crate) keys: Vec<Vec<f32>>,
    pub(crate) values: Vec<Vec<f32>>,
}

impl LlamaCache {
    /// An empty cache for `batch` rows of a model with `n_layers` blocks.
    pub fn new(batch: usize, n_layers: usize) -> Self {
        Self {
            keys: vec![None; n_layers],
            values: vec![None; n_layers],
            lens: vec![0; batch],
            host: vec![
                HostKv {
                    keys: vec![Vec::new(); batch],
                    values: vec![Vec::new(); batch],
                };
                n_layers
            ],
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
