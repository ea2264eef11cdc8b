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
//! `f32`; scaling for a longer context ([`RopeScaling`]) then changes the
//! angle as ggml's `rope_yarn` does.

use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};

/// How the rotary angles are scaled for a context longer than the model
/// was trained on (llama.cpp's `rope.scaling.*` keys), with `s = 1 / factor`
/// (ggml's `freq_scale`) and `φ_i = p·θ_i / f_i` the unscaled angle of pair
/// `i`.
///
/// ```
/// use lastmile_models::llama::RopeScaling;
/// assert_eq!(RopeScaling::Linear { factor: 4.0 }.factor(), 4.0);
/// assert_eq!(RopeScaling::None.factor(), 1.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum RopeScaling {
    /// The angles as trained.
    #[default]
    None,
    /// Linear scaling (position interpolation, Chen et al. 2023, eq. 4):
    /// `s · φ_i`.
    Linear {
        /// The context's growth; angles are divided by it.
        factor: f32,
    },
    /// YaRN (Peng et al. 2023, §3.2 "NTK-by-parts" and §3.4's attention
    /// temperature), as ggml computes it: with `d` the head width and
    /// `c(r) = d · ln(L / (2π r)) / (2 ln θ)` the pair that turns `r` times
    /// over the original context `L`, pairs below `lo = ⌊c(32)⌋` keep
    /// `φ_i`, pairs above `hi = ⌈c(1)⌉` take `s · φ_i`, a linear ramp
    /// mixes the two between, and cosines and sines are multiplied by
    /// `1 + 0.1 ln factor`.
    Yarn {
        /// The context's growth.
        factor: f32,
        /// The context the model was trained on, `L`.
        original_context: usize,
    },
}

impl RopeScaling {
    /// The factor (1 without scaling).
    pub fn factor(self) -> f32 {
        match self {
            Self::None => 1.0,
            Self::Linear { factor } | Self::Yarn { factor, .. } => factor,
        }
    }
}

/// ggml's defaults for YaRN's ramp (`beta_fast`, `beta_slow`), which
/// llama.cpp uses for the `llama` and `qwen2` architectures.
const YARN_BETA_FAST: f32 = 32.0;
const YARN_BETA_SLOW: f32 = 1.0;

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
    /// ensures), then scaled by `scaling`.
    ///
    /// [`LlamaConfig::check`]: super::LlamaConfig::check
    pub(crate) fn new(
        head_dim: usize,
        max_context: usize,
        base: f32,
        factors: &[f32],
        scaling: RopeScaling,
        device: &Device,
    ) -> Self {
        let half = head_dim / 2;
        let scale = base.powf(-2.0 / head_dim as f32);
        // ggml's `freq_scale`, and for YaRN its ramp's ends and magnitude
        // (the f32 operations of `ggml_rope_yarn_corr_dims`, `rope_yarn`
        // and llama.cpp's attention factor, which cancels to 1 for a factor > 1).
        let freq_scale = 1.0 / scaling.factor();
        let yarn = match scaling {
            RopeScaling::Yarn {
                original_context, ..
            } => {
                let d = head_dim as f32;
                let corr = |r: f32| {
                    d * (original_context as f32 / (r * 2.0 * std::f32::consts::PI)).ln()
                        / (2.0 * base.ln())
                };
                let lo = corr(YARN_BETA_FAST).floor().max(0.0);
                let hi = corr(YARN_BETA_SLOW).ceil().min(d - 1.0);
                let factor = 1.0 / freq_scale;
                let attn = if factor <= 1.0 {
                    1.0
                } else {
                    0.1 * factor.ln() + 1.0
                } * (1.0 / (1.0 + 0.1 * factor.ln()));
                let mscale = attn * (1.0 + 0.1 * (1.0 / freq_scale).ln());
                Some((lo, hi, mscale))
            }
            _ => None,
        };
        let mut cos = Vec::with_capacity(max_context * half);
        let mut sin = Vec::with_capacity(max_context * half);
        for p in 0..max_context {
            let mut theta = p as f32;
            for i in 0..half {
                let extrap = factors.get(i).map_or(theta, |f| theta / f);
                let interp = freq_scale * extrap;
                let (angle, mscale) = match yarn {
                    Some((lo, hi, mscale)) => {
                        let y = (i as f32 - lo) / (hi - lo).max(0.001);
                        let ramp = 1.0 - y.clamp(0.0, 1.0);
                        (interp * (1.0 - ramp) + extrap * ramp, mscale)
                    }
                    None => (interp, 1.0),
                };
                cos.push(angle.cos() * mscale);
                sin.push(angle.sin() * mscale);
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
