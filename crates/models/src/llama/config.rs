//! The architecture hyper-parameters of a Llama-family model, read from GGUF
//! metadata and validated once.

use lastmile_core::gguf::{GgufFile, Metadata, MetadataValue};

use super::arch::Architecture;
use super::block::Heads;
use super::error::{LlamaError, LlamaResult};
use super::rope::RopeScaling;
use super::scales::Scales;

/// The largest value accepted for a width, a head count or a vocabulary
/// (guards allocation on hostile metadata before any weight is read).
pub const MAX_DIM: usize = 1 << 20;

/// The largest number of blocks accepted.
pub const MAX_LAYERS: usize = 1 << 12;

/// Hyper-parameters of a Llama-family decoder (the `llama` architecture of
/// llama.cpp): RMSNorm, rotary positions, grouped-query attention and a
/// SwiGLU feed-forward network in each block.
///
/// Build it with [`LlamaConfig::from_gguf`] for a checkpoint, or set the
/// fields for a randomly initialised model ([`LlamaConfig::init_random`]);
/// [`LlamaConfig::check`] validates either.
///
/// ```
/// use lastmile_models::llama::LlamaConfig;
/// let c = LlamaConfig::tiny();
/// c.check()?;
/// assert_eq!(c.head_dim() * c.n_heads, c.d_model);
/// assert_eq!(c.n_heads % c.n_kv_heads, 0);
/// # Ok::<(), lastmile_models::llama::LlamaError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Number of token ids (`llama.vocab_size`, else the tokenizer's token count).
    pub vocab_size: usize,
    /// Residual width (`llama.embedding_length`).
    pub d_model: usize,
    /// Number of blocks (`llama.block_count`).
    pub n_layers: usize,
    /// Query heads (`llama.attention.head_count`).
    pub n_heads: usize,
    /// Key/value heads (`llama.attention.head_count_kv`; equal to `n_heads` when absent).
    pub n_kv_heads: usize,
    /// Width of one attention head where the file sets it
    /// (`llama.attention.key_length`, e.g. Qwen3-0.6B's 128 at width 1024
    /// with 16 heads); `None`: `d_model / n_heads`.
    pub head_width: Option<usize>,
    /// Whether each head's queries and keys are RMS-normalised (a gain of
    /// `head_dim` each) before the rotary positions: Qwen3's
    /// `attn_q_norm` / `attn_k_norm` (set for the `qwen3` architecture).
    pub head_norms: bool,
    /// Blocks that attend without rotary positions ("NoPE"): every `n`-th
    /// block (blocks `n − 1`, `2n − 1`, …), SmolLM3's `n = 4` (set for the
    /// `smollm3` architecture, as llama.cpp fixes it); `None`: every block
    /// rotates. See [`LlamaConfig::rotates`].
    pub nope_every: Option<usize>,
    /// Hidden width of the SwiGLU network (`llama.feed_forward_length`).
    pub d_ff: usize,
    /// RoPE base θ (`llama.rope.freq_base`; 10 000 when absent, as in llama.cpp).
    pub rope_base: f32,
    /// Per-pair RoPE frequency divisors (the `rope_freqs.weight` tensor of
    /// Llama 3.1 and later, which bakes their "llama3" scaling into
    /// factors): pair `i` turns by `p · θ^(−2i/d) / f_i`. Empty when the
    /// file has none (every `f_i = 1`); else one per pair of a head.
    pub rope_freq_factors: Vec<f32>,
    /// How the rotary angles are scaled for a context longer than the
    /// model was trained on (`rope.scaling.*`; see [`RopeScaling`]).
    pub rope_scaling: RopeScaling,
    /// RMSNorm ε (`llama.attention.layer_norm_rms_epsilon`).
    pub rms_eps: f32,
    /// Longest sequence the model attends over (`llama.context_length`).
    pub max_context: usize,
    /// Whether the output projection is the token embedding (no `output.weight`).
    pub tied_embeddings: bool,
    /// Factors on the embeddings, the residual branches, the attention's
    /// scores and the logits (Granite's; [`Scales::default`] elsewhere).
    pub scales: Scales,
}

impl LlamaConfig {
    /// A tiny configuration for tests: 2 blocks, width 32, 4 query / 2 KV
    /// heads, SwiGLU 48, vocabulary 64, context 64, tied embeddings.
    pub fn tiny() -> Self {
        Self {
            vocab_size: 64,
            d_model: 32,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            head_width: None,
            head_norms: false,
            nope_every: None,
            d_ff: 48,
            rope_base: 10_000.0,
            rope_freq_factors: Vec::new(),
            rope_scaling: RopeScaling::None,
            rms_eps: 1e-5,
            max_context: 64,
            tied_embeddings: true,
            scales: Scales::default(),
        }
    }

    /// The factor on the attention's scores: [`Scales::attention`], else
    /// `1/√d_head`.
    ///
    /// ```
    /// use lastmile_models::llama::{LlamaConfig, Scales};
    /// let c = LlamaConfig { head_width: Some(16), ..LlamaConfig::tiny() };
    /// assert_eq!(c.attention_scale(), 0.25);
    /// let mu_p = Scales { attention: Some(1.0 / 16.0), ..Scales::default() };
    /// assert_eq!(LlamaConfig { scales: mu_p, ..c }.attention_scale(), 0.0625);
    /// ```
    pub fn attention_scale(&self) -> f32 {
        self.scales
            .attention
            .unwrap_or_else(|| 1.0 / (self.head_dim() as f32).sqrt())
    }

    /// The attention's geometry and scale, as the passes use them.
    pub(crate) fn heads(&self) -> Heads {
        Heads {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim(),
            scale: self.attention_scale(),
        }
    }

    /// Width of one attention head: [`LlamaConfig::head_width`] if set,
    /// else `d_model / n_heads`.
    pub fn head_dim(&self) -> usize {
        self.head_width
            .unwrap_or(self.d_model / self.n_heads.max(1))
    }

    /// Whether block `block` (from 0) applies rotary positions to its
    /// queries and keys: all but every [`LlamaConfig::nope_every`]-th.
    ///
    /// ```
    /// use lastmile_models::llama::LlamaConfig;
    /// let c = LlamaConfig { n_layers: 8, nope_every: Some(4), ..LlamaConfig::tiny() };
    /// let rotating: Vec<bool> = (0..8).map(|l| c.rotates(l)).collect();
    /// assert_eq!(rotating, [true, true, true, false, true, true, true, false]);
    /// assert!(LlamaConfig::tiny().rotates(1));
    /// ```
    pub fn rotates(&self, block: usize) -> bool {
        self.nope_every
            .is_none_or(|n| !(block + 1).is_multiple_of(n.max(1)))
    }

    /// Width of all query heads together (`n_heads · head_dim`): the query
    /// projection's outputs and the attention output projection's inputs,
    /// `d_model` unless [`LlamaConfig::head_width`] says otherwise.
    ///
    /// ```
    /// use lastmile_models::llama::LlamaConfig;
    /// let c = LlamaConfig { head_width: Some(16), ..LlamaConfig::tiny() };
    /// assert_eq!((c.head_dim(), c.attention_width()), (16, 64));
    /// assert_eq!(LlamaConfig::tiny().attention_width(), 32);
    /// ```
    pub fn attention_width(&self) -> usize {
        self.n_heads * self.head_dim()
    }

    /// Number of parameters (the tied head counted once).
    ///
    /// ```
    /// use lastmile_models::llama::LlamaConfig;
    /// let c = LlamaConfig::tiny();
    /// // embedding + 2 × (norms + q,k,v,o + gate,up,down) + final norm
    /// assert_eq!(c.n_params(), 64 * 32 + 2 * (2 * 32 + 32 * 32 * 2 + 2 * 32 * 16 + 3 * 32 * 48) + 32);
    /// ```
    pub fn n_params(&self) -> usize {
        let (d, a) = (self.d_model, self.attention_width());
        let kv = self.n_kv_heads * self.head_dim();
        let norms = if self.head_norms {
            2 * self.head_dim()
        } else {
            0
        };
        let block = 2 * d + 2 * d * a + 2 * d * kv + 3 * d * self.d_ff + norms;
        let head = if self.tied_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.n_layers * block + d + head
    }

    /// Validates the configuration.
    ///
    /// # Errors
    /// [`LlamaError::Config`] when a count is zero or above [`MAX_DIM`] /
    /// [`MAX_LAYERS`], `d_model` is not a multiple of `n_heads` (without
    /// a `head_width`), a `head_width` is 0 or makes the query heads wider
    /// than [`MAX_DIM`], `n_heads` not a multiple of `n_kv_heads`, the
    /// head width is odd (RoPE rotates pairs), `nope_every` is `Some(0)`,
    /// `rope_base` / `rms_eps` / a RoPE scaling factor / one of the
    /// [`Scales`] is not finite and positive, YaRN's original context is 0, or `rope_freq_factors` is
    /// neither empty nor one finite positive factor per pair of a head.
    pub fn check(&self) -> LlamaResult<()> {
        let dims: [(&'static str, usize, usize); 7] = [
            ("vocab_size", self.vocab_size, MAX_DIM),
            ("d_model", self.d_model, MAX_DIM),
            ("n_layers", self.n_layers, MAX_LAYERS),
            ("n_heads", self.n_heads, MAX_DIM),
            ("n_kv_heads", self.n_kv_heads, MAX_DIM),
            ("d_ff", self.d_ff, MAX_DIM),
            ("max_context", self.max_context, MAX_DIM),
        ];
        for (field, value, max) in dims {
            if value == 0 || value > max {
                return Err(config_error(
                    field,
                    value,
                    format!("an integer in 1..={max}"),
                ));
            }
        }
        if let Some(w) = self.head_width {
            if w == 0 || w.saturating_mul(self.n_heads) > MAX_DIM {
                return Err(config_error(
                    "head_width",
                    w,
                    format!(
                        "an integer in 1..={} (n_heads · head_width ≤ {MAX_DIM})",
                        MAX_DIM / self.n_heads
                    ),
                ));
            }
        } else if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(config_error(
                "d_model",
                self.d_model,
                format!("a multiple of n_heads = {}", self.n_heads),
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(config_error(
                "n_kv_heads",
                self.n_kv_heads,
                format!("a divisor of n_heads = {}", self.n_heads),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(config_error(
                "head width",
                self.head_dim(),
                "an even head width (RoPE rotates pairs)".to_owned(),
            ));
        }
        if self.nope_every == Some(0) {
            return Err(config_error(
                "nope_every",
                0,
                "none, or every n-th block with n ≥ 1".to_owned(),
            ));
        }
        for (field, value) in [
            ("rope_base", self.rope_base),
            ("rms_eps", self.rms_eps),
            ("rope scaling factor", self.rope_scaling.factor()),
            ("embedding scale", self.scales.embedding),
            ("residual scale", self.scales.residual),
            ("attention scale", self.scales.attention.unwrap_or(1.0)),
            ("logit scale", self.scales.logit),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(config_error(field, value, "a finite value > 0".to_owned()));
            }
        }
        if let RopeScaling::Yarn {
            original_context: 0,
            ..
        } = self.rope_scaling
        {
            return Err(config_error(
                "rope_scaling",
                "YaRN with an original context of 0",
                "an original context ≥ 1".to_owned(),
            ));
        }
        let factors = &self.rope_freq_factors;
        if !factors.is_empty()
            && (factors.len() != self.head_dim() / 2
                || factors.iter().any(|f| !(f.is_finite() && *f > 0.0)))
        {
            return Err(config_error(
                "rope_freq_factors",
                format!("{} factors", factors.len()),
                format!(
                    "none, or {} finite factors > 0 (one per pair of a head)",
                    self.head_dim() / 2
                ),
            ));
        }
        Ok(())
    }

    /// Reads and validates the configuration of a `llama`-, `qwen2`-,
    /// `phi3`-, `qwen3`- or `smollm3`-architecture GGUF file (the keys named on each
    /// field, under the architecture's name for the others). Partial rotary embeddings
    /// (`llama.rope.dimension_count` below the head width) and RoPE scaling
    /// other than linear (`llama.rope.scaling.type` `yarn` or `longrope`)
    /// are rejected rather than silently mis-computed; Llama 3.1's per-pair
    /// factors (`rope_freqs.weight`) are read into `rope_freq_factors`, a
    /// linear or YaRN scaling into `rope_scaling`.
    ///
    /// # Errors
    /// [`LlamaError::Architecture`] for another architecture;
    /// [`LlamaError::Gguf`] for a missing key or a value of the wrong type;
    /// [`LlamaError::Config`] for invalid or unsupported values.
    ///
    /// ```no_run
    /// use lastmile_core::gguf::GgufFile;
    /// use lastmile_models::llama::LlamaConfig;
    /// let file = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    /// let config = LlamaConfig::from_gguf(&file)?;
    /// assert_eq!((config.n_layers, config.n_heads, config.n_kv_heads), (30, 9, 3));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_gguf(file: &GgufFile) -> LlamaResult<Self> {
        let meta = file.metadata();
        let arch = Architecture::of(file)?;
        let key = |k: &str| format!("{}.{k}", arch.name());
        let n_heads = get_usize(meta, &key("attention.head_count"))?;
        let n_kv_heads = match meta.get(&key("attention.head_count_kv")) {
            Some(_) => get_usize(meta, &key("attention.head_count_kv"))?,
            None => n_heads,
        };
        let vocab_size = match meta.get(&key("vocab_size")) {
            Some(_) => get_usize(meta, &key("vocab_size"))?,
            None => meta.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_base = match meta.get(&key("rope.freq_base")) {
            Some(_) => get_f32(meta, &key("rope.freq_base"))?,
            None => 10_000.0,
        };
        let mut config = Self {
            vocab_size,
            d_model: get_usize(meta, &key("embedding_length"))?,
            n_layers: get_usize(meta, &key("block_count"))?,
            n_heads,
            n_kv_heads,
            head_width: head_width(meta, &key)?,
            head_norms: arch == Architecture::Qwen3,
            nope_every: (arch == Architecture::Smollm3).then_some(4),
            d_ff: get_usize(meta, &key("feed_forward_length"))?,
            rope_base,
            rope_freq_factors: Vec::new(),
            rope_scaling: RopeScaling::None,
            rms_eps: get_f32(meta, &key("attention.layer_norm_rms_epsilon"))?,
            max_context: get_usize(meta, &key("context_length"))?,
            tied_embeddings: file.tensor_info("output.weight").is_err(),
            scales: scales(meta, &key, arch)?,
        };
        // Granite switches its rotary positions off with this flag.
        if arch == Architecture::Granite
            && meta.get(&key("rope.scaling.finetuned")).is_some()
            && !meta.get_bool(&key("rope.scaling.finetuned"))?
        {
            config.nope_every = Some(1);
        }
        config.rope_scaling = rope_scaling(meta, &key, config.max_context)?;
        config.check()?;
        // Llama 3.1 and later carry their RoPE scaling as per-pair factors.
        if let Ok(info) = file.tensor_info("rope_freqs.weight") {
            let half = config.head_dim() / 2;
            if info.shape() != [half] {
                return Err(LlamaError::TensorShape {
                    name: "rope_freqs.weight".to_owned(),
                    expected: vec![half],
                    found: info.shape(),
                });
            }
            config.rope_freq_factors = file.dequantize("rope_freqs.weight")?;
            config.check()?;
        }
        // Phi-3's 128K files carry LongRoPE's per-pair factors as tensors.
        for name in ["rope_factors_long.weight", "rope_factors_short.weight"] {
            if file.tensor_info(name).is_ok() {
                return Err(config_error(
                    "tensor",
                    name,
                    "no LongRoPE factors (LongRoPE, as in Phi-3's 128K files, is not supported)"
                        .to_owned(),
                ));
            }
        }
        if meta.get(&key("rope.dimension_count")).is_some() {
            let rope_dim = get_usize(meta, &key("rope.dimension_count"))?;
            if rope_dim != config.head_dim() {
                return Err(config_error(
                    "rope.dimension_count",
                    rope_dim,
                    format!(
                        "the head width {} (partial rotary embeddings are not supported)",
                        config.head_dim()
                    ),
                ));
            }
        }
        Ok(config)
    }
}

/// A file's RoPE scaling, as llama.cpp reads it: the type
/// `rope.scaling.type` (`linear` when absent, llama.cpp's default; `none`
/// ignores the factor), the factor `rope.scaling.factor` (or the older
/// `rope.scale_linear`; none or 0: no scaling) and, for YaRN,
/// `rope.scaling.original_context_length` (else `context`).
///
/// # Errors
/// [`LlamaError::Config`] for another type (LongRoPE) or an attention
/// factor (`rope.scaling.attn_factor`) other than 1, which are not
/// supported; [`LlamaError::Gguf`] for a value of the wrong type.
fn rope_scaling(
    meta: &Metadata,
    key: &impl Fn(&str) -> String,
    context: usize,
) -> LlamaResult<RopeScaling> {
    let kind = match meta.get(&key("rope.scaling.type")) {
        Some(_) => meta.get_str(&key("rope.scaling.type"))?,
        None => "linear",
    };
    if meta.get(&key("rope.scaling.attn_factor")).is_some() {
        let attn = get_f32(meta, &key("rope.scaling.attn_factor"))?;
        if attn != 1.0 {
            return Err(config_error(
                "rope.scaling.attn_factor",
                attn,
                "1 (other attention factors are not supported)".to_owned(),
            ));
        }
    }
    let factor = ["rope.scaling.factor", "rope.scale_linear"]
        .into_iter()
        .map(key)
        .find(|k| meta.get(k).is_some())
        .map_or(Ok(0.0), |k| get_f32(meta, &k))?;
    Ok(match kind {
        "none" => RopeScaling::None,
        "linear" | "yarn" if factor == 0.0 => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor },
        "yarn" => {
            let original = key("rope.scaling.original_context_length");
            RopeScaling::Yarn {
                factor,
                original_context: match meta.get(&original) {
                    Some(_) => get_usize(meta, &original)?,
                    None => context,
                },
            }
        }
        other => {
            return Err(config_error(
                "rope.scaling.type",
                other,
                "`none`, `linear` or `yarn` (LongRoPE is not supported)".to_owned(),
            ));
        }
    })
}

/// The head width a file sets (`attention.key_length`), if any; a value
/// width (`attention.value_length`) other than the key width is refused.
///
/// # Errors
/// [`LlamaError::Config`] for differing key and value widths;
/// [`LlamaError::Gguf`] for a value of the wrong type.
fn head_width(meta: &Metadata, key: &impl Fn(&str) -> String) -> LlamaResult<Option<usize>> {
    let read = |k: &str| match meta.get(&key(k)) {
        Some(_) => get_usize(meta, &key(k)).map(Some),
        None => Ok(None),
    };
    let (keys, values) = (
        read("attention.key_length")?,
        read("attention.value_length")?,
    );
    match (keys, values) {
        (Some(k), Some(v)) if k != v => Err(config_error(
            "attention.value_length",
            v,
            format!("the key width {k} (different key and value widths are not supported)"),
        )),
        (Some(w), _) | (None, Some(w)) => Ok(Some(w)),
        (None, None) => Ok(None),
    }
}

/// The file's [`Scales`]: the attention's score scale for every
/// architecture (`attention.scale`, 0 meaning `1/√d_head` as in llama.cpp),
/// and for Granite its embedding, residual and logit scales (the logit
/// scale required, as llama.cpp requires it; an absent or 0 embedding or
/// residual scale is 1, as llama.cpp skips them).
///
/// # Errors
/// [`LlamaError::Gguf`] for a missing logit scale in a Granite file or a
/// value of the wrong type.
fn scales(
    meta: &Metadata,
    key: &impl Fn(&str) -> String,
    arch: Architecture,
) -> LlamaResult<Scales> {
    let optional = |k: &str| -> LlamaResult<Option<f32>> {
        match meta.get(&key(k)) {
            Some(_) => Ok(Some(get_f32(meta, &key(k))?).filter(|&v| v != 0.0)),
            None => Ok(None),
        }
    };
    let mut scales = Scales {
        attention: optional("attention.scale")?,
        ..Scales::default()
    };
    if arch == Architecture::Granite {
        scales.embedding = optional("embedding_scale")?.unwrap_or(1.0);
        scales.residual = optional("residual_scale")?.unwrap_or(1.0);
        scales.logit = get_f32(meta, &key("logit_scale"))?;
    }
    Ok(scales)
}

fn config_error(field: &'static str, value: impl ToString, expected: String) -> LlamaError {
    LlamaError::Config {
        field,
        value: value.to_string(),
        expected,
    }
}

/// An integer metadata value of any integer type, as `usize`.
fn get_usize(meta: &Metadata, key: &str) -> LlamaResult<usize> {
    let value = meta.value(key)?;
    let n: Option<u64> = match value {
        MetadataValue::U8(v) => Some(u64::from(*v)),
        MetadataValue::U16(v) => Some(u64::from(*v)),
        MetadataValue::U32(v) => Some(u64::from(*v)),
        MetadataValue::U64(v) => Some(*v),
        MetadataValue::I8(v) => u64::try_from(*v).ok(),
        MetadataValue::I16(v) => u64::try_from(*v).ok(),
        MetadataValue::I32(v) => u64::try_from(*v).ok(),
        MetadataValue::I64(v) => u64::try_from(*v).ok(),
        other => {
            return Err(lastmile_core::gguf::GgufError::WrongType {
                key: key.to_owned(),
                expected: "an integer".to_owned(),
                found: other.type_name(),
            }
            .into());
        }
    };
    n.and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| LlamaError::Config {
            field: "metadata integer",
            value: format!("{key} = {value:?}"),
            expected: "a non-negative integer that fits in usize".to_owned(),
        })
}

/// A float metadata value (`f32` or `f64`), as `f32`.
fn get_f32(meta: &Metadata, key: &str) -> LlamaResult<f32> {
    match meta.value(key)? {
        MetadataValue::F32(v) => Ok(*v),
        MetadataValue::F64(v) => Ok(*v as f32),
        other => Err(lastmile_core::gguf::GgufError::WrongType {
            key: key.to_owned(),
            expected: "a float".to_owned(),
            found: other.type_name(),
        }
        .into()),
    }
}
