//! The attention trunk shared by both MoE forms: embeddings, attention
//! blocks, norms and head, with the MoE left to a closure.

use burn::module::Module;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::{Bool, Device, IndexingUpdateOp, Int, Tensor, TensorData};
use lastmile_core::lm::LmError;

use super::MoeResult;
use crate::cache::KvCache;
use crate::transformer::{attention, causal_mask, positions, split_qkv};

/// The attention half of a pre-norm block and the norm before its MoE:
/// `x + attn(ln₁(x))`, then the MoE reads `ln₂(x)`.
#[derive(Module, Debug)]
pub struct Attention {
    pub(super) norm1: LayerNorm,
    pub(super) qkv: Linear,
    pub(super) proj: Linear,
    pub(super) norm2: LayerNorm,
}

impl Attention {
    /// q, k, v `[B, H, L, d/H]` of `ln₁(x)` for `x` `[B, L, d]`.
    fn qkv(&self, x: Tensor<3>, n_heads: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        split_qkv(self.qkv.forward(self.norm1.forward(x)), n_heads)
    }

    /// `x + proj(softmax(q kᵀ / √d_h + mask) v)`; `mask` is `true` where a key is hidden.
    fn attend(
        &self,
        x: Tensor<3>,
        qkv: (Tensor<4>, Tensor<4>, Tensor<4>),
        mask: Tensor<4, Bool>,
    ) -> Tensor<3> {
        x + self.proj.forward(attention(qkv, mask))
    }
}

/// Everything but the experts: embeddings, attention, norms, head.
#[derive(Module, Debug)]
pub struct Trunk {
    pub(super) tokens: Embedding,
    pub(super) positions: Embedding,
    pub(super) attention: Vec<Attention>,
    pub(super) norm: LayerNorm,
    pub(super) head: Linear,
    pub(super) n_heads: usize,
    pub(super) max_len: usize,
    pub(super) vocab: usize,
}

impl Trunk {
    pub(super) fn device(&self) -> Device {
        self.head.weight.device()
    }

    /// Full causal forward of `tokens` `[B, L]`; `moe(layer, h)` maps the
    /// normalised hidden states `[B·L, d]` of each block to its MoE output.
    pub(super) fn forward_full(
        &self,
        tokens: Tensor<2, Int>,
        mut moe: impl FnMut(usize, Tensor<2>) -> MoeResult<Tensor<2>>,
    ) -> MoeResult<Tensor<3>> {
        let [b, l] = tokens.dims();
        if l == 0 || l > self.max_len {
            return Err(LmError::ContextOverflow {
                row: 0,
                needed: l,
                max: self.max_len,
            }
            .into());
        }
        let device = tokens.device();
        let pos = positions(b, l, &device);
        let mut x = self.tokens.forward(tokens) + self.positions.forward(pos);
        let d = x.dims()[2];
        let causal = causal_mask(b, self.n_heads, l, &device);
        for (layer, attn) in self.attention.iter().enumerate() {
            let qkv = attn.qkv(x.clone(), self.n_heads);
            x = attn.attend(x, qkv, causal.clone());
            let h = attn.norm2.forward(x.clone()).reshape([b * l, d]);
            x = x + moe(layer, h)?.reshape([b, l, d]);
        }
        Ok(self.head.forward(self.norm.forward(x)))
    }

    /// Appends `tokens[r]` to row `r` of `cache` and returns logits at the
    /// new positions `[B, max(1, n_max), vocab]`; `moe(layer, h)` receives
    /// only the real (not padding) positions, row by row, `[Σ_r n_r, d]`.
    pub(super) fn forward_cached(
        &self,
        cache: &mut KvCache,
        tokens: &[Vec<usize>],
        mut moe: impl FnMut(usize, Tensor<2>) -> MoeResult<Tensor<2>>,
    ) -> MoeResult<Tensor<3>> {
        let device = self.device();
        let step = cache.begin(tokens, self.vocab, self.max_len, self.n_heads, &device)?;
        let [b, n] = step.ids.dims();
        let m = step.real.len();
        let real = Tensor::<1, Int>::from_data(TensorData::new(step.real.clone(), [m]), &device);
        let mut x =
            self.tokens.forward(step.ids.clone()) + self.positions.forward(step.pos.clone());
        let d = x.dims()[2];
        for (layer, attn) in self.attention.iter().enumerate() {
            let (q, k, v) = attn.qkv(x.clone(), self.n_heads);
            let (k_all, v_all) = cache.append(layer, (k, v), &step);
            x = attn.attend(x, (q, k_all, v_all), step.mask.clone());
            if m > 0 {
                // Only real positions reach the experts: padding must not
                // cost expert loads or count as cache accesses.
                let h = attn.norm2.forward(x.clone()).reshape([b * n, d]);
                let y = moe(layer, h.select(0, real.clone()))?;
                let y = Tensor::<2>::zeros([b * n, d], &device).select_assign(
                    0,
                    real.clone(),
                    y,
                    IndexingUpdateOp::Add,
                );
                x = x + y.reshape([b, n, d]);
            }
        }
        cache.commit(tokens);
        Ok(self.head.forward(self.norm.forward(x)))
    }
}
