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
//! Llama 3.1 and later divide each pair's angle by a factor `f_i` (the
//! `rope_freqs.weight` tensor; ggml's `freq_factors`): `θ_i / f_i`, also in
//! `f32`; linear scaling then multiplies the angle by `s = 1 / factor`
//! (ggml's `freq_scale`, `rope_yarn` without its extrapolation part):
//! `s · (θ_i / f_i)`.

use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};

/// Cosine and sine tables for every position of the context.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    /// `[max_context, d/2]`.
    cos: Tensor<2>,
    /// `[max_context, d/2]`.
    sin: Tensor<2>,
    /// The same tables in host memory, for the host path.
    host_cos: Arc<Vec<f32>>,
    host_sin: Arc<Vec<f32>>,
    half: usize,
}

impl Rope {
    /// Tables for heads of width `head_dim` (even) over `max_context`
    /// positions, each pair's angle divided by its factor in `factors`
    /// (empty: all 1; else one per pair, as [`LlamaConfig::check`]
    /// ensures), then multiplied by `freq_scale` (linear scaling; 1: none).
    ///
    /// [`LlamaConfig::check`]: super::LlamaConfig::check
    pub(crate) fn new(
        head_dim: usize,
        max_context: usize,
        base: f32,
        factors: &[f32],
        freq_scale: f32,
        device: &Device,
    ) -> Self {
        let half = head_dim / 2;
        let scale = base.powf(-2.0 / head_dim as f32);
        let mut cos = Vec::with_capacity(max_context * half);
        let mut sin = Vec::with_capacity(max_context * half);
        for p in 0..max_context {
            let mut theta = p as f32;
            for i in 0..half {
                let angle = freq_scale * factors.get(i).map_or(theta, |f| theta / f);
                cos.push(angle.cos());
                sin.push(angle.sin());
                theta *= scale;
            }
        }
        Self {
            cos: Tensor::from_data(TensorData::new(cos.clone(), [max_context, half]), device),
            sin: Tensor::from_data(TensorData::new(sin.clone(), [max_context, half]), device),
            host_cos: Arc::new(cos),
            host_sin: Arc::new(sin),
            half,
        }
    }

    /// The tables at `positions` (`[b·n]`, row-major over `[b, n]`), shaped
    /// `[b, 1, n, d/2, 1]` to broadcast over heads and pair members.
    pub(crate) fn at(&self, positions: &[i64], b: usize, n: usize, device: &Device) -> RopeAt {
        let shape = [b, 1, n, self.half, 1];
        let positions = Tensor::<1, Int>::from_data(
            TensorData::new(positions.to_vec(), [positions.len()]),
            device,
        );
        RopeAt {
            cos: self.cos.clone().select(0, positions.clone()).reshape(shape),
            sin: self.sin.clone().select(0, positions).reshape(shape),
        }
    }

    /// The tables at `positions` in host memory, for the host pass.
    pub(crate) fn at_host(&self, positions: &[i64]) -> HostRope {
        let rows = |table: &[f32]| -> Vec<f32> {
            // Callers clamp positions into the context; clamp again so that
            // a slip cannot index past the table.
            let last = table.len() / self.half - 1;
            positions
                .iter()
                .flat_map(|&p| {
                    let p = usize::try_from(p).unwrap_or(0).min(last);
                    table[p * self.half..(p + 1) * self.half].iter().copied()
                })
                .collect()
        };
        HostRope {
            cos: rows(&self.host_cos),
            sin: rows(&self.host_sin),
        }
    }
}

/// The rotation at a batch's positions.
#[derive(Debug, Clone)]
pub(crate) struct RopeAt {
    cos: Tensor<5>,
    sin: Tensor<5>,
}

/// The rotation at a batch's positions in host memory: `[b·n, d/2]`, row
/// `r·n + i` for position `i` of batch row `r`.
#[derive(Debug, Clone)]
pub(crate) struct HostRope {
    cos: Vec<f32>,
    sin: Vec<f32>,
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

impl HostRope {
    /// [`RopeAt::apply`] on host values `x` (`[b·n, heads, d]`), in place,
    /// by the same operations (a product each, then the difference or sum).
    #[inline(always)]
    pub(crate) fn apply_host(&self, x: &mut [f32], heads: usize, d: usize) {
        let half = d / 2;
        for (row, xr) in x.chunks_exact_mut(heads * d).enumerate() {
            let cos = &self.cos[row * half..(row + 1) * half];
            let sin = &self.sin[row * half..(row + 1) * half];
            for head in xr.chunks_exact_mut(d) {
                for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                    let (x0, x1) = (pair[0], pair[1]);
                    pair[0] = x0 * c - x1 * s;
                    pair[1] = x0 * s + x1 * c;
                }
            }
        }
    }
}
