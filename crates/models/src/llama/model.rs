//! The Llama-family decoder: loading from GGUF or random initialisation,
//! and the cached forward pass over a ragged batch.

use std::path::Path;
use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};
use lastmile_core::CoreError;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::gguf::GgufFile;
use lastmile_core::lm::{LmError, check_keep, last_slots};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::block::{Block, BlockWeights, causal_mask, scaled};
use super::cache::{KvPrecision, LlamaCache, write};
use super::config::LlamaConfig;
use super::error::{LlamaError, LlamaResult};
use super::layer_input::LayerInput;
use super::load::Source;
use super::norm::RmsNorm;
use super::rope::Rope;
use super::storage::{Matrix, WeightStorage};

/// A Llama-family causal language model (the `llama` architecture of
/// llama.cpp: SmolLM2, TinyLlama, Llama 2/3 without RoPE scaling) with a KV
/// cache, computing in burn on any [`Device`].
///
/// See the [module documentation](super) for the layers and how each
/// matches llama.cpp.
#[derive(Debug, Clone)]
pub struct LlamaModel {
    pub(super) config: LlamaConfig,
    pub(super) storage: WeightStorage,
    /// `[vocab, d]`, rows looked up by token id.
    pub(super) embed: Tensor<2>,
    pub(super) blocks: Vec<Block>,
    pub(super) norm: RmsNorm,
    pub(super) head: Matrix,
    /// The tokens of `head`'s rows when it covers part of the vocabulary
    /// ([`super::vocab`]); `None`: one row per token.
    pub(super) head_tokens: Option<Arc<[usize]>>,
    pub(super) rope: Rope,
    pub(super) device: Device,
    /// How [`LlamaModel::new_cache`]'s caches keep keys and values.
    pub(super) kv: KvPrecision,
}

impl LlamaConfig {
    /// A model with this configuration and random weights drawn from a
    /// generator seeded with `seed` (matrices uniform in `±1/√in`, norm
    /// gains 1): identical on every device for a given seed. For tests
    /// and benchmarks of the computation, not a trained model.
    ///
    /// # Errors
    /// [`LlamaError::Config`] from [`LlamaConfig::check`].
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_models::llama::{LlamaConfig, WeightStorage};
    /// let model = LlamaConfig::tiny().init_random(7, WeightStorage::F32, &Device::flex())?;
    /// let mut cache = model.new_cache(1)?;
    /// let logits = model.forward_cached(&mut cache, &[vec![1, 2, 3]])?;
    /// assert_eq!(logits.dims(), [1, 3, 64]);
    /// # }
    /// # Ok::<(), lastmile_models::llama::LlamaError>(())
    /// ```
    pub fn init_random(
        &self,
        seed: u64,
        storage: WeightStorage,
        device: &Device,
    ) -> LlamaResult<LlamaModel> {
        LlamaModel::build(
            self.clone(),
            Source::Random(Box::new(StdRng::seed_from_u64(seed))),
            storage,
            device,
        )
    }
}

impl LlamaModel {
    /// Loads a `llama`- or `qwen2`-architecture GGUF checkpoint onto `device`: the
    /// configuration ([`LlamaConfig::from_gguf`]), then every weight,
    /// dequantised to `f32` on the host and stored as `storage`. A file
    /// without `output.weight` ties the output projection to
    /// `token_embd.weight`.
    ///
    /// # Errors
    /// As [`LlamaConfig::from_gguf`]; [`LlamaError::Gguf`] for a missing
    /// tensor, a read error or a type that cannot be dequantised;
    /// [`LlamaError::TensorShape`] for a tensor of an unexpected shape.
    ///
    /// ```no_run
    /// use burn::tensor::Device;
    /// use lastmile_core::gguf::GgufFile;
    /// use lastmile_models::llama::{LlamaModel, WeightStorage};
    /// let file = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    /// let model = LlamaModel::from_gguf(&file, WeightStorage::F32, &Device::flex())?;
    /// let mut cache = model.new_cache(1)?;
    /// let logits = model.forward_cached(&mut cache, &[vec![1, 9690, 198]])?; // [1, 3, 49152]
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_gguf(
        file: &GgufFile,
        storage: WeightStorage,
        device: &Device,
    ) -> LlamaResult<Self> {
        let config = LlamaConfig::from_gguf(file)?;
        Self::build(config, Source::Gguf(file), storage, device)
    }

    /// Opens the GGUF file at `path` and loads it as [`LlamaModel::from_gguf`].
    ///
    /// # Errors
    /// [`LlamaError::Gguf`] when the file cannot be opened or parsed; then
    /// as [`LlamaModel::from_gguf`].
    pub fn open(
        path: impl AsRef<Path>,
        storage: WeightStorage,
        device: &Device,
    ) -> LlamaResult<Self> {
        Self::from_gguf(&GgufFile::open(path)?, storage, device)
    }

    /// The tokens of the output head's rows when the head covers part of
    /// the vocabulary (a draft from [`super::LlamaModule::draft_with_vocab`]):
    /// every other token's logit is [`super::OUTSIDE_HEAD_LOGIT`]. `None`
    /// for a head over the whole vocabulary.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_models::llama::{LlamaConfig, WeightStorage};
    /// let m = LlamaConfig::tiny().init_random(1, WeightStorage::F32, &Device::flex())?;
    /// assert!(m.head_tokens().is_none());
    /// # }
    /// # Ok::<(), lastmile_models::llama::LlamaError>(())
    /// ```
    pub fn head_tokens(&self) -> Option<&[usize]> {
        self.head_tokens.as_deref()
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// How the weight matrices are stored.
    pub fn storage(&self) -> WeightStorage {
        self.storage
    }

    /// The device the model computes on.
    pub fn device(&self) -> Device {
        self.device.clone()
    }

    /// This model, with [`LlamaModel::new_cache`] keeping keys and values
    /// in `precision` (f32 unless set; see [`KvPrecision`]).
    ///
    /// # Errors
    /// [`LlamaError::Config`] for [`KvPrecision::F16`] with a storage that
    /// is not a host storage ([`WeightStorage::is_host`]): burn's attention
    /// keeps its cache in f32.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_models::llama::{KvPrecision, LlamaConfig, WeightStorage};
    /// let tensor_pass = LlamaConfig::tiny().init_random(1, WeightStorage::F32, &Device::flex())?;
    /// assert!(tensor_pass.with_kv_precision(KvPrecision::F16).is_err());
    /// # }
    /// # Ok::<(), lastmile_models::llama::LlamaError>(())
    /// ```
    pub fn with_kv_precision(mut self, precision: KvPrecision) -> LlamaResult<Self> {
        if precision == KvPrecision::F16 && !self.storage.is_host() {
            return Err(LlamaError::Config {
                field: "kv_precision",
                value: format!("{precision:?} with weight storage {:?}", self.storage),
                expected: "F32, or a host storage (Blocks, BlocksQ8, BlocksQ4) for F16".to_owned(),
            });
        }
        self.kv = precision;
        Ok(self)
    }

    /// How [`LlamaModel::new_cache`]'s caches keep keys and values.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_models::llama::{KvPrecision, LlamaConfig, WeightStorage};
    /// let m = LlamaConfig::tiny().init_random(1, WeightStorage::Blocks, &Device::flex())?;
    /// assert_eq!(m.kv_precision(), KvPrecision::F32); // the default
    /// # }
    /// # Ok::<(), lastmile_models::llama::LlamaError>(())
    /// ```
    pub fn kv_precision(&self) -> KvPrecision {
        self.kv
    }

    /// Bytes of the weight matrices (projections and output head) that one
    /// forward pass reads, whatever the number of tokens: the memory
    /// traffic that bounds decoding speed on a CPU.
    pub fn matrix_bytes(&self) -> usize {
        self.matrix_bytes_layers(self.blocks.len())
    }

    /// [`matrix_bytes`](Self::matrix_bytes) of the first `layers` blocks and the head.
    pub(crate) fn matrix_bytes_layers(&self, layers: usize) -> usize {
        self.head.bytes()
            + self
                .blocks
                .iter()
                .take(layers)
                .map(|b| {
                    [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down]
                        .iter()
                        .map(|m| m.bytes())
                        .sum::<usize>()
                })
                .sum::<usize>()
    }

    /// An empty cache for `batch` sequences.
    ///
    /// # Errors
    /// [`LmError::Batch`] (as [`LlamaError::Lm`]) for `batch = 0`.
    pub fn new_cache(&self, batch: usize) -> LlamaResult<LlamaCache> {
        if batch == 0 {
            return Err(LlamaError::Lm(LmError::Batch {
                what: "batch size".to_owned(),
                expected: "at least 1 row".to_owned(),
                found: 0,
            }));
        }
        Ok(LlamaCache::with_precision(
            batch,
            self.blocks.len(),
            self.kv,
        ))
    }

    /// Appends `tokens[b]` to row `b` of `cache` and returns the next-token
    /// logits at every new position, in one forward pass whatever the
    /// number of tokens; rows may receive different numbers of tokens (or
    /// none).
    ///
    /// # Shapes
    /// `tokens`: one list per cache row. Returns `[b, max(1, n_max), vocab]`;
    /// positions past a row's own count are padding.
    ///
    /// # Errors
    /// [`LmError::Batch`] when `tokens.len()` differs from the cache's rows,
    /// [`LmError::TokenOutOfRange`], [`LmError::ContextOverflow`] (each as
    /// [`LlamaError::Lm`]); nothing is cached on error.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_models::llama::{LlamaConfig, WeightStorage};
    /// let m = LlamaConfig::tiny().init_random(1, WeightStorage::F32, &Device::flex())?;
    /// let mut cache = m.new_cache(2)?;
    /// let out = m.forward_cached(&mut cache, &[vec![1, 2, 3], vec![4]])?;
    /// assert_eq!(out.dims(), [2, 3, 64]);
    /// assert_eq!((cache.len(0), cache.len(1)), (3, 1));
    /// assert!(m.forward_cached(&mut cache, &[vec![64], vec![]]).is_err()); // id ≥ vocab
    /// # }
    /// # Ok::<(), lastmile_models::llama::LlamaError>(())
    /// ```
    pub fn forward_cached(
        &self,
        cache: &mut LlamaCache,
        tokens: &[Vec<usize>],
    ) -> LlamaResult<Tensor<3>> {
        Ok(self
            .forward_layers(cache, tokens, self.blocks.len(), LayerInput::Embed, None)?
            .0)
    }

    /// [`forward_cached`](Self::forward_cached)'s logits at each row's last
    /// `keep` new positions only, `[b, keep, vocab]`
    /// ([`LanguageModel::forward_last`](lastmile_core::lm::LanguageModel::forward_last)'s
    /// layout): the output head runs on those positions alone, so a
    /// prompt's pass skips it for all but its last token (SmolLM2's head is
    /// a fifth of its weights).
    ///
    /// # Errors
    /// As [`forward_cached`](Self::forward_cached); [`LlamaError::Lm`] for
    /// `keep = 0`.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_core::convert::tensor_to_vec;
    /// use lastmile_models::llama::{LlamaConfig, WeightStorage};
    /// let m = LlamaConfig::tiny().init_random(1, WeightStorage::F32, &Device::flex())?;
    /// let (mut all, mut last) = (m.new_cache(1)?, m.new_cache(1)?);
    /// let every = tensor_to_vec(m.forward_cached(&mut all, &[vec![1, 2, 3]])?)?;
    /// let tail = m.forward_last(&mut last, &[vec![1, 2, 3]], 1)?;
    /// assert_eq!(tail.dims(), [1, 1, 64]);
    /// assert_eq!(tensor_to_vec(tail)?, every[2 * 64..]);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn forward_last(
        &self,
        cache: &mut LlamaCache,
        tokens: &[Vec<usize>],
        keep: usize,
    ) -> LlamaResult<Tensor<3>> {
        self.last_logits(cache, tokens, self.blocks.len(), keep)
    }

    /// [`forward_last`](Self::forward_last) through the first `layers` blocks.
    pub(crate) fn last_logits(
        &self,
        cache: &mut LlamaCache,
        tokens: &[Vec<usize>],
        layers: usize,
        keep: usize,
    ) -> LlamaResult<Tensor<3>> {
        check_keep(keep)?;
        Ok(self
            .forward_layers(cache, tokens, layers, LayerInput::Embed, Some(keep))?
            .0)
    }

    /// [`forward_cached`](Self::forward_cached), also returning the head's
    /// input at every new position, `[b, n, d_model]`: the last block's
    /// output after the final RMSNorm, the model's *feature* (what a
    /// feature-level draft such as [`super::LlamaFeatureDraft`] reads).
    ///
    /// # Errors
    /// As [`forward_cached`](Self::forward_cached).
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_models::llama::{LlamaConfig, WeightStorage};
    /// let m = LlamaConfig::tiny().init_random(1, WeightStorage::F32, &Device::flex())?;
    /// let mut cache = m.new_cache(1)?;
    /// let (logits, features) = m.forward_features(&mut cache, &[vec![1, 2, 3]])?;
    /// assert_eq!((logits.dims(), features.dims()), ([1, 3, 64], [1, 3, m.config().d_model]));
    /// # }
    /// # Ok::<(), lastmile_models::llama::LlamaError>(())
    /// ```
    pub fn forward_features(
        &self,
        cache: &mut LlamaCache,
        tokens: &[Vec<usize>],
    ) -> LlamaResult<(Tensor<3>, Tensor<3>)> {
        self.forward_layers(cache, tokens, self.blocks.len(), LayerInput::Embed, None)
    }

    /// [`forward_cached`](Self::forward_cached) through the first `layers`
    /// blocks only, then the final norm and the head (the early-exit view,
    /// [`super::LlamaEarlyExit`]). `cache` holds `layers` blocks. The
    /// blocks read `input` (see [`LayerInput`]); the tokens set the
    /// positions either way. Returns the logits (at every new position, or
    /// with `keep` at each row's last `keep` only, as
    /// [`forward_last`](Self::forward_last)) and the features (the head's
    /// input, at every new position).
    pub(crate) fn forward_layers(
        &self,
        cache: &mut LlamaCache,
        tokens: &[Vec<usize>],
        layers: usize,
        input: LayerInput<'_>,
        keep: Option<usize>,
    ) -> LlamaResult<(Tensor<3>, Tensor<3>)> {
        // A host storage's pass runs on one of rayon's workers with a team
        // of the others (`lastmile_core::panel::Team`), so that its ~150
        // products are not each injected from outside the pool, which
        // wakes a worker and parks the caller (measured: about 3 ms of a
        // 14 ms step on 2 cores).
        self.pass(cache, tokens, layers, input, keep)
    }

    fn pass(
        &self,
        cache: &mut LlamaCache,
        tokens: &[Vec<usize>],
        layers: usize,
        input: LayerInput<'_>,
        keep: Option<usize>,
    ) -> LlamaResult<(Tensor<3>, Tensor<3>)> {
        if layers == 0 || layers > self.blocks.len() || cache.keys.len() != layers {
            return Err(LlamaError::Config {
                field: "layers",
                value: format!("{layers} (cache of {} blocks)", cache.keys.len()),
                expected: format!(
                    "1..={} blocks, and a cache of as many blocks",
                    self.blocks.len()
                ),
            });
        }
        let b = cache.batch();
        if tokens.len() != b {
            return Err(LlamaError::Lm(LmError::Batch {
                what: "token lists".to_owned(),
                expected: format!("{b} (the cache's rows)"),
                found: tokens.len(),
            }));
        }
        let vocab = self.config.vocab_size;
        let max = self.config.max_context;
        for (row, t) in tokens.iter().enumerate() {
            if let Some((position, &token)) = t.iter().enumerate().find(|(_, t)| **t >= vocab) {
                return Err(LlamaError::Lm(LmError::TokenOutOfRange {
                    row,
                    position,
                    token,
                    vocab,
                }));
            }
            let needed = cache.lens[row] + t.len();
            if needed > max {
                return Err(LlamaError::Lm(LmError::ContextOverflow {
                    row,
                    needed,
                    max,
                }));
            }
        }
        let n = tokens.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let d = self.config.d_model;
        if let LayerInput::Fused { fc, features } = &input
            && (features.dims() != [b, n, d] || fc.shape() != (d, 2 * d))
        {
            return Err(LlamaError::Core(CoreError::ShapeMismatch {
                what: "fused input (features; fusion map out × in)".to_owned(),
                expected: format!(
                    "[{b}, {n}, {d}] (rows, longest list, d_model); [{d}, {}]",
                    2 * d
                ),
                found: [features.dims().as_slice(), &[fc.shape().0, fc.shape().1]].concat(),
            }));
        }
        let offsets = cache.lens.clone();
        let total = offsets.iter().map(|o| o + n).max().unwrap_or(n);
        let mut ids = vec![0i64; b * n];
        let mut pos = vec![0i64; b * n];
        for row in 0..b {
            for i in 0..n {
                ids[row * n + i] = tokens[row].get(i).copied().unwrap_or(0) as i64;
                // Padding positions may pass the context; their outputs are never read.
                pos[row * n + i] = (offsets[row] + i).min(max - 1) as i64;
            }
        }
        let device = &self.device;
        // The rows the head runs on: every new position, or each row's last `keep`.
        let head_rows = keep.map(|k| last_slots(tokens, n, k));
        let out = keep.unwrap_or(n);
        if self.storage.is_host() {
            let batch = super::host::HostBatch {
                ids: &ids,
                rope: &self.rope.at_host(&pos),
                offsets: &offsets,
                n,
            };
            let input = match input {
                LayerInput::Embed => None,
                LayerInput::Fused { fc, features } => Some(super::host::Fusion {
                    fc: fc.as_host().ok_or_else(|| LlamaError::Storage {
                        storage: "a device storage".to_owned(),
                        device: "the host pass (the fusion map of a host storage's draft)"
                            .to_owned(),
                    })?,
                    features: tensor_to_vec(features)?,
                }),
            };
            let (mut logits, features) = super::host::pass(
                self,
                &mut cache.host,
                &batch,
                (layers, head_rows.as_deref()),
                input,
            )?;
            for (len, t) in cache.lens.iter_mut().zip(tokens) {
                *len += t.len();
            }
            if let Some(ids) = &self.head_tokens {
                logits = super::vocab::expand_host(&logits, ids, vocab);
            }
            return Ok((
                Tensor::from_data(TensorData::new(logits, [b, out, vocab]), device),
                Tensor::from_data(TensorData::new(features, [b, n, d]), device),
            ));
        }
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [b * n]), device);
        let heads = self.config.heads();
        let scales = self.config.scales;
        let mask = causal_mask(&offsets, n, total, heads, device);
        let rope = self.rope.at(&pos, b, n, device);
        let embedded = scaled(self.embed.clone().select(0, ids), scales.embedding);
        let mut x = match input {
            LayerInput::Fused { fc, features } => {
                let fused = Tensor::cat(vec![embedded, features.reshape([b * n, d])], 1);
                fc.forward(fused.reshape([b, n, 2 * d]))?
            }
            LayerInput::Embed => embedded.reshape([b, n, d]),
        };
        for (layer, block) in self.blocks.iter().take(layers).enumerate() {
            let rotates = self.config.rotates(layer).then_some(&rope);
            let (q, k, v) = block.qkv(x.clone(), heads, rotates)?;
            let keys = write(cache.keys[layer].take(), k, &offsets, total, max);
            let values = write(cache.values[layer].take(), v, &offsets, total, max);
            let dh = heads.head_dim;
            let kv = heads.n_kv_heads;
            let k_all = keys.clone().slice([0..b, 0..kv, 0..total, 0..dh]);
            let v_all = values.clone().slice([0..b, 0..kv, 0..total, 0..dh]);
            cache.keys[layer] = Some(keys);
            cache.values[layer] = Some(values);
            x = block.finish(x, q, (k_all, v_all), mask.clone(), heads, scales.residual)?;
        }
        for (len, t) in cache.lens.iter_mut().zip(tokens) {
            *len += t.len();
        }
        let features = self.norm.forward(x);
        let head_in = match head_rows {
            Some(rows) => {
                let rows: Vec<i64> = rows.into_iter().map(|r| r as i64).collect();
                let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [b * out]), device);
                features
                    .clone()
                    .reshape([b * n, d])
                    .select(0, rows)
                    .reshape([b, out, d])
            }
            None => features.clone(),
        };
        let logits = scaled(self.head.forward(head_in)?, 1.0 / scales.logit);
        let logits = match &self.head_tokens {
            Some(ids) => super::vocab::expand(logits, ids, vocab),
            None => logits,
        };
        Ok((logits, features))
    }
}
