//! One Llama block: pre-norm grouped-query attention with rotary positions,
//! then a pre-norm SwiGLU feed-forward network, each added to the residual.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, Device, Tensor, TensorData};

use super::error::LlamaResult;
use super::norm::RmsNorm;
use super::rope::RopeAt;
use super::storage::Matrix;

/// The projections of a block, the one part in which the inference model
/// (panel matrices, [`Block`]) and the trainable module (burn `Linear`
/// layers, [`super::module::LlamaBlock`]) differ; the block's computation
/// ([`BlockWeights::qkv`], [`BlockWeights::finish`]) is shared.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// What a block's computation needs from its weights.
pub(crate) trait BlockWeights {
    /// RMSNorm before attention.
    fn attn_norm(&self, x: Tensor<3>) -> Tensor<3>;
    /// RMSNorm before the feed-forward network.
    fn ffn_norm(&self, x: Tensor<3>) -> Tensor<3>;
    /// `x Wᵀ` with projection `p`, `[b, n, in]` → `[b, n, out]` (fallible
    /// only where the product runs on the host, [`super::WeightStorage::Blocks`]).
    fn project(&self, p: Proj, x: Tensor<3>) -> LlamaResult<Tensor<3>>;
    /// The per-head RMSNorm of projection `p`'s outputs (Qwen3's queries
    /// and keys), if the block has one.
    fn head_norm(&self, p: Proj) -> Option<RmsNorm>;

    /// Queries (`[b, n_heads, n, dh]`), keys and values (`[b, n_kv_heads, n, dh]`)
    /// of `x` `[b, n, d]`, with RoPE applied to queries and keys (none
    /// for a block without, SmolLM3's every fourth: `rope` is `None`).
    #[allow(clippy::type_complexity)]
    fn qkv(
        &self,
        x: Tensor<3>,
        heads: Heads,
        rope: Option<&RopeAt>,
    ) -> LlamaResult<(Tensor<4>, Tensor<4>, Tensor<4>)> {
        let [b, n, _] = x.dims();
        let h = self.attn_norm(x);
        let split = |t: Tensor<3>, heads_n: usize| {
            t.reshape([b, n, heads_n, heads.head_dim]).swap_dims(1, 2)
        };
        // Qwen3: each head's vector normalised before the rotation.
        let normed = |p: Proj, t: Tensor<3>, heads_n: usize| match self.head_norm(p) {
            Some(norm) => norm
                .forward(t.reshape([b, n * heads_n, heads.head_dim]))
                .reshape([b, n, heads_n * heads.head_dim]),
            None => t,
        };
        let q = normed(Proj::Q, self.project(Proj::Q, h.clone())?, heads.n_heads);
        let k = normed(Proj::K, self.project(Proj::K, h.clone())?, heads.n_kv_heads);
        let (q, k) = (split(q, heads.n_heads), split(k, heads.n_kv_heads));
        let (q, k) = match rope {
            Some(rope) => (rope.apply(q), rope.apply(k)),
            None => (q, k),
        };
        let v = split(self.project(Proj::V, h)?, heads.n_kv_heads);
        Ok((q, k, v))
    }

    /// Finishes the block: attention of `q` over the cached keys and
    /// values `kv` (each `[b, n_kv_heads, t, dh]`) under `mask` (`[b, n_kv_heads, g·n, t]`,
    /// `true` = hidden, query rows ordered `(group member, position)`), the
    /// output projection and the residual, then the SwiGLU network and its
    /// residual; each branch's output times `residual` before its add
    /// (Granite's residual scale, 1 elsewhere).
    ///
    /// Grouped-query attention (Ainslie et al. 2023): query head `j` reads
    /// key/value head `j / g`, `g = n_heads / n_kv_heads` — the mapping of
    /// llama.cpp's broadcast matrix product and of Hugging Face's
    /// `repeat_kv`. The `g` query heads of a group are stacked along the
    /// query axis so that each group is one matrix product.
    fn finish(
        &self,
        x: Tensor<3>,
        q: Tensor<4>,
        (keys, values): (Tensor<4>, Tensor<4>),
        mask: Tensor<4, Bool>,
        heads: Heads,
        residual: f32,
    ) -> LlamaResult<Tensor<3>> {
        let [b, n, _] = x.dims();
        let Heads {
            n_heads,
            n_kv_heads,
            head_dim,
            scale,
        } = heads;
        let branch = |t: Tensor<3>| scaled(t, residual);
        let g = n_heads / n_kv_heads;
        let q = q.reshape([b, n_kv_heads, g * n, head_dim]);
        let scores = q
            .matmul(keys.swap_dims(2, 3))
            .mul_scalar(scale)
            .mask_fill(mask, f32::NEG_INFINITY);
        let att = softmax(scores, 3)
            .matmul(values)
            .reshape([b, n_heads, n, head_dim])
            .swap_dims(1, 2)
            .reshape([b, n, n_heads * head_dim]);
        let x = x + branch(self.project(Proj::O, att)?);
        let h = self.ffn_norm(x.clone());
        // SwiGLU (Shazeer 2020, eq. 6): down(SiLU(gate h) ⊙ up h).
        let ff = silu(self.project(Proj::Gate, h.clone())?) * self.project(Proj::Up, h)?;
        Ok(x + branch(self.project(Proj::Down, ff)?))
    }
}

/// The weights of one block of the inference model.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) attn_norm: RmsNorm,
    pub(crate) q: Matrix,
    pub(crate) k: Matrix,
    pub(crate) v: Matrix,
    /// Qwen3's per-head RMSNorm of the queries and keys (gains of `head_dim`).
    pub(crate) q_norm: Option<RmsNorm>,
    pub(crate) k_norm: Option<RmsNorm>,
    pub(crate) o: Matrix,
    pub(crate) ffn_norm: RmsNorm,
    pub(crate) gate: Matrix,
    pub(crate) up: Matrix,
    pub(crate) down: Matrix,
}

/// `t · f`, and `t` itself for `f = 1` (the multipliers of [`super::Scales`]
/// at their defaults: no operation, so other architectures' values are
/// unchanged to the bit).
pub(crate) fn scaled<const D: usize>(t: Tensor<D>, f: f32) -> Tensor<D> {
    if f == 1.0 { t } else { t.mul_scalar(f) }
}

/// Head counts of the attention, and the factor on its scores
/// ([`super::LlamaConfig::attention_scale`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub(crate) n_heads: usize,
    pub(crate) n_kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) scale: f32,
}

impl BlockWeights for Block {
    fn attn_norm(&self, x: Tensor<3>) -> Tensor<3> {
        self.attn_norm.forward(x)
    }

    fn ffn_norm(&self, x: Tensor<3>) -> Tensor<3> {
        self.ffn_norm.forward(x)
    }

    fn head_norm(&self, p: Proj) -> Option<RmsNorm> {
        match p {
            Proj::Q => self.q_norm.clone(),
            Proj::K => self.k_norm.clone(),
            _ => None,
        }
    }

    fn project(&self, p: Proj, x: Tensor<3>) -> LlamaResult<Tensor<3>> {
        match p {
            Proj::Q => &self.q,
            Proj::K => &self.k,
            Proj::V => &self.v,
            Proj::O => &self.o,
            Proj::Gate => &self.gate,
            Proj::Up => &self.up,
            Proj::Down => &self.down,
        }
        .forward(x)
    }
}

/// The attention mask of a pass over `n` new tokens per row, row `r`'s
/// starting at position `offsets[r]`, against `total` key positions:
/// `[b, n_kv_heads, g·n, total]`, `true` = hidden. Query row (member `m` of
/// a group, position `i`) of batch row `r` sees key `j` iff `j ≤ offsets[r] + i`.
pub(crate) fn causal_mask(
    offsets: &[usize],
    n: usize,
    total: usize,
    heads: Heads,
    device: &Device,
) -> Tensor<4, Bool> {
    let b = offsets.len();
    let rows = heads.n_heads / heads.n_kv_heads * n;
    let mask: Vec<bool> = (0..b * rows * total)
        .map(|k| {
            let (row, rest) = (k / (rows * total), k % (rows * total));
            let (query, key) = (rest / total, rest % total);
            key > offsets[row] + query % n
        })
        .collect();
    Tensor::<4, Bool>::from_data(TensorData::new(mask, [b, 1, rows, total]), device).expand([
        b,
        heads.n_kv_heads,
        rows,
        total,
    ])
}
