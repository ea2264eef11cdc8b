//! Text to train and check drafts of SmolLM2 on: the Rust book's token
//! streams, windows of them, and text the target writes itself.

use anyhow::Result;
use burn::tensor::Tensor;
use lastmile_core::numerics::{SamplingParams, sample_categorical};
use lastmile_datasets::TextCorpus;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::llm::Llm;
use crate::report::progress_bar;

/// The Rust book shipped with `lastmile-datasets` (5 % held out), as the
/// target's tokens: `(training, validation)`.
///
/// # Errors
/// When the corpus cannot be read.
pub fn book_tokens(llm: &Llm) -> Result<(Vec<usize>, Vec<usize>)> {
    let corpus = TextCorpus::rust_book(0.05)?;
    let text = |bytes: &[u32]| {
        String::from_utf8_lossy(&bytes.iter().map(|t| *t as u8).collect::<Vec<_>>()).into_owned()
    };
    Ok((
        llm.tokenizer.encode(&text(corpus.train()), false, false),
        llm.tokenizer
            .encode(&text(corpus.validation()), false, false),
    ))
}

/// `count` windows of `len` tokens of `tokens` at uniform offsets.
///
/// ```
/// use rand::{SeedableRng, rngs::StdRng};
/// let w = lastmile_examples::draft_text::sample_windows(&mut StdRng::seed_from_u64(0), &[1, 2, 3, 4, 5], 3, 2);
/// assert!(w.iter().all(|w| w.len() == 2 && w[1] == w[0] + 1));
/// ```
pub fn sample_windows(
    rng: &mut StdRng,
    tokens: &[usize],
    count: usize,
    len: usize,
) -> Vec<Vec<usize>> {
    (0..count)
        .map(|_| {
            let s = rng.random_range(0..tokens.len() - len);
            tokens[s..s + len].to_vec()
        })
        .collect()
}

/// Instructions wrapped around training passages for the chat half of the
/// target-generated text.
pub const INSTRUCTIONS: [&str; 4] = [
    "Summarize this passage in two sentences:",
    "Explain the following to a beginner:",
    "What is the main point of this text?",
    "Rewrite this more simply:",
];

/// `count` texts written by the target (the distillation data of
/// DistillSpec's "target-generated" setting): each a training passage
/// (64 tokens at a random offset), as a chat message under one of
/// [`INSTRUCTIONS`] (even indices) or as plain text to continue (odd),
/// followed by up to `new_tokens` tokens the target samples at T = 0.7
/// (stopping at its end-of-turn token). Generated in batches of 8 rows,
/// which cost about 1.5 steps each on the blocksq8 storage.
///
/// # Errors
/// The target's or the tokenizer's.
pub fn target_texts(
    llm: &Llm,
    train: &[usize],
    count: usize,
    new_tokens: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    let target = &llm.model;
    let sampling = SamplingParams::new(0.7)?;
    let stop = llm.stop_token();
    let mut rng = StdRng::seed_from_u64(seed);
    let bar = progress_bar(count as u64, "generate");
    let mut texts = Vec::with_capacity(count);
    while texts.len() < count {
        let rows = (count - texts.len()).min(8);
        let mut seqs = Vec::with_capacity(rows);
        for r in 0..rows {
            let s = rng.random_range(0..train.len() - 64);
            let passage = &train[s..s + 64];
            seqs.push(if (texts.len() + r) % 2 == 0 {
                let text = llm.tokenizer.decode(passage, false)?;
                let instruction = INSTRUCTIONS[rng.random_range(0..INSTRUCTIONS.len())];
                llm.chat_prompt(&format!("{instruction}\n\n{text}"))?
            } else {
                passage.to_vec()
            });
        }
        let mut cache = target.new_cache(rows)?;
        let mut feed: Vec<Vec<usize>> = seqs.clone();
        let mut done = vec![false; rows];
        for _ in 0..new_tokens {
            let logits = target.forward_cached(&mut cache, &feed)?;
            let [_, _, vocab] = logits.dims();
            // Each row's last fed position (rows are padded to the longest).
            let last: Vec<Tensor<2>> = feed
                .iter()
                .enumerate()
                .map(|(r, f)| {
                    let i = f.len().max(1) - 1;
                    logits
                        .clone()
                        .slice([r..r + 1, i..i + 1, 0..vocab])
                        .reshape([1, vocab])
                })
                .collect();
            let next = sample_categorical(sampling.probabilities(Tensor::cat(last, 0))?, &mut rng)?;
            for (r, &t) in next.iter().enumerate() {
                feed[r] = Vec::new();
                if done[r] {
                    continue;
                }
                seqs[r].push(t);
                feed[r] = vec![t];
                done[r] = Some(t) == stop || seqs[r].len() + 1 >= target.config().max_context;
            }
            if done.iter().all(|d| *d) {
                break;
            }
        }
        bar.inc(rows as u64);
        texts.extend(seqs);
    }
    bar.finish_and_clear();
    Ok(texts)
}
