//! Rotary position embeddings (Su et al. 2021, RoFormer, eq. 34) as
//! llama.cpp applies them for the `llama` architecture.
//!
//! llama.cpp gives that architecture `LLAMA_ROPE_TYPE_NORM`: each head's
//! **adjacent** pairs `(x[2i], x[2i+1])` are rotated by the angle
//! `p · θ^(−2i/d)` for position `p`,
//!
//! ```text
//! y[2i]   = x[2i] cos(p θ_i) − x[2i+1] sin(p θ_i)
//! y[2i+1] = x[2i] sin(p θ_i) + x[2i+1] cos(p θ_i)
//! ```
//!
//! Hugging Face's Llama rotates the pairs `(x[i], x[i + d/2])` instead;
//! `convert_hf_to_gguf.py` reorders the rows of `attn_q` and `attn_k` in
//! each head (`(2, d/2) → (d/2, 2)`) so that the two agree. Weights read from
//! a GGUF file therefore go with the adjacent-pair rotation, with no
//! permutation undone here. The angles are computed as ggml does, in `f32`
//! with `θ_i = p · s^i`, `s = θ^(−2/d)` accumulated by repeated
//! multiplication, so positions far into the context match it closely.

use burn::tensor::{Device, Int, Tensor, TensorData};

/// Cosine and sine tables for every position of the context.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    /// `[max_context, d/2]`.
    cos: Tensor<2>,
    /// `[max_context, d/2]`.
    sin: Tensor<2>,
    half: usize,
}

impl Rope {
    /// Tables for heads of width `head_dim` (even) over `max_context` positions.
    pub(crate) fn new(head_dim: usize, max_context: usize, base: f32, device: &Device) -> Self {
        let half = head_dim / 2;
        let scale = base.powf(-2.0 / head_dim as f32);
        let mut cos = Vec::with_capacity(max_context * half);
        let mut sin = Vec::with_capacity(max_context * half);
        for p in 0..max_context {
            let mut theta = p as f32;
            for _ in 0..half {
                cos.push(theta.cos());
                sin.push(theta.sin());
                theta *= scale;
            }
        }
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [max_context, half]), device),
            sin: Tensor::from_data(TensorData::new(sin, [max_context, half]), device),
            half,
        }
    }

    /// The tables at `positions` (`[b·n]`, row-major over `[b, n]`), shaped
    /// `[b, 1, n, d/2, 1]` to broadcast over heads and pair members.
    pub(crate) fn at(&self, positions: Tensor<1, Int>, b: usize, n: usize) -> RopeAt {
        let shape = [b, 1, n, self.half, 1];
        RopeAt {
            cos: self.cos.clone().select(0, positions.clone()).reshape(shape),
            sin: self.sin.clone().select(0, positions).reshape(shape),
        }
    }
}

/// The rotation at a batch's positions.
#[derive(Debug, Clone)]
pub(crate) struct RopeAt {
    cos: Tensor<5>,
    sin: Tensor<5>,
}

impl RopeAt {
    /// Rotates `x` `[b, h, n, d]` (any number of heads `h`).
    pub(crate) fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, n, d] = x.dims();
        let half = d / 2;
        let pairs = x.reshape([b, h, n, half, 2]);
        let x0 = pairs.clone().slice([0..b, 0..h, 0..n, 0..half, 0..1]);
        let x1 = pairs.slice([0..b, 0..h, 0..n, 0..half, 1..2]);
        let y0 = x0.clone() * self.cos.clone() - x1.clone() * self.sin.clone();
        let y1 = x0 * self.sin.clone() + x1 * self.cos.clone();
        Tensor::cat(vec![y0, y1], 4).reshape([b, h, n, d])
    }
}
