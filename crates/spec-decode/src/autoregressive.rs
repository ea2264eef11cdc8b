//! The autoregressive baseline: the target alone, one token per forward.

use std::time::Instant;

use lastmile_core::lm::{LanguageModel, check_last_logits_shape};
use lastmile_core::numerics::sample_categorical_on_device;
use rand::Rng;

use crate::decoder::{Generation, GenerationConfig, Row, finish, sync_row, validate_prompts};
use crate::error::Result;
use crate::greedy::{Greedy, GreedyRow, greedy_rows};
use crate::metrics::Metrics;
use crate::sampled::{Tempered, draw, tempered_rows};
use crate::verify::{index_tensor, locate_logits_fault, logits_fault, non_finite_flag, read_ints};

/// Plain autoregressive decoding with the target alone: the baseline and
/// the reference for exactness tests.
///
/// One forward per token (the whole prompt in the first), logits read at
/// each row's last position only ([`LanguageModel::forward_last`]). Greedy picks the
/// argmax; sampling draws from `config.sampling().probabilities(..)`
/// with one categorical draw per sequence per step (one uniform each, in
/// row order). Device synchronisations: one per step (the tokens, read back
/// with a flag for NaN or fully masked logits).
///
/// # Errors
/// As [`SpeculativeDecoder::generate`](crate::SpeculativeDecoder::generate).
///
/// ```
/// # #[cfg(feature = "flex")] {
/// # use burn::tensor::{Device, Tensor, TensorData};
/// # use lastmile_spec_decode::{LanguageModel, LmResult};
/// # struct Unigram { logits: Vec<f32>, device: Device }
/// # impl LanguageModel for Unigram {
/// #     type Cache = Vec<usize>;
/// #     fn vocab_size(&self) -> usize { self.logits.len() }
/// #     fn device(&self) -> Device { self.device.clone() }
/// #     fn new_cache(&self, batch: usize) -> LmResult<Vec<usize>> { Ok(vec![0; batch]) }
/// #     fn cached_len(&self, c: &Vec<usize>, row: usize) -> usize { c[row] }
/// #     fn truncate(&self, c: &mut Vec<usize>, row: usize, len: usize) -> LmResult<()> { c[row] = c[row].min(len); Ok(()) }
/// #     fn forward(&self, c: &mut Vec<usize>, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
/// #         let n = tokens.iter().map(Vec::len).max().unwrap_or(0);
/// #         for (l, t) in c.iter_mut().zip(tokens) { *l += t.len(); }
/// #         let data: Vec<f32> = (0..tokens.len() * n).flat_map(|_| self.logits.clone()).collect();
/// #         Ok(Tensor::from_data(TensorData::new(data, [tokens.len(), n, self.logits.len()]), &self.device))
/// #     }
/// # }
/// use lastmile_core::numerics::SamplingParams;
/// use lastmile_spec_decode::{GenerationConfig, generate_autoregressive};
/// use rand::{SeedableRng, rngs::StdRng};
/// let lm = Unigram { logits: vec![0.0, 2.0, 1.0], device: Device::flex() };
/// let config = GenerationConfig::new(SamplingParams::greedy(), 3).unwrap();
/// let out = generate_autoregressive(&lm, &[vec![0]], &config, &mut StdRng::seed_from_u64(0)).unwrap();
/// assert_eq!(out.tokens[0], vec![1, 1, 1]);
/// assert_eq!(out.metrics.target_calls_per_token(), 1.0);
/// # }
/// ```
pub fn generate_autoregressive<M: LanguageModel, R: Rng + ?Sized>(
    model: &M,
    prompts: &[Vec<usize>],
    config: &GenerationConfig,
    rng: &mut R,
) -> Result<Generation> {
    let start = Instant::now();
    let vocab = model.vocab_size();
    validate_prompts(prompts, vocab, config.max_new_tokens(), model.max_context())?;
    let batch = prompts.len();
    let device = model.device();
    let mut cache = model.new_cache(batch)?;
    // The policy is never consulted: no drafts.
    let mut rows: Vec<Row> = prompts
        .iter()
        .map(|p| Row::new(p, Box::new(crate::policy::StaticLength { gamma: 1 })))
        .collect();
    let mut metrics = Metrics::default();
    let mut first_round = true;
    while rows.iter().any(|r| !r.done) {
        let mut feed = vec![Vec::new(); batch];
        for (i, row) in rows.iter_mut().enumerate() {
            if !row.done {
                feed[i] = sync_row(model, &mut cache, i, row)?;
            }
        }
        // Only each row's last position is read: the prompt's pass runs
        // the model's head on its last token alone.
        let logits = model.forward_last(&mut cache, &feed, 1)?;
        check_last_logits_shape(&logits, batch, 1, vocab)?;
        let active: Vec<usize> = (0..batch).filter(|i| !rows[*i].done).collect();
        let pick: Vec<usize> = active.clone();
        let logits = logits.reshape([batch, vocab]);
        // One read: rows in host memory decided on the host, in place
        // (crate::greedy, crate::sampled); otherwise the tokens with a flag
        // for NaN / fully masked logits.
        let (host_best, logits) = if config.sampling().is_greedy() {
            greedy_rows(logits, &pick, false)?
        } else {
            match tempered_rows(logits, &pick, config.sampling())? {
                (Tempered::Rows(probs), logits) => {
                    let tokens = draw(&probs, vocab, rng);
                    let found = tokens.into_iter().map(GreedyRow::token).collect();
                    (Greedy::Rows(found), logits)
                }
                (Tempered::Fault, logits) => (Greedy::Fault, logits),
                (Tempered::NotHost, logits) => (Greedy::NotHost, logits),
            }
        };
        let host = match host_best {
            Greedy::Rows(found) => found.iter().map(|g| g.token).collect(),
            Greedy::Fault => {
                let last = logits.select(0, index_tensor(&pick, &device)?);
                let probs = config.sampling().probabilities_unchecked(last.clone())?;
                return Err(locate_logits_fault("target", &last, probs));
            }
            Greedy::NotHost => {
                let last = logits.select(0, index_tensor(&pick, &device)?);
                let probs = config.sampling().probabilities_unchecked(last.clone())?;
                let tokens = if config.sampling().is_greedy() {
                    probs.clone().argmax(1).reshape([active.len()])
                } else {
                    sample_categorical_on_device(probs.clone(), rng)?
                };
                let fault = non_finite_flag(probs.clone()) + logits_fault(&last);
                let host = read_ints(vec![tokens, fault], active.len() + 1)?;
                if host[active.len()] != 0 {
                    return Err(locate_logits_fault("target", &last, probs));
                }
                host
            }
        };
        let tokens = &host[..active.len()];
        for (a, &i) in active.iter().enumerate() {
            let row = &mut rows[i];
            row.target_fed.extend_from_slice(&feed[i]);
            metrics.generated_tokens += row.commit(&[tokens[a]], config) as u64;
            metrics.target_calls += 1;
        }
        if std::mem::take(&mut first_round) {
            metrics.end_prefill(start);
        }
    }
    Ok(finish(rows, metrics, start))
}
