//! A pre-norm decoder-only transformer with learned positions.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::activation::gelu_decode;
use lastmile_core::lm::LmError;

use crate::error::{ModelError, Result};

/// Shape of a [`Transformer`].
///
/// ```
/// let c = lastmile_models::TransformerConfig::byte_level(64, 1, 2, 128);
/// assert_eq!((c.vocab, c.d_ff), (256, 256));
/// assert!(c.check().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransformerConfig {
    /// Vocabulary size.
    pub vocab: usize,
    /// Model width.
    pub d_model: usize,
    /// Number of blocks.
    pub n_layers: usize,
    /// Attention heads (must divide `d_model`).
    pub n_heads: usize,
    /// Hidden width of the MLP.
    pub d_ff: usize,
    /// Context window (number of learned positions).
    pub max_len: usize,
}

impl TransformerConfig {
    /// A byte-level (256-token) model with `d_ff = 4·d_model`.
    pub fn byte_level(d_model: usize, n_layers: usize, n_heads: usize, max_len: usize) -> Self {
        Self {
            vocab: 256,
            d_model,
            n_layers,
            n_heads,
            d_ff: 4 * d_model,
            max_len,
        }
    }

    /// Checks that every size is positive and heads divide the width.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the bad field.
    pub fn check(&self) -> Result<()> {
        check_sizes(
            &[
                ("vocab", self.vocab),
                ("d_model", self.d_model),
                ("n_layers", self.n_layers),
                ("n_heads", self.n_heads),
                ("d_ff", self.d_ff),
                ("max_len", self.max_len),
            ],
            self.d_model,
            self.n_heads,
        )
    }

    /// Randomly initialised weights on `device`.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn init(&self, device: &Device) -> Result<Transformer> {
        self.check()?;
        let d = self.d_model;
        Ok(Transformer {
            tokens: EmbeddingConfig::new(self.vocab, d).init(device),
            positions: EmbeddingConfig::new(self.max_len, d).init(device),
            blocks: (0..self.n_layers)
                .map(|_| Block {
                    norm1: LayerNormConfig::new(d).init(device),
                    qkv: LinearConfig::new(d, 3 * d).init(device),
                    proj: LinearConfig::new(d, d).init(device),
                    norm2: LayerNormConfig::new(d).init(device),
                    fc1: LinearConfig::new(d, self.d_ff).init(device),
                    fc2: LinearConfig::new(self.d_ff, d).init(device),
                })
                .collect(),
            norm: LayerNormConfig::new(d).init(device),
            head: LinearConfig::new(d, self.vocab).init(device),
            n_heads: self.n_heads,
            max_len: self.max_len,
            vocab: self.vocab,
        })
    }

    /// Number of trainable parameters.
    pub fn n_params(&self) -> usize {
        let d = self.d_model;
        let block = 2 * 2 * d
            + (d * 3 * d + 3 * d)
            + (d * d + d)
            + (d * self.d_ff + self.d_ff)
            + (self.d_ff * d + d);
        self.vocab * d
            + self.max_len * d
            + self.n_layers * block
            + 2 * d
            + d * self.vocab
            + self.vocab
    }
}

/// The shape checks every model of this crate shares: each named size is
/// at least 1, and `n_heads` divides `d_model`.
///
/// # Errors
/// [`ModelError::Config`] naming the first bad size.
pub(crate) fn check_sizes(sizes: &[(&str, usize)], d_model: usize, n_heads: usize) -> Result<()> {
    if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
        return Err(ModelError::Config(format!("{name} = 0; expected >= 1")));
    }
    if !d_model.is_multiple_of(n_heads) {
        return Err(ModelError::Config(format!(
            "n_heads = {n_heads} does not divide d_model = {d_model}"
        )));
    }
    Ok(())
}

/// Splits a fused projection `[B, L, 3·d]` into q, k, v of shape
/// `[B, H, L, d/H]` (in that order along the last axis, heads contiguous).
pub(crate) fn split_qkv(x: Tensor<3>, n_heads: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let [b, l, three_d] = x.dims();
    let d = three_d / 3;
    let x = x.reshape([b, l, 3, n_heads, d / n_heads]);
    let part = |i: usize| {
        x.clone()
            .slice([0..b, 0..l, i..i + 1, 0..n_heads, 0..d / n_heads])
            .reshape([b, l, n_heads, d / n_heads])
            .swap_dims(1, 2)
    };
    (part(0), part(1), part(2))
}

/// Scaled dot-product attention (Vaswani et al. 2017, Eq. (1)),
/// `softmax(q kᵀ / √d_h) v` with the heads merged back: q `[B, H, n, d_h]`
/// over k, v `[B, H, T, d_h]`, `mask` `true` where a key is hidden; returns
/// `[B, n, H·d_h]`.
pub(crate) fn attention(
    (q, k, v): (Tensor<4>, Tensor<4>, Tensor<4>),
    mask: Tensor<4, Bool>,
) -> Tensor<3> {
    let [b, h, n, dh] = q.dims();
    let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((dh as f32).sqrt());
    let scores = scores.mask_fill(mask, f32::NEG_INFINITY);
    softmax(scores, 3)
        .matmul(v)
        .swap_dims(1, 2)
        .reshape([b, n, h * dh])
}

/// Positions `0..l` of each of `b` rows, `[b, l]`.
pub(crate) fn positions(b: usize, l: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::<1, Int>::arange(0..l as i64, device)
        .reshape([1, l])
        .expand([b, l])
}

/// The causal mask of a whole window, `[b, heads, l, l]`, `true` above the
/// diagonal (key `j` hidden from query `i` when `j > i`).
pub(crate) fn causal_mask(b: usize, heads: usize, l: usize, device: &Device) -> Tensor<4, Bool> {
    Tensor::<2, Bool>::from_data(
        TensorData::new(
            (0..l * l).map(|i| i % l > i / l).collect::<Vec<_>>(),
            [l, l],
        ),
        device,
    )
    .reshape([1, 1, l, l])
    .expand([b, heads, l, l])
}

/// One pre-norm block: `x + attn(ln(x))`, then `x + mlp(ln(x))`.
#[derive(Module, Debug)]
pub struct Block {
    pub(crate) norm1: LayerNorm,
    pub(crate) qkv: Linear,
    pub(crate) proj: Linear,
    pub(crate) norm2: LayerNorm,
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
}

/// Column width of a weight panel: one 16-float micro-kernel tile, so that
/// the GEMM micro-kernel reads a panel front to back.
const PANEL: usize = 16;

/// A linear layer's weight `[d_in, d_out]` regrouped as `[d_out / 16, d_in, 16]`
/// column panels, each contiguous.
///
/// Why: for a product with a few rows (a verify pass scores 2–16 tokens) the
/// GEMM kernel of the CPU backend walks the weight down its columns — 16
/// floats per row, one row stride apart — which the hardware prefetcher does
/// not follow, so two rows cost ~2.5× one row (one row takes a streaming
/// GEMV). One small product per panel reads each panel sequentially instead.
#[derive(Clone, Debug)]
pub(crate) struct Panels {
    w: Tensor<3>,
    bias: Option<Tensor<1>>,
}

impl Panels {
    /// `None` when `d_out` is not a multiple of the panel width.
    pub(crate) fn new(l: &Linear) -> Option<Self> {
        let w = l.weight.val();
        let [d_in, d_out] = w.dims();
        if !d_out.is_multiple_of(PANEL) {
            return None;
        }
        let device = w.device();
        // swap_dims gives a strided view; from_data stores it contiguously.
        let panels = w.reshape([d_in, d_out / PANEL, PANEL]).swap_dims(0, 1);
        Some(Self {
            w: Tensor::from_data(panels.into_data(), &device),
            bias: l.bias.as_ref().map(|b| b.val()),
        })
    }

    /// `x · W + b` for `x` `[B, L, d_in]`.
    pub(crate) fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, l, d_in] = x.dims();
        let [n_panels, _, p] = self.w.dims();
        let y = x
            .reshape([1, b * l, d_in])
            .matmul(self.w.clone())
            .swap_dims(0, 1)
            .reshape([b, l, n_panels * p]);
        match &self.bias {
            Some(bias) => y + bias.clone().reshape([1, 1, n_panels * p]),
            None => y,
        }
    }
}

/// The panels of one block's four linear layers.
#[derive(Clone, Debug)]
pub(crate) struct BlockPanels {
    pub(crate) qkv: Panels,
    pub(crate) proj: Panels,
    pub(crate) fc1: Panels,
    pub(crate) fc2: Panels,
}

impl BlockPanels {
    pub(crate) fn new(b: &Block) -> Option<Self> {
        Some(Self {
            qkv: Panels::new(&b.qkv)?,
            proj: Panels::new(&b.proj)?,
            fc1: Panels::new(&b.fc1)?,
            fc2: Panels::new(&b.fc2)?,
        })
    }
}

/// A decoder-only transformer language model (GPT-2 layout: learned
/// positions, pre-norm, GELU MLP, causal multi-head attention).
///
/// [`forward`](Transformer::forward) scores whole windows (training);
/// [`forward_cached`](Transformer::forward_cached) appends tokens to a
/// [`KvCache`](crate::KvCache) and scores only the new positions (decoding).
#[derive(Module, Debug)]
pub struct Transformer {
    pub(crate) tokens: Embedding,
    pub(crate) positions: Embedding,
    pub(crate) blocks: Vec<Block>,
    pub(crate) norm: LayerNorm,
    pub(crate) head: Linear,
    pub(crate) n_heads: usize,
    pub(crate) max_len: usize,
    pub(crate) vocab: usize,
}

impl Block {
    /// Projects `h` `[B, L, d]` and splits the result into q, k, v of shape
    /// `[B, H, L, d/H]`; `panels` (if given) computes the projection.
    pub(crate) fn qkv(
        &self,
        h: Tensor<3>,
        n_heads: usize,
        panels: Option<&BlockPanels>,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let x = match panels {
            Some(p) => p.qkv.forward(h),
            None => self.qkv.forward(h),
        };
        split_qkv(x, n_heads)
    }

    /// Attention of `q` `[B, H, n, dh]` over `k`, `v` `[B, H, T, dh]`; `mask` is
    /// `true` where a key must be ignored. Returns the block output;
    /// `panels` (if given) computes the linear layers; `decoding` selects
    /// [`gelu_decode`] over burn's `gelu` (same values, faster for few rows).
    pub(crate) fn finish(
        &self,
        x: Tensor<3>,
        qkv: (Tensor<4>, Tensor<4>, Tensor<4>),
        mask: Tensor<4, Bool>,
        panels: Option<&BlockPanels>,
        decoding: bool,
    ) -> Tensor<3> {
        let att = attention(qkv, mask);
        let x = match panels {
            Some(p) => x + p.proj.forward(att),
            None => x + self.proj.forward(att),
        };
        let h = self.norm2.forward(x.clone());
        let act = |z: Tensor<3>| if decoding { gelu_decode(z) } else { gelu(z) };
        let m = match panels {
            Some(p) => p.fc2.forward(act(p.fc1.forward(h))),
            None => self.fc2.forward(act(self.fc1.forward(h))),
        };
        x + m
    }
}

impl Transformer {
    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The device holding the weights.
    pub fn device(&self) -> Device {
        self.head.weight.device()
    }

    /// Context window.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Logits for every position of `tokens`, with causal attention.
    ///
    /// # Shapes
    /// `tokens`: `[B, L]` with `L ≤ max_len` → `[B, L, vocab]`.
    ///
    /// # Errors
    /// [`LmError::ContextOverflow`] when `L > max_len`.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::{Device, Int, Tensor};
    /// let d = Device::flex();
    /// let m = lastmile_models::TransformerConfig::byte_level(16, 1, 2, 8).init(&d).unwrap();
    /// let t = Tensor::<2, Int>::from_ints([[1, 2, 3]], &d);
    /// assert_eq!(m.forward(t).unwrap().dims(), [1, 3, 256]);
    /// # }
    /// ```
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Result<Tensor<3>> {
        let [b, l] = tokens.dims();
        if l > self.max_len {
            return Err(ModelError::Lm(LmError::ContextOverflow {
                row: 0,
                needed: l,
                max: self.max_len,
            }));
        }
        let device = tokens.device();
        let pos = positions(b, l, &device);
        let mut x = self.tokens.forward(tokens) + self.positions.forward(pos);
        let causal = causal_mask(b, self.n_heads, l, &device);
        for block in &self.blocks {
            let qkv = block.qkv(block.norm1.forward(x.clone()), self.n_heads, None);
            x = block.finish(x, qkv, causal.clone(), None, false);
        }
        Ok(self.head.forward(self.norm.forward(x)))
    }
}
