//! The forward pass of the host storages ([`super::WeightStorage::is_host`])
//! in host memory: every product is lastmile's panel kernel, and the parts
//! between products (RMSNorm, RoPE, the cache, attention, the SwiGLU gate,
//! the residuals) are plain loops over the same vectors, with no tensor
//! operations between them.
//!
//! Two reasons. **Speed:** a pass over a few tokens is ~400 tensor
//! operations of a few thousand elements, each with a fixed cost; as loops
//! they cost a fraction of the products (measured on SmolLM2-135M in
//! `docs/benchmarks.md`). **Chunking invariance:** each query row's
//! attention sums its keys in one fixed order whatever the pass's shape,
//! and every other step is row by row, so a token's logits do not depend on
//! how the tokens were split into passes. With
//! [`super::WeightStorage::BlocksQ8`] this matters: a last-bit difference in
//! attention can flip an 8-bit activation code, and the flips grow through
//! the blocks (measured: 1.7 logits between chunkings through burn's
//! attention), so a verify pass would disagree with decoding one token at a
//! time. Here the logits are bit-identical (tested), which keeps greedy
//! speculative decoding identical to greedy decoding.
//!
//! The equations are those of [`super::block`] (RMSNorm, RoPE, grouped-query
//! attention, SwiGLU); `tests/it/llama_interface.rs` checks this pass against
//! the tensor pass.

use burn::tensor::{Int, Tensor, TensorData};
use lastmile_core::fastmath::exp;
use lastmile_core::panel::{PanelMatrix, Team};
use lastmile_core::simd::{Vectorized, vectorize};

use super::cache::HostKv;
use super::error::{LlamaError, LlamaResult};
use super::host_attention::{attention, write};
use super::model::LlamaModel;
use super::norm::RmsNorm;
use super::rope::HostRope;
use super::storage::Matrix;

/// One pass's tokens: `b` rows of `n` (padded) tokens starting at `offsets`.
pub(crate) struct HostBatch<'a> {
    pub(crate) ids: &'a [i64],
    pub(crate) rope: &'a HostRope,
    pub(crate) offsets: &'a [usize],
    pub(crate) n: usize,
}

/// A feature-level draft's input in host memory (see
/// [`super::layer_input::LayerInput::Fused`]): the blocks read
/// `fc · [e(x_j); f_{j-1}]`, computed by the pass's team.
pub(crate) struct Fusion<'a> {
    pub(crate) fc: &'a PanelMatrix,
    /// `[b·n, d]`, row-major.
    pub(crate) features: Vec<f32>,
}

/// Logits `[b·n, head rows]` (or of the rows `head_rows` of the `b·n`
/// only, in their order) and features (the head's input, `[b·n, d]`) of
/// `batch` through the first `layers` blocks, writing the new keys and
/// values into `kv` (one entry per block). The blocks read the tokens'
/// embeddings, fused with `input`'s features when given.
pub(crate) fn pass(
    model: &LlamaModel,
    kv: &mut [HostKv],
    batch: &HostBatch<'_>,
    (layers, head_rows): (usize, Option<&[usize]>),
    input: Option<Fusion<'_>>,
) -> LlamaResult<(Vec<f32>, Vec<f32>)> {
    let config = &model.config;
    let (d, eps) = (config.d_model, config.rms_eps);
    let rows = batch.ids.len();
    let heads = config.heads();
    let scales = config.scales;
    // One team of threads for the whole pass (see `Team`): its products
    // are shared out without waking sleeping workers.
    Team::run(|team| {
        let ids =
            Tensor::<1, Int>::from_data(TensorData::new(batch.ids.to_vec(), [rows]), &model.device);
        let mut embedded = values(model.embed.clone().select(0, ids).into_data())?;
        scale(&mut embedded, scales.embedding);
        let mut x = match input {
            None => embedded,
            Some(Fusion { fc, features }) => {
                let fused: Vec<f32> = embedded
                    .chunks_exact(d)
                    .zip(features.chunks_exact(d))
                    .flat_map(|(e, f)| e.iter().chain(f).copied())
                    .collect();
                team.matmul(fc, &fused, rows)?
            }
        };
        for (layer, (block, kv)) in model.blocks.iter().zip(kv).take(layers).enumerate() {
            let h = vectorize(Vectorized(|| rms_norm(&x, d, &block.attn_norm, eps)))?;
            let [mut q, mut k, mut v]: [Vec<f32>; 3] = each(
                team,
                &[host(&block.q)?, host(&block.k)?, host(&block.v)?],
                &h,
                rows,
            )?;
            for (y, m) in [(&mut q, &block.q), (&mut k, &block.k), (&mut v, &block.v)] {
                if let Some(bias) = m.bias() {
                    add_bias(y, bias);
                }
            }
            // Qwen3: each head's queries and keys normalised before RoPE.
            if let Some(norm) = &block.q_norm {
                q = vectorize(Vectorized(|| rms_norm(&q, heads.head_dim, norm, eps)))?;
            }
            if let Some(norm) = &block.k_norm {
                k = vectorize(Vectorized(|| rms_norm(&k, heads.head_dim, norm, eps)))?;
            }
            // SmolLM3's every fourth block attends without rotary positions.
            if config.rotates(layer) {
                vectorize(Vectorized(|| {
                    batch.rope.apply_host(&mut q, heads.n_heads, heads.head_dim);
                    batch
                        .rope
                        .apply_host(&mut k, heads.n_kv_heads, heads.head_dim);
                }));
            }
            write(kv, &k, &v, batch, heads, config.max_context);
            let att = attention(&q, kv, batch, heads);
            add_scaled(
                &mut x,
                team.matmul(host(&block.o)?, &att, rows)?,
                scales.residual,
            );
            let h = vectorize(Vectorized(|| rms_norm(&x, d, &block.ffn_norm, eps)))?;
            // The gate applied by each task to its panels (see `Team::matmul_zip`).
            let g = team.matmul_zip(host(&block.gate)?, host(&block.up)?, &h, rows, swiglu)?;
            add_scaled(
                &mut x,
                team.matmul(host(&block.down)?, &g, rows)?,
                scales.residual,
            );
        }
        let h = rms_norm(&x, d, &model.norm, eps)?;
        let mut logits = match head_rows {
            Some(kept) => {
                let x: Vec<f32> = kept
                    .iter()
                    .flat_map(|&r| &h[r * d..(r + 1) * d])
                    .copied()
                    .collect();
                team.matmul(host(&model.head)?, &x, kept.len())?
            }
            None => team.matmul(host(&model.head)?, &h, rows)?,
        };
        scale(&mut logits, 1.0 / scales.logit);
        Ok((logits, h))
    })
}

/// The panel matrix of a host storage's `m`.
fn host(m: &Matrix) -> LlamaResult<&PanelMatrix> {
    m.as_host().ok_or_else(|| LlamaError::Storage {
        storage: "a device storage".to_owned(),
        device: "the host pass (every matrix of a host storage is in host memory)".to_owned(),
    })
}

/// [`Team::matmul_each`] as an array of `N` products.
fn each<'t, const N: usize>(
    team: &Team<'t>,
    ms: &[&'t PanelMatrix; N],
    x: &[f32],
    rows: usize,
) -> LlamaResult<[Vec<f32>; N]> {
    team.matmul_each(ms, x, rows)?.try_into().map_err(|_| {
        LlamaError::Core(lastmile_core::CoreError::ShapeMismatch {
            what: "shared-input products".to_owned(),
            expected: format!("{N} products"),
            found: vec![],
        })
    })
}

/// `x += y`.
fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `x += y · f` (Granite's residual scale; a plain add for `f = 1`, so
/// other architectures' values are unchanged to the bit).
fn add_scaled(x: &mut [f32], mut y: Vec<f32>, f: f32) {
    scale(&mut y, f);
    add(x, &y);
}

/// `x · f` in place; nothing for `f = 1` ([`super::Scales`] at its defaults).
fn scale(x: &mut [f32], f: f32) {
    if f != 1.0 {
        for v in x {
            *v *= f;
        }
    }
}

/// `bias` added to each row of `y` (rows of `bias.len()`).
fn add_bias(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        add(row, bias);
    }
}

/// RMSNorm (Zhang & Sennrich 2019, eq. 4) of each row of `x` (`d` wide):
/// `x · 1/√(mean(x²) + ε) · g`, the operations of [`RmsNorm::forward`].
#[inline(always)]
fn rms_norm(x: &[f32], d: usize, norm: &RmsNorm, eps: f32) -> LlamaResult<Vec<f32>> {
    let gain = match norm.host_gain.get() {
        Some(g) => g,
        None => norm
            .host_gain
            .get_or_init(|| values(norm.gain().into_data()).unwrap_or_default()),
    };
    if gain.len() != d {
        return Err(LlamaError::Core(lastmile_core::CoreError::ShapeMismatch {
            what: "RMSNorm gain in host memory".to_owned(),
            expected: format!("{d} f32 values"),
            found: vec![gain.len()],
        }));
    }
    let mut y = vec![0.0f32; x.len()];
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let mean_sq = dot(xr, xr) / d as f32;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        for ((o, v), g) in yr.iter_mut().zip(xr).zip(gain) {
            *o = v * inv * g;
        }
    }
    Ok(y)
}

/// `Σ a·b` in a fixed order that vectorises: 8 running lanes over whole
/// groups of 8, the lanes in order, then the tail (the same order for a
/// row whatever the pass it is in).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, a_tail) = a.as_chunks::<8>();
    let (b8, b_tail) = b.as_chunks::<8>();
    for (x, y) in a8.iter().zip(b8) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut sum = lanes.iter().sum::<f32>();
    for (x, y) in a_tail.iter().zip(b_tail) {
        sum += x * y;
    }
    sum
}

/// `data`'s values as an f32 vector (a CPU tensor's data is host memory).
fn values(data: TensorData) -> LlamaResult<Vec<f32>> {
    let shape = data.shape().to_vec();
    data.try_into_vec::<f32>().map_err(|e| {
        LlamaError::Core(lastmile_core::CoreError::ShapeMismatch {
            what: format!("activations for the host pass ({e:?})"),
            expected: "f32 values".to_owned(),
            found: shape,
        })
    })
}

/// [`swiglu_in_place`] vectorised (see [`lastmile_core::simd`]).
fn swiglu(g: &mut [f32], u: &[f32]) {
    vectorize(Vectorized(|| swiglu_in_place(g, u)));
}

/// `g ← SiLU(g) ⊙ u`, SwiGLU's gate (Shazeer 2020, eq. 6), with
/// `SiLU(x) = x / (1 + e^(−x))` and [`lastmile_core::fastmath::exp`].
#[inline(always)]
pub(crate) fn swiglu_in_place(g: &mut [f32], u: &[f32]) {
    for (g, u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swiglu_matches_the_formula() {
        let mut g: Vec<f32> = (-40..40).map(|i| i as f32 * 0.37).collect();
        let u: Vec<f32> = (0..80).map(|i| 1.0 - i as f32 * 0.03).collect();
        let want: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| {
                let g = f64::from(g);
                g / (1.0 + (-g).exp()) * f64::from(u)
            })
            .collect();
        swiglu_in_place(&mut g, &u);
        for (a, b) in g.iter().zip(&want) {
            assert!(
                (f64::from(*a) - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "{a} vs {b}"
            );
        }
    }

    #[test]
    fn dot_is_the_dot_product() {
        let a: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let ones = vec![1.0f32; 37];
        assert_eq!(dot(&a, &ones), 666.0);
        assert_eq!(dot(&a[..3], &a[..3]), 5.0);
        assert_eq!(dot(&[], &[]), 0.0);
    }
}
