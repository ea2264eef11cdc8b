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
use lastmile_core::panel::PanelMatrix;
use rayon::prelude::*;

use super::block::Heads;
use super::cache::HostKv;
use super::error::{LlamaError, LlamaResult};
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

/// Logits `[b·n, head rows]` and features (the head's input, `[b·n, d]`)
/// of `batch` through the first `layers` blocks, writing the new keys and
/// values into `kv` (one entry per block). The blocks read `input`
/// (`[b·n, d]`) when given, else the tokens' embeddings.
pub(crate) fn pass(
    model: &LlamaModel,
    kv: &mut [HostKv],
    batch: &HostBatch<'_>,
    layers: usize,
    input: Option<Vec<f32>>,
) -> LlamaResult<(Vec<f32>, Vec<f32>)> {
    let config = &model.config;
    let (d, eps) = (config.d_model, config.rms_eps);
    let rows = batch.ids.len();
    let heads = Heads {
        n_heads: config.n_heads,
        n_kv_heads: config.n_kv_heads,
        head_dim: config.head_dim(),
    };
    let mut x = match input {
        Some(x) => x,
        None => {
            let ids = Tensor::<1, Int>::from_data(
                TensorData::new(batch.ids.to_vec(), [rows]),
                &model.device,
            );
            values(model.embed.clone().select(0, ids).into_data())?
        }
    };
    for (block, kv) in model.blocks.iter().zip(kv).take(layers) {
        let h = avx2(Vectorized(|| rms_norm(&x, d, &block.attn_norm, eps)))?;
        let [mut q, mut k, v]: [Vec<f32>; 3] = each(
            &[host(&block.q)?, host(&block.k)?, host(&block.v)?],
            &h,
            rows,
        )?;
        avx2(Vectorized(|| {
            batch.rope.apply_host(&mut q, heads.n_heads, heads.head_dim);
            batch
                .rope
                .apply_host(&mut k, heads.n_kv_heads, heads.head_dim);
        }));
        write(kv, &k, &v, batch, config.max_context);
        let att = attention(&q, kv, batch, heads);
        add(&mut x, &host(&block.o)?.matmul(&att, rows)?);
        let h = avx2(Vectorized(|| rms_norm(&x, d, &block.ffn_norm, eps)))?;
        let [mut g, u]: [Vec<f32>; 2] = each(&[host(&block.gate)?, host(&block.up)?], &h, rows)?;
        avx2(Vectorized(|| swiglu_in_place(&mut g, &u)));
        add(&mut x, &host(&block.down)?.matmul(&g, rows)?);
    }
    let h = rms_norm(&x, d, &model.norm, eps)?;
    Ok((host(&model.head)?.matmul(&h, rows)?, h))
}

/// The panel matrix of a host storage's `m`.
fn host(m: &Matrix) -> LlamaResult<&PanelMatrix> {
    m.as_host().ok_or_else(|| LlamaError::Storage {
        storage: "a device storage".to_owned(),
        device: "the host pass (every matrix of a host storage is in host memory)".to_owned(),
    })
}

/// [`PanelMatrix::matmul_each`] as an array of `N` products.
fn each<const N: usize>(
    ms: &[&PanelMatrix; N],
    x: &[f32],
    rows: usize,
) -> LlamaResult<[Vec<f32>; N]> {
    PanelMatrix::matmul_each(ms, x, rows)?
        .try_into()
        .map_err(|_| {
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

/// Positions per block of the cached keys' layout.
const KEY_BLOCK: usize = 8;

/// Writes the new keys and values (`[b·n, n_kv·dh]`) at each row's
/// positions `offset .. offset + n` (positions past the context are
/// padding and dropped; their outputs are never read). Values are kept
/// `[position][n_kv·dh]`; keys in blocks of [`KEY_BLOCK`] positions,
/// `[block][n_kv·dh][KEY_BLOCK]`, so that a query's scores over a block
/// are one vector of running sums along the head's dimensions.
fn write(kv: &mut HostKv, k: &[f32], v: &[f32], batch: &HostBatch<'_>, max_context: usize) {
    let width = k.len() / batch.ids.len().max(1);
    let n = batch.n;
    for (row, &offset) in batch.offsets.iter().enumerate() {
        let end = (offset + n).min(max_context);
        let (keys, values) = (&mut kv.keys[row], &mut kv.values[row]);
        if values.len() < end * width {
            values.resize(end * width, 0.0);
        }
        let key_len = end.div_ceil(KEY_BLOCK) * width * KEY_BLOCK;
        if keys.len() < key_len {
            keys.resize(key_len, 0.0);
        }
        for p in offset..end {
            let i = row * n + p - offset;
            values[p * width..(p + 1) * width].copy_from_slice(&v[i * width..(i + 1) * width]);
            let block = &mut keys[p / KEY_BLOCK * width * KEY_BLOCK..];
            for (c, &x) in k[i * width..(i + 1) * width].iter().enumerate() {
                block[c * KEY_BLOCK + p % KEY_BLOCK] = x;
            }
        }
    }
}

/// Grouped-query attention (Ainslie et al. 2023) of each query row over its
/// row's cached positions `0 ..= offset + i` (causal), query head `j`
/// reading key/value head `j / (n_heads / n_kv_heads)`:
/// `softmax(q·kᵀ/√dh) v`, keys summed in position order. Returns
/// `[b·n, n_heads·dh]`.
fn attention(q: &[f32], kv: &HostKv, batch: &HostBatch<'_>, heads: Heads) -> Vec<f32> {
    let width = heads.n_kv_heads * heads.head_dim;
    let n = batch.n;
    // A unit of work is one row's query heads that read one key/value head,
    // so that a single row (a decoding step) is shared between threads too.
    let group_width = heads.n_heads / heads.n_kv_heads.max(1) * heads.head_dim;
    let groups = heads.n_kv_heads.max(1);
    let mut out = vec![0.0f32; q.len()];
    let one_unit = |(u, (q, out)): (usize, (&[f32], &mut [f32]))| {
        let i = u / groups;
        let (row, pos) = (i / n, batch.offsets[i / n] + i % n);
        let (keys, values) = (&kv.keys[row], &kv.values[row]);
        // Padding positions may run past the cache; their outputs are never read.
        let seen = (pos + 1).min(values.len() / width);
        let job = RowAttention {
            q,
            out,
            first_head: u % groups * (heads.n_heads / groups),
            keys: &keys[..seen.div_ceil(KEY_BLOCK) * width * KEY_BLOCK],
            values: &values[..seen * width],
            heads,
        };
        avx2(job);
    };
    // A few short rows are not worth handing between threads.
    if batch.ids.len() * (batch.offsets.iter().max().copied().unwrap_or(0) + n) >= 256 {
        q.par_chunks_exact(group_width)
            .zip(out.par_chunks_exact_mut(group_width))
            .enumerate()
            .for_each(one_unit);
    } else {
        q.chunks_exact(group_width)
            .zip(out.chunks_exact_mut(group_width))
            .enumerate()
            .for_each(one_unit);
    }
    out
}

/// One query row's attention, for its query heads `first_head..` in `q`
/// (the heads that read one key/value head), over `keys` (blocks of
/// [`KEY_BLOCK`] positions, as [`write`] lays them out) and `values`
/// (`[positions, n_kv_heads·dh]`), written into `out`.
struct RowAttention<'a> {
    q: &'a [f32],
    out: &'a mut [f32],
    first_head: usize,
    keys: &'a [f32],
    values: &'a [f32],
    heads: Heads,
}

/// Runs `op` compiled for AVX2 + FMA when the CPU has them: pulp inlines
/// its body into a function built with those features, so its loops
/// vectorise 8 wide instead of the baseline x86-64 build's 4 (measured in
/// `docs/benchmarks.md`: attention had been a sixth of a verify pass over
/// 8 tokens). Rust never reorders or fuses float operations, so the
/// results are the same on every path. A closure (through [`Vectorized`])
/// must be small enough for the compiler to inline; a large body is a
/// [`pulp::WithSimd`] whose `with_simd` is `#[inline(always)]` (measured:
/// attention as a closure was left outside, unvectorised).
#[inline(always)]
fn avx2<Op: pulp::WithSimd>(op: Op) -> Op::Output {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        return pulp::Simd::vectorize(simd, op);
    }
    op.with_simd(pulp::Scalar::new())
}

/// A small closure as pulp's operation, for [`avx2`].
struct Vectorized<F>(F);

impl<R, F: FnOnce() -> R> pulp::WithSimd for Vectorized<F> {
    type Output = R;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> R {
        (self.0)()
    }
}

impl pulp::WithSimd for RowAttention<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        self.run();
    }
}

impl RowAttention<'_> {
    #[inline(always)]
    fn run(self) {
        let Heads {
            n_heads,
            n_kv_heads,
            head_dim: dh,
        } = self.heads;
        let (group, width) = (n_heads / n_kv_heads, n_kv_heads * dh);
        let scale = 1.0 / (dh as f32).sqrt();
        let seen = self.values.len() / width.max(1);
        let mut blocks = vec![0.0f32; self.keys.len() / width.max(1)];
        for (j, (qh, oh)) in self
            .q
            .chunks_exact(dh)
            .zip(self.out.chunks_exact_mut(dh))
            .enumerate()
        {
            let at = (self.first_head + j) / group * dh;
            // A block of positions' scores at once: one vector of running
            // sums per dimension modulo 4 (four short chains of additions;
            // a tail of fewer than 4 into the first), added in a fixed order.
            let keys = self.keys.chunks_exact(width * KEY_BLOCK);
            for (s, block) in blocks.as_chunks_mut::<KEY_BLOCK>().0.iter_mut().zip(keys) {
                let mut acc = [[0.0f32; KEY_BLOCK]; 4];
                let dims = &block[at * KEY_BLOCK..(at + dh) * KEY_BLOCK];
                let (q4, q_tail) = qh.as_chunks::<4>();
                let (k4, k_tail) = dims.as_chunks::<{ 4 * KEY_BLOCK }>();
                for (q, k) in q4.iter().zip(k4) {
                    for (i, a) in acc.iter_mut().enumerate() {
                        for l in 0..KEY_BLOCK {
                            a[l] += q[i] * k[i * KEY_BLOCK + l];
                        }
                    }
                }
                for (q, k) in q_tail.iter().zip(k_tail.chunks_exact(KEY_BLOCK)) {
                    for l in 0..KEY_BLOCK {
                        acc[0][l] += q * k[l];
                    }
                }
                for l in 0..KEY_BLOCK {
                    s[l] = ((acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l])) * scale;
                }
            }
            let scores = &mut blocks[..seen];
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
            // Exponentials first (a loop that vectorises), then their sum in order.
            for s in scores.iter_mut() {
                *s = exp(*s - max);
            }
            let total: f32 = scores.iter().sum();
            for s in scores.iter_mut() {
                *s /= total;
            }
            // o[e] = Σ_t p_t·v_t[e] in position order, 64 outputs at a time
            // (8 vectors in registers: 8 independent chains of additions).
            let (o64, o_tail) = oh.as_chunks_mut::<64>();
            for (c, oc) in o64.iter_mut().enumerate() {
                let mut acc = *oc;
                let from = at + 64 * c;
                for (p, v) in scores.iter().zip(self.values.chunks_exact(width)) {
                    let v = &v[from..from + 64];
                    for l in 0..64 {
                        acc[l] += p * v[l];
                    }
                }
                *oc = acc;
            }
            let done = 64 * o64.len();
            for (e, o) in o_tail.iter_mut().enumerate() {
                for (p, v) in scores.iter().zip(self.values.chunks_exact(width)) {
                    *o += p * v[at + done + e];
                }
            }
        }
    }
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

    /// Blocked keys and the attention over them against a naive softmax:
    /// 4 query heads of 6 dimensions (a tail of 2 past the groups of 4)
    /// over 2 key/value heads, 11 cached positions (a partial block of
    /// keys) written by two passes, for the last 3 query positions.
    #[cfg(feature = "flex")]
    #[test]
    fn attention_over_blocked_keys_is_the_naive_softmax() {
        let heads = Heads {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 6,
        };
        let (width, positions) = (12, 11);
        let value = |i: usize| ((i * 37 % 23) as f32 - 11.0) * 0.11;
        let k: Vec<f32> = (0..positions * width).map(value).collect();
        let v: Vec<f32> = (0..positions * width).map(|i| value(i + 5)).collect();
        let device = burn::tensor::Device::flex();
        let rope = super::super::rope::Rope::new(6, 16, 1e4, &device).at_host(&[0]);
        let mut kv = HostKv {
            keys: vec![Vec::new()],
            values: vec![Vec::new()],
        };
        for (offset, n) in [(0, 8), (8, 3)] {
            let ids = vec![0i64; n];
            let batch = HostBatch {
                ids: &ids,
                rope: &rope,
                offsets: &[offset],
                n,
            };
            let at = offset * width..(offset + n) * width;
            write(&mut kv, &k[at.clone()], &v[at], &batch, 16);
        }
        let q: Vec<f32> = (0..3 * 24).map(|i| value(i + 11)).collect();
        let ids = vec![0i64; 3];
        let batch = HostBatch {
            ids: &ids,
            rope: &rope,
            offsets: &[8],
            n: 3,
        };
        let got = attention(&q, &kv, &batch, heads);
        for i in 0..3 {
            let seen = 8 + i + 1;
            for j in 0..4 {
                let (qh, at) = (&q[i * 24 + j * 6..i * 24 + j * 6 + 6], j / 2 * 6);
                let s: Vec<f64> = (0..seen)
                    .map(|t| {
                        let key = &k[t * width + at..t * width + at + 6];
                        let d: f64 = qh.iter().zip(key).map(|(a, b)| f64::from(a * b)).sum();
                        d / 6f64.sqrt()
                    })
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let total: f64 = e.iter().sum();
                for c in 0..6 {
                    let want: f64 = (0..seen)
                        .map(|t| e[t] / total * f64::from(v[t * width + at + c]))
                        .sum();
                    let have = f64::from(got[i * 24 + j * 6 + c]);
                    assert!(
                        (have - want).abs() < 1e-5,
                        "row {i} head {j} dim {c}: {have} vs {want}"
                    );
                }
            }
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
