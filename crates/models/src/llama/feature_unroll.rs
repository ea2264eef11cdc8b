//! The training-time test of a feature draft (EAGLE-3: Li et al. 2025,
//! "EAGLE-3: Scaling up Inference Acceleration of Large Language Models via
//! Training-Time Test", §3.2; the same alignment as HASS, Zhang et al.
//! 2024, "Learning Harmonized Representations for Speculative Sampling"):
//! the draft's training forward unrolled over several drafting steps, each
//! reading the features the step before predicted, with the attention each
//! drafted position has at inference.
//!
//! Why: a draft trained on the target's true features only (EAGLE-1) sees
//! its own, imperfect predictions for the first time when it drafts its
//! second token, and its later tokens are rarely accepted. Unrolled, the
//! training sees exactly what drafting sees.

use burn::tensor::{Bool, Device, Tensor, TensorData};
use lastmile_core::CoreError;

use super::block::{BlockWeights, Heads};
use super::error::{LlamaError, LlamaResult};
use super::feature_train::LlamaFeatureDraftModule;

/// Most drafting steps [`LlamaFeatureDraftModule::forward_unrolled`] unrolls.
pub const MAX_UNROLL: usize = 16;

impl LlamaFeatureDraftModule {
    /// The training forward unrolled over `steps` drafting steps: `tokens`
    /// `[b][n]` (whole windows, each from position 0) and the target's
    /// features before them, `features` `[b, n, d]`; returns, per step,
    /// the head's logits `[b, n, head rows]` and the predicted features
    /// `[b, n, d]`. Step 0 is [`LlamaFeatureDraftModule::forward`].
    ///
    /// Step `s ≥ 1` at position `p` reads token `x_p` and the feature that
    /// step `s − 1` predicted at `p − 1` (zeros at `p = 0`): the draft's
    /// `s + 1`-th token of a run that started at `p − s`, when its earlier
    /// tokens were right. Its attention sees what it sees at inference:
    /// the keys of step 0 (read from the target's true features, as the
    /// cache holds them for committed tokens) at positions `≤ p − s`, and
    /// the key of step `k` at position `p − s + k` for `k = 1..=s` (the
    /// run's drafted positions, itself last). Gradients flow through the
    /// chain of predicted features.
    ///
    /// # Errors
    /// As [`LlamaFeatureDraftModule::forward`]; [`LlamaError::Config`] for
    /// `steps` outside `1..=`[`MAX_UNROLL`].
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::{Device, Tensor};
    /// use lastmile_models::llama::{LlamaConfig, LlamaFeatureDraftModule, WeightStorage};
    /// let d = Device::flex();
    /// let target = LlamaConfig::tiny().init_random(1, WeightStorage::F32, &d)?;
    /// let module = LlamaFeatureDraftModule::new(&target, 1, None, &d)?;
    /// let width = target.config().d_model;
    /// let steps = module.forward_unrolled(&[vec![5, 6, 7]], Tensor::zeros([1, 3, width], &d), 3)?;
    /// assert_eq!(steps.len(), 3);
    /// assert_eq!(steps[2].1.dims(), [1, 3, width]);
    /// # }
    /// # Ok::<(), lastmile_models::llama::LlamaError>(())
    /// ```
    pub fn forward_unrolled(
        &self,
        tokens: &[Vec<usize>],
        features: Tensor<3>,
        steps: usize,
    ) -> LlamaResult<Vec<(Tensor<3>, Tensor<3>)>> {
        if !(1..=MAX_UNROLL).contains(&steps) {
            return Err(LlamaError::Config {
                field: "unrolled steps",
                value: steps.to_string(),
                expected: format!("1..={MAX_UNROLL}"),
            });
        }
        let e = self.lm.embed_tokens(tokens)?;
        let [b, n, d] = e.dims();
        if features.dims() != [b, n, d] {
            return Err(LlamaError::Core(CoreError::ShapeMismatch {
                what: "draft features".to_owned(),
                expected: format!("{:?} (the tokens' rows, lengths, d_model)", [b, n, d]),
                found: features.dims().to_vec(),
            }));
        }
        let device = e.device();
        let (heads, rope) = (self.lm.config.heads(), self.lm.rope(b, n, &device));
        let residual = self.lm.config.scales.residual;
        // Keys and values of every step so far, per block.
        let mut kv: Vec<(Vec<Tensor<4>>, Vec<Tensor<4>>)> =
            vec![(Vec::new(), Vec::new()); self.lm.blocks.len()];
        let mut outputs = Vec::with_capacity(steps);
        let mut input = features;
        for step in 0..steps {
            let mask = unrolled_mask(b, n, step, heads, &device);
            let mut x = self.fc.forward(Tensor::cat(vec![e.clone(), input], 2));
            for (layer, (block, (keys, values))) in self.lm.blocks.iter().zip(&mut kv).enumerate() {
                let rotates = self.lm.config.rotates(layer).then_some(&rope);
                let (q, k, v) = block.qkv(x.clone(), heads, rotates)?;
                keys.push(k);
                values.push(v);
                let kv = (Tensor::cat(keys.clone(), 2), Tensor::cat(values.clone(), 2));
                x = block.finish(x, q, kv, mask.clone(), heads, residual)?;
            }
            let (logits, predicted) = self.lm.output(x);
            // The next step reads, at p, this step's prediction at p − 1.
            input = Tensor::cat(
                vec![
                    Tensor::zeros([b, 1, d], &device),
                    predicted.clone().slice([0..b, 0..n - 1, 0..d]),
                ],
                1,
            );
            outputs.push((logits, predicted));
        }
        Ok(outputs)
    }
}

/// The attention mask of unrolled step `step` over `n` positions per row:
/// `[b, n_kv_heads, g·n, (step + 1)·n]`, `true` = hidden, query rows
/// ordered `(group member, position)` as [`super::block::causal_mask`],
/// keys ordered `(step k, position j)`. Query position `p` sees step 0's
/// keys at `j ≤ p − step` and step `k ≥ 1`'s key at `j = p − step + k`.
fn unrolled_mask(
    b: usize,
    n: usize,
    step: usize,
    heads: Heads,
    device: &Device,
) -> Tensor<4, Bool> {
    let rows = heads.n_heads / heads.n_kv_heads * n;
    let total = (step + 1) * n;
    let mask: Vec<bool> = (0..rows * total)
        .map(|i| {
            let (p, key) = ((i / total) % n, i % total);
            let (k, j) = (key / n, key % n);
            let visible = if k == 0 {
                j + step <= p
            } else {
                j + step == p + k
            };
            !visible
        })
        .collect();
    Tensor::<4, Bool>::from_data(TensorData::new(mask, [1, 1, rows, total]), device).expand([
        b,
        heads.n_kv_heads,
        rows,
        total,
    ])
}
