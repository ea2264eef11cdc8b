//! A real pretrained language model (SmolLM2-135M-Instruct, GGUF) in burn:
//! loading it with its tokenizer, streamed generation (the `generate`
//! example), speculative decoding with its early-exit view as the draft
//! (the `spec_decode_llm` example), and the tour section.
//!
//! The model file is not shipped: `scripts/fetch-smollm2.sh` downloads it
//! into `$LASTMILE_MODELS/smollm2-135m-instruct/`, or
//! `<cargo target dir>/lastmile-models/smollm2-135m-instruct/`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::{Device, Tensor};
use lastmile_core::numerics::{SamplingParams, argmax, sample_categorical};
use lastmile_datasets::TextCorpus;
use lastmile_models::llama::{LlamaEarlyExit, LlamaModel, WeightStorage};
use lastmile_models::tokenizer::{ChatMessage, Tokenizer};
use lastmile_spec_decode::{AdaEdl, AdaEdlConfig, GenerationConfig};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::drafts::TokenDraft;
use crate::plot::{BarPanel, write_svg};
use crate::report::{output_dir, table};
use crate::sweep::{Method, sweep};

/// Folder of the model under the models directory ([`models_dir`]).
pub const MODEL_DIR: &str = "smollm2-135m-instruct";

/// File name of the model (Q4_1 GGUF, 98 MB).
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Blocks of the early-exit draft used when no depth is measured (the tour):
/// the depth `spec_decode_llm` chose on the reference machine (the
/// cheapest: SmolLM2 was not trained to exit early, and its drafts are
/// accepted about as rarely at 16 blocks as at 4).
pub const DEFAULT_EXIT_LAYERS: usize = 4;

/// Chat messages used as prompts by the sweep and the tour.
pub const CHAT_PROMPTS: [&str; 4] = [
    "What is the capital of France? Answer in one sentence.",
    "Write a Python function that returns the factorial of n.",
    "Explain what a hash map is in two sentences.",
    "List three tips for writing clear code.",
];

/// Where downloaded models live: `$LASTMILE_MODELS`, or `lastmile-models`
/// in cargo's target directory ([`crate::report::target_dir`]), as
/// `scripts/fetch-smollm2.sh` resolves it.
pub fn models_dir() -> PathBuf {
    std::env::var_os("LASTMILE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::report::target_dir().join("lastmile-models"))
}

/// The path of SmolLM2-135M-Instruct under [`models_dir`].
///
/// ```
/// let p = lastmile_examples::llm::model_path();
/// assert!(p.ends_with("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"));
/// ```
pub fn model_path() -> PathBuf {
    models_dir().join(MODEL_DIR).join(MODEL_FILE)
}

/// The message printed when the model file is missing: where it was
/// looked for and the command that fetches it.
///
/// ```
/// let m = lastmile_examples::llm::fetch_hint();
/// assert!(m.contains("scripts/fetch-smollm2.sh"));
/// ```
pub fn fetch_hint() -> String {
    format!(
        "SmolLM2-135M-Instruct not found at {}; fetch it (98 MB) with `scripts/fetch-smollm2.sh` \
         (it honours LASTMILE_MODELS and CARGO_TARGET_DIR), or point LASTMILE_MODELS at the folder \
         holding {MODEL_DIR}/",
        model_path().display()
    )
}

/// The model and its tokenizer, read from one GGUF file.
#[derive(Debug)]
pub struct Llm {
    /// The decoder, its weights stored as [`WeightStorage::fastest_on`] the device.
    pub model: LlamaModel,
    /// The tokenizer from the file's metadata.
    pub tokenizer: Tokenizer,
    /// Seconds spent reading and dequantising the file.
    pub load_secs: f64,
}

impl Llm {
    /// Loads SmolLM2-135M-Instruct from [`model_path`] onto `device`.
    ///
    /// # Errors
    /// When the file is missing (the message says how to fetch it) or
    /// cannot be parsed as a Llama GGUF checkpoint.
    pub fn load(device: &Device) -> Result<Self> {
        let path = model_path();
        if !path.is_file() {
            bail!("{}", fetch_hint());
        }
        Self::load_from(&path, device)
    }

    /// Loads any Llama-family GGUF checkpoint (its tokenizer from the same
    /// file) onto `device`: SmolLM2 in another quantisation such as
    /// llama.cpp's `Q4_K_M`, or another model of the family.
    ///
    /// # Errors
    /// When the file cannot be opened or parsed as a Llama GGUF checkpoint.
    pub fn load_from(path: &std::path::Path, device: &Device) -> Result<Self> {
        let start = Instant::now();
        let file = lastmile_core::gguf::GgufFile::open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let tokenizer = Tokenizer::from_gguf(&file).context("reading the tokenizer")?;
        let model = LlamaModel::from_gguf(&file, WeightStorage::fastest_on(device), device)
            .with_context(|| format!("loading the model from {}", path.display()))?;
        Ok(Self {
            model,
            tokenizer,
            load_secs: start.elapsed().as_secs_f64(),
        })
    }

    /// The ids of a user message wrapped in the model's chat template, ending
    /// with the assistant header.
    ///
    /// # Errors
    /// When the file has no chat template this crate understands.
    pub fn chat_prompt(&self, message: &str) -> Result<Vec<usize>> {
        Ok(self
            .tokenizer
            .encode_chat(&[ChatMessage::new("user", message)], true)?)
    }

    /// The ids of plain text (with the model's BOS token if it wants one).
    pub fn text_prompt(&self, text: &str) -> Vec<usize> {
        self.tokenizer.encode(text, true, false)
    }

    /// The token that ends an assistant turn (`<|im_end|>`), else the
    /// first end-of-generation token: the stop token of the sweep.
    pub fn stop_token(&self) -> Option<usize> {
        self.tokenizer
            .token_id("<|im_end|>")
            .or_else(|| self.tokenizer.end_of_generation().first().copied())
    }
}

/// Settings of [`generate`].
#[derive(Clone, Copy, Debug)]
pub struct GenerateOptions {
    /// Longest continuation (tokens).
    pub max_tokens: usize,
    /// Temperature, top-p (0 = greedy).
    pub sampling: SamplingParams,
    /// Seed of the sampler.
    pub seed: u64,
}

/// Timings of [`generate`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GenerateStats {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Seconds of the prompt pass, up to and including the first token's choice.
    pub prompt_secs: f64,
    /// Tokens generated (the end-of-generation token included when reached).
    pub generated: usize,
    /// One-token forward passes after the first token.
    pub decode_steps: usize,
    /// Seconds of those passes (with each token's choice).
    pub decode_secs: f64,
    /// Whether an end-of-generation token ended the text.
    pub stopped: bool,
}

impl GenerateStats {
    /// Prompt tokens per second of the prompt pass.
    pub fn prompt_tokens_per_sec(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_secs.max(f64::MIN_POSITIVE)
    }

    /// Tokens per second of the decoding steps (0 when none ran).
    pub fn decode_tokens_per_sec(&self) -> f64 {
        if self.decode_steps == 0 {
            0.0
        } else {
            self.decode_steps as f64 / self.decode_secs.max(f64::MIN_POSITIVE)
        }
    }
}

/// Picks the next token from the logits of the last position `[1, n, vocab]`.
fn choose(logits: Tensor<3>, sampling: &SamplingParams, rng: &mut StdRng) -> Result<usize> {
    let [_, n, vocab] = logits.dims();
    let row = logits.slice([0..1, n - 1..n, 0..vocab]).reshape([1, vocab]);
    let id = if sampling.is_greedy() {
        argmax(row)?
    } else {
        sample_categorical(sampling.probabilities(row)?, rng)?
    };
    id.first().copied().context("the sampler returned no token")
}

/// Generates a continuation of `prompt` one token at a time with the KV
/// cache, calling `on_text` with each piece of text as soon as it is
/// complete UTF-8 ([`StreamDecoder`](lastmile_models::tokenizer::StreamDecoder)),
/// until an end-of-generation token or `max_tokens`. Special tokens are not
/// printed. Returns the generated ids and the timings.
///
/// # Errors
/// An empty prompt, `max_tokens = 0`, a prompt plus continuation longer than
/// the model's context, or a failing forward pass or callback.
pub fn generate(
    llm: &Llm,
    prompt: &[usize],
    options: &GenerateOptions,
    mut on_text: impl FnMut(&str) -> Result<()>,
) -> Result<(Vec<usize>, GenerateStats)> {
    let model = &llm.model;
    ensure!(
        !prompt.is_empty(),
        "empty prompt; expected at least one token"
    );
    ensure!(
        options.max_tokens >= 1,
        "max_tokens = 0; expected at least 1"
    );
    let context = model.config().max_context;
    ensure!(
        prompt.len() + options.max_tokens <= context,
        "{} prompt tokens + {} new tokens exceed the model's context of {context}",
        prompt.len(),
        options.max_tokens
    );
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut stream = llm.tokenizer.stream_decoder(false);
    let mut cache = model.new_cache(1)?;
    let mut stats = GenerateStats {
        prompt_tokens: prompt.len(),
        ..GenerateStats::default()
    };
    let start = Instant::now();
    // The head runs on the prompt's last position only.
    let logits = model.forward_last(&mut cache, &[prompt.to_vec()], 1)?;
    let mut token = choose(logits, &options.sampling, &mut rng)?;
    stats.prompt_secs = start.elapsed().as_secs_f64();
    let mut out = Vec::with_capacity(options.max_tokens);
    loop {
        out.push(token);
        if llm.tokenizer.is_end_of_generation(token) {
            stats.stopped = true;
            break;
        }
        on_text(&stream.push(token)?)?;
        if out.len() == options.max_tokens {
            break;
        }
        let step = Instant::now();
        let logits = model.forward_cached(&mut cache, &[vec![token]])?;
        token = choose(logits, &options.sampling, &mut rng)?;
        stats.decode_secs += step.elapsed().as_secs_f64();
        stats.decode_steps += 1;
    }
    on_text(&stream.finish())?;
    stats.generated = out.len();
    Ok((out, stats))
}

/// `n` prompts of about `chars` characters from the shipped corpus's
/// held-out text (the Rust book), cut at whitespace, seeded.
///
/// # Errors
/// When the corpus cannot be split.
pub fn corpus_prompts(n: usize, chars: usize, seed: u64) -> Result<Vec<String>> {
    let corpus = TextCorpus::rust_book(0.05)?;
    let bytes: Vec<u8> = corpus.validation().iter().map(|t| *t as u8).collect();
    let text = String::from_utf8_lossy(&bytes);
    let chars_of: Vec<char> = text.chars().collect();
    ensure!(
        chars_of.len() > 2 * chars + 2,
        "held-out text has {} characters; expected more than {}",
        chars_of.len(),
        2 * chars + 2
    );
    let mut rng = StdRng::seed_from_u64(seed);
    Ok((0..n)
        .map(|_| {
            let mut start = rng.random_range(0..chars_of.len() - 2 * chars);
            while start < chars_of.len() - chars && !chars_of[start].is_whitespace() {
                start += 1;
            }
            let mut end = (start + chars).min(chars_of.len());
            while end > start + 1 && !chars_of[end - 1].is_whitespace() {
                end -= 1;
            }
            chars_of[start..end]
                .iter()
                .collect::<String>()
                .trim()
                .to_owned()
        })
        .collect())
}

/// Tour section: SmolLM2-135M-Instruct answers one chat message (streamed,
/// greedy, 32 tokens), then a short speculative comparison at T = 0:
/// autoregressive decoding against the early-exit draft
/// ([`DEFAULT_EXIT_LAYERS`] blocks) under AdaEDL. Prints one line and
/// returns `Ok` when the model file is missing.
///
/// # Errors
/// A model file that exists but cannot be loaded, or a failing run.
pub fn tour_section(device: &Device) -> Result<()> {
    println!("== real model: SmolLM2-135M-Instruct (GGUF) in burn ==");
    if !model_path().is_file() {
        println!("  skipped: {}", fetch_hint());
        return Ok(());
    }
    let llm = Llm::load(device)?;
    let c = llm.model.config();
    println!(
        "  loaded in {:.1} s: {} layers, width {}, {} query / {} key-value heads, vocabulary {}; \
         weights stored as {:?} ({} MB of matrices read per forward)",
        llm.load_secs,
        c.n_layers,
        c.d_model,
        c.n_heads,
        c.n_kv_heads,
        c.vocab_size,
        llm.model.storage(),
        llm.model.matrix_bytes() / 1_000_000
    );
    let message = CHAT_PROMPTS[2];
    let prompt = llm.chat_prompt(message)?;
    let options = GenerateOptions {
        max_tokens: 32,
        sampling: SamplingParams::greedy(),
        seed: 0,
    };
    println!("  user: {message}");
    let mut text = String::new();
    let (_, stats) = generate(&llm, &prompt, &options, |piece| {
        text.push_str(piece);
        Ok(())
    })?;
    println!("  assistant: {}", text.trim());
    println!(
        "  prompt: {} tokens in {:.2} s ({:.0} tok/s); decoding: {} tokens at {:.1} tok/s",
        stats.prompt_tokens,
        stats.prompt_secs,
        stats.prompt_tokens_per_sec(),
        stats.decode_steps,
        stats.decode_tokens_per_sec()
    );
    println!(
        "  (prompt tok/s: tokens of the chat-formatted prompt processed per second in one pass; \
         decoding tok/s: one-token steps per second, greedy, batch 1, this build's profile)"
    );

    let draft = LlamaEarlyExit::new(&llm.model, DEFAULT_EXIT_LAYERS.min(c.n_layers))?;
    let config =
        GenerationConfig::new(SamplingParams::greedy(), 32)?.with_stop_token(llm.stop_token());
    let methods = [
        Method::Autoregressive,
        Method::Draft(Box::new(AdaEdl::new(AdaEdlConfig::default())?)),
    ];
    let results = sweep(
        &methods,
        &llm.model,
        &TokenDraft(&draft),
        &[prompt],
        &config,
        0,
        || {},
    )?;
    let (ar_out, ar) = &results[0];
    let (sd_out, sd) = &results[1];
    ensure!(
        sd_out == ar_out,
        "greedy speculative output differs from autoregressive decoding"
    );
    let rows = vec![
        vec![
            "autoregressive".to_owned(),
            format!("{:.1}", ar.tokens_per_second()),
            "1.00x".to_owned(),
            "-".to_owned(),
        ],
        vec![
            format!("early exit L={} + AdaEDL", draft.layers()),
            format!("{:.1}", sd.tokens_per_second()),
            format!("{:.2}x", sd.tokens_per_second() / ar.tokens_per_second()),
            format!("{:.2}", sd.mean_acceptance_length()),
        ],
    ];
    print!(
        "{}",
        table(&["method", "tok/s", "speed-up", "tokens/round"], &rows)
    );
    println!(
        "  tok/s: generated tokens per second including the prompt pass (T = 0, up to 32 tokens). speed-up: over \
         autoregressive decoding."
    );
    println!(
        "  tokens/round: tokens emitted per verification, 1 + accepted drafts. The draft is the target's first {} \
         of {} blocks",
        draft.layers(),
        c.n_layers
    );
    println!(
        "  with its norm and tied head ({} of {} MB read per step); greedy outputs identical: yes. \
         The full sweep: the spec_decode_llm example.",
        draft.matrix_bytes() / 1_000_000,
        llm.model.matrix_bytes() / 1_000_000
    );
    println!(
        "  Expect about 1x or less (differences of a few % are timing noise): SmolLM2 was not trained to exit \
         early (LayerSkip's early-exit loss), so"
    );
    println!(
        "  the target accepts {:.0}% of these drafts, too few to repay drafting (acceptance by depth: the \
         spec_decode_llm example).",
        100.0 * sd.acceptance_rate()
    );
    let svg = output_dir()?.join("tour_llm.svg");
    let panel = BarPanel::new(
        "SmolLM2-135M: tokens per second at batch 1 (T = 0, this build's profile)",
        "tokens / s",
        ["decoding"],
    )
    .series("autoregressive", vec![ar.tokens_per_second()])
    .series(
        format!("early exit L={} + AdaEDL", draft.layers()),
        vec![sd.tokens_per_second()],
    );
    write_svg(&svg, &[panel.into()], 1)?;
    println!("  plot: {}", svg.display());
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use lastmile_core::convert::tensor_to_vec;

    /// The tour section end to end on the default device (prints a skip line
    /// when the model is absent). Ignored: with the model present it decodes
    /// for several seconds. `cargo test -p lastmile-examples --lib -- --ignored --nocapture`.
    #[test]
    #[ignore = "runs the real model when present: seconds, not milliseconds"]
    fn tour_section_runs() {
        let device = lastmile_core::default_device().unwrap();
        let start = Instant::now();
        tour_section(&device).unwrap();
        println!("tour section: {:.1} s", start.elapsed().as_secs_f64());
    }

    #[test]
    fn corpus_prompts_are_seeded_whole_words() {
        let a = corpus_prompts(3, 120, 5).unwrap();
        assert_eq!(a, corpus_prompts(3, 120, 5).unwrap());
        assert_ne!(a, corpus_prompts(3, 120, 6).unwrap());
        for p in &a {
            let n = p.chars().count();
            assert!((1..=120).contains(&n), "{n} characters");
            assert_eq!(p.trim(), p);
        }
    }

    /// A random Llama model over a small byte-level vocabulary (no file).
    fn tiny_llm() -> Llm {
        use lastmile_models::llama::LlamaConfig;
        use lastmile_models::tokenizer::Vocabulary;
        let tokenizer =
            Tokenizer::from_vocabulary(Vocabulary::byte_level(&[], &["<|im_end|>"])).unwrap();
        let config = LlamaConfig {
            vocab_size: tokenizer.vocab_size(),
            max_context: 48,
            ..LlamaConfig::tiny()
        };
        let model = config
            .init_random(
                3,
                WeightStorage::F32,
                &lastmile_core::default_device().unwrap(),
            )
            .unwrap();
        Llm {
            model,
            tokenizer,
            load_secs: 0.0,
        }
    }

    #[test]
    fn cached_greedy_generation_equals_full_recomputation() {
        let llm = tiny_llm();
        let prompt: Vec<usize> = "fn main".bytes().map(usize::from).collect();
        let options = GenerateOptions {
            max_tokens: 20,
            sampling: SamplingParams::greedy(),
            seed: 0,
        };
        let mut text = String::new();
        let (ids, stats) = generate(&llm, &prompt, &options, |t| {
            text.push_str(t);
            Ok(())
        })
        .unwrap();
        // Naive reference: the whole sequence through a fresh cache at every step.
        let mut seq = prompt.clone();
        let mut naive = Vec::new();
        while naive.len() < options.max_tokens {
            let mut cache = llm.model.new_cache(1).unwrap();
            let logits = llm
                .model
                .forward_cached(&mut cache, &[seq.clone()])
                .unwrap();
            let v = tensor_to_vec(logits).unwrap();
            let last = &v[(seq.len() - 1) * llm.tokenizer.vocab_size()..];
            let id = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b });
            naive.push(id);
            seq.push(id);
            if llm.tokenizer.is_end_of_generation(id) {
                break;
            }
        }
        assert_eq!(ids, naive);
        assert_eq!(stats.generated, ids.len());
        assert_eq!(stats.prompt_tokens, prompt.len());
        assert_eq!(stats.decode_steps, ids.len() - 1);
        // The stream is the decoded text, end-of-generation tokens left out.
        let shown: Vec<usize> = ids
            .iter()
            .copied()
            .filter(|id| !llm.tokenizer.is_end_of_generation(*id))
            .collect();
        assert_eq!(text, llm.tokenizer.decode(&shown, false).unwrap());
    }

    #[test]
    fn sampling_is_seeded_and_bad_requests_are_errors() {
        let llm = tiny_llm();
        let run = |seed, max_tokens, prompt: &[usize]| {
            let options = GenerateOptions {
                max_tokens,
                sampling: SamplingParams::new(1.0).unwrap().with_top_p(0.9).unwrap(),
                seed,
            };
            generate(&llm, prompt, &options, |_| Ok(())).map(|(ids, _)| ids)
        };
        assert_eq!(
            run(4, 16, &[70, 71]).unwrap(),
            run(4, 16, &[70, 71]).unwrap()
        );
        assert!(run(4, 16, &[]).is_err());
        assert!(run(4, 0, &[70]).is_err());
        assert!(run(4, 48, &[70]).is_err()); // 1 + 48 > context 48
        use crate::timing::{draft_step_time, step_time};
        assert!(step_time(&llm.model, 0, 1, 1).is_err());
        assert!(step_time(&llm.model, 4, 2, 3).unwrap() > 0.0);
        assert!(draft_step_time(&llm.model, &llm.model, 4, 3).unwrap() > 0.0);
        assert!(draft_step_time(&llm.model, &llm.model, 0, 3).is_err());
    }

    #[test]
    fn stats_rates() {
        assert_eq!(GenerateStats::default().decode_tokens_per_sec(), 0.0);
        let stats = GenerateStats {
            decode_steps: 10,
            decode_secs: 0.5,
            prompt_tokens: 8,
            prompt_secs: 0.1,
            ..GenerateStats::default()
        };
        assert!((stats.decode_tokens_per_sec() - 20.0).abs() < 1e-9);
        assert!((stats.prompt_tokens_per_sec() - 80.0).abs() < 1e-9);
    }
}
