//! Incremental decoding: a per-layer key/value cache over a ragged batch.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use lastmile_core::lm::{LmError, LmResult};

use crate::error::{ModelError, Result};
use crate::transformer::{BlockPanels, Panels, Transformer};

/// Keys and values of every layer for a batch of sequences of different lengths.
///
/// Row `b` holds `len(b)` valid positions; entries past that are stale and
/// masked out, so [`truncate`](KvCache::truncate) (rollback) is free.
#[derive(Clone, Debug)]
pub struct KvCache {
    keys: Vec<Option<Tensor<4>>>,
    values: Vec<Option<Tensor<4>>>,
    lens: Vec<usize>,
}

impl KvCache {
    /// An empty cache for `batch` rows of a model with `n_layers` blocks.
    ///
    /// ```
    /// let c = lastmile_models::KvCache::new(2, 3);
    /// assert_eq!((c.batch(), c.len(1)), (2, 0));
    /// ```
    pub fn new(batch: usize, n_layers: usize) -> Self {
        Self {
            keys: vec![None; n_layers],
            values: vec![None; n_layers],
            lens: vec![0; batch],
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

    /// Keeps only the first `len` positions of `row`.
    ///
    /// # Errors
    /// [`LmError::Batch`] for a row out of range.
    pub fn truncate(&mut self, row: usize, len: usize) -> Result<()> {
        let n = self.lens.len();
        let slot = self.lens.get_mut(row).ok_or_else(|| {
            ModelError::Lm(LmError::Batch {
                what: "row index".to_owned(),
                expected: format!("< {n} (the cache's rows)"),
                found: row,
            })
        })?;
        *slot = (*slot).min(len);
        Ok(())
    }
}

impl KvCache {
    /// [`new`](Self::new) behind the [`LanguageModel`](lastmile_core::lm::LanguageModel)
    /// interface, where an empty batch is a caller's mistake.
    ///
    /// # Errors
    /// [`LmError::Batch`] for `batch = 0`.
    pub(crate) fn for_rows(batch: usize, n_layers: usize) -> LmResult<Self> {
        if batch == 0 {
            return Err(LmError::Batch {
                what: "batch size".to_owned(),
                expected: "at least 1 row".to_owned(),
                found: 0,
            });
        }
        Ok(Self::new(batch, n_layers))
    }

    /// Checks that `tokens` (one list per row) can be appended and builds
    /// the step's inputs: token ids and positions `[B, n]` (`n` the longest
    /// list, at least 1; shorter rows are padded with token 0) and the
    /// attention mask `[B, heads, n, total]` over the cached and new
    /// positions (key `j` visible to new token `i` of row `r` iff
    /// `j ≤ len(r) + i`).
    ///
    /// # Errors
    /// [`LmError::Batch`] when `tokens.len()` differs from the batch,
    /// [`LmError::TokenOutOfRange`], [`LmError::ContextOverflow`].
    pub(crate) fn begin(
        &self,
        tokens: &[Vec<usize>],
        vocab: usize,
        max_len: usize,
        heads: usize,
        device: &Device,
    ) -> LmResult<Step> {
        let b = self.batch();
        if tokens.len() != b {
            return Err(LmError::Batch {
                what: "token lists".to_owned(),
                expected: format!("{b} (the cache's rows)"),
                found: tokens.len(),
            });
        }
        for (row, t) in tokens.iter().enumerate() {
            if let Some((position, &token)) = t.iter().enumerate().find(|(_, t)| **t >= vocab) {
                return Err(LmError::TokenOutOfRange {
                    row,
                    position,
                    token,
                    vocab,
                });
            }
            let needed = self.lens[row] + t.len();
            if needed > max_len {
                return Err(LmError::ContextOverflow {
                    row,
                    needed,
                    max: max_len,
                });
            }
        }
        let n = tokens.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let offsets = self.lens.clone();
        let total = offsets.iter().map(|o| o + n).max().unwrap_or(n);
        let mut ids = vec![0i64; b * n];
        let mut pos = vec![0i64; b * n];
        let mut real = Vec::new();
        for row in 0..b {
            for i in 0..n {
                ids[row * n + i] = tokens[row].get(i).copied().unwrap_or(0) as i64;
                pos[row * n + i] = (offsets[row] + i).min(max_len - 1) as i64;
                if i < tokens[row].len() {
                    real.push((row * n + i) as i64);
                }
            }
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, n]), device);
        let pos = Tensor::<2, Int>::from_data(TensorData::new(pos, [b, n]), device);
        let mask: Vec<bool> = (0..b * n * total)
            .map(|k| {
                let (row, rest) = (k / (n * total), k % (n * total));
                rest % total > offsets[row] + rest / total
            })
            .collect();
        let mask = Tensor::<4, Bool>::from_data(TensorData::new(mask, [b, 1, n, total]), device)
            .expand([b, heads, n, total]);
        Ok(Step {
            ids,
            pos,
            mask,
            real,
            offsets,
            total,
            capacity: max_len,
        })
    }

    /// Writes layer `layer`'s new keys and values `[B, H, n, dh]` at each
    /// row's offset and returns the keys and values of every position of the
    /// step, `[B, H, total, dh]`.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        (k, v): (Tensor<4>, Tensor<4>),
        step: &Step,
    ) -> (Tensor<4>, Tensor<4>) {
        let (offsets, total, capacity) = (&step.offsets, step.total, step.capacity);
        let keys = write(self.keys[layer].take(), k, offsets, total, capacity);
        let values = write(self.values[layer].take(), v, offsets, total, capacity);
        let [b, heads, _, dh] = keys.dims();
        let k_all = keys.clone().slice([0..b, 0..heads, 0..total, 0..dh]);
        let v_all = values.clone().slice([0..b, 0..heads, 0..total, 0..dh]);
        self.keys[layer] = Some(keys);
        self.values[layer] = Some(values);
        (k_all, v_all)
    }

    /// Ends a step begun by [`begin`](Self::begin): each row's length grows
    /// by its token count.
    pub(crate) fn commit(&mut self, tokens: &[Vec<usize>]) {
        for (len, t) in self.lens.iter_mut().zip(tokens) {
            *len += t.len();
        }
    }
}

/// The inputs of one cached step, from [`KvCache::begin`].
#[derive(Debug)]
pub(crate) struct Step {
    /// Token ids `[B, n]` (padding: 0).
    pub(crate) ids: Tensor<2, Int>,
    /// Positions `[B, n]`.
    pub(crate) pos: Tensor<2, Int>,
    /// `true` where a key is hidden, `[B, heads, n, total]`.
    pub(crate) mask: Tensor<4, Bool>,
    /// Flat indices `row·n + i` of the real (not padding) positions.
    pub(crate) real: Vec<i64>,
    offsets: Vec<usize>,
    total: usize,
    capacity: usize,
}

/// Writes `new` `[B, H, n, dh]` at each row's offset into `cache`, growing it to hold `total` positions.
fn write(
    cache: Option<Tensor<4>>,
    new: Tensor<4>,
    offsets: &[usize],
    total: usize,
    capacity: usize,
) -> Tensor<4> {
    let [b, h, n, dh] = new.dims();
    let device = new.device();
    let mut cache = match cache {
        Some(c) if c.dims()[2] >= total => c,
        Some(c) => {
            let have = c.dims()[2];
            Tensor::cat(
                vec![
                    c,
                    Tensor::zeros([b, h, capacity.max(total) - have, dh], &device),
                ],
                2,
            )
        }
        // Reserve the whole context at once so decoding does not re-allocate every step.
        None => Tensor::zeros([b, h, capacity.max(total), dh], &device),
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

impl Transformer {
    /// An empty cache for `batch` sequences.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        KvCache::new(batch, self.blocks.len())
    }

    /// Appends `tokens[b]` to row `b` of `cache` and returns logits at the new positions.
    ///
    /// One forward pass whatever the number of tokens; rows may receive
    /// different numbers of tokens (none at all, too). Equal to the
    /// corresponding positions of [`forward`](Transformer::forward) over the
    /// whole sequence.
    ///
    /// # Shapes
    /// Returns `[B, max(1, n_max), vocab]`; positions past a row's own count are padding.
    ///
    /// # Errors
    /// [`LmError::Batch`] when `tokens.len()` differs from the cache's batch,
    /// [`LmError::TokenOutOfRange`], [`LmError::ContextOverflow`].
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// let d = Device::flex();
    /// let m = lastmile_models::TransformerConfig::byte_level(16, 1, 2, 8).init(&d).unwrap();
    /// let mut cache = m.new_cache(2);
    /// let out = m.forward_cached(&mut cache, &[vec![1, 2, 3], vec![4]]).unwrap();
    /// assert_eq!(out.dims(), [2, 3, 256]);
    /// assert_eq!((cache.len(0), cache.len(1)), (3, 1));
    /// # }
    /// ```
    pub fn forward_cached(&self, cache: &mut KvCache, tokens: &[Vec<usize>]) -> Result<Tensor<3>> {
        self.forward_cached_with(cache, tokens, None)
    }

    /// [`forward_cached`](Transformer::forward_cached) computing the linear
    /// layers from `panels` (those of every block, then the head's) when given.
    pub(crate) fn forward_cached_with(
        &self,
        cache: &mut KvCache,
        tokens: &[Vec<usize>],
        panels: Option<(&[BlockPanels], &Panels)>,
    ) -> Result<Tensor<3>> {
        let device = self.head.weight.device();
        let step = cache.begin(tokens, self.vocab, self.max_len, self.n_heads, &device)?;
        let mut x =
            self.tokens.forward(step.ids.clone()) + self.positions.forward(step.pos.clone());
        for (layer, block) in self.blocks.iter().enumerate() {
            let bp = panels.and_then(|(p, _)| p.get(layer));
            let (q, k, v) = block.qkv(block.norm1.forward(x.clone()), self.n_heads, bp);
            let (k_all, v_all) = cache.append(layer, (k, v), &step);
            x = block.finish(x, (q, k_all, v_all), step.mask.clone(), bp, true);
        }
        cache.commit(tokens);
        let h = self.norm.forward(x);
        Ok(match panels {
            Some((_, head)) => head.forward(h),
            None => self.head.forward(h),
        })
    }
}
