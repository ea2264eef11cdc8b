//! Text generation with SmolLM2-135M-Instruct (GGUF) in burn, streamed.
//!
//! ```text
//! scripts/fetch-smollm2.sh            # once: the 98 MB model file
//! CARGO_TARGET_DIR=/work/bench-target cargo build --release -p lastmile-examples --example generate
//! /work/bench-target/release/examples/generate --chat "Explain borrowing in Rust." --max-tokens 128
//! /work/bench-target/release/examples/generate --prompt "fn main() {" --temperature 0.7 --top-p 0.9 --seed 3
//! ```
//!
//! `--prompt TEXT` continues raw text; `--chat MESSAGE` wraps a user message
//! in the model's chat template and answers it. `--max-tokens N` (default
//! 128), `--temperature T` (default 0: greedy), `--top-p P` (nucleus
//! sampling, with T > 0), `--seed S` (default 0), `--kv-cache f32|f16`
//! (default f32; f16 halves the cache's memory as llama.cpp's default
//! does, on the CPU's host storages). Text is printed as it is
//! decoded; generation stops at an end-of-generation token (`<|im_end|>`,
//! `<|endoftext|>`) or after N tokens. At the end it prints prompt
//! processing speed (tokens of the prompt per second, one pass) and
//! decoding speed (one-token steps per second), separately. The model is
//! looked up in `$LASTMILE_MODELS/smollm2-135m-instruct/`, else in
//! `<target dir>/lastmile-models/smollm2-135m-instruct/`; `--model PATH`
//! loads another Llama-family GGUF file instead: tensors in F32, F16,
//! BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, IQ4_XS or the k-quants
//! Q2_K … Q6_K (e.g.
//! llama.cpp's `Q4_K_M` files; `python3 benches/llama_cpp_reference.py
//! kquant` makes SmolLM2's), and a SentencePiece vocabulary (Llama 2,
//! TinyLlama, Mistral) or a byte-level BPE one whose pre-tokenisation
//! `lastmile_models::tokenizer` knows (SmolLM's, GPT-2's, Llama 3's,
//! Qwen2's, DeepSeek Coder's, DeepSeek LLM's and kin; others are refused
//! with the name they use). `--chat` needs a chat template of a family the
//! tokenizer renders (ChatML, Llama 2, Llama 3, Phi-3, Zephyr, DeepSeek
//! Coder, DeepSeek LLM). Architectures
//! `llama`, `qwen2` (Qwen2, Qwen2.5) and `phi3` (Phi-3, Phi-3.5 mini);
//! Llama 3.1's RoPE factors and
//! linear or YaRN RoPE scaling are applied.

use std::io::Write as _;

use anyhow::{Context, Result, bail};
use lastmile_core::default_device;
use lastmile_core::numerics::SamplingParams;
use lastmile_examples::llm::{GenerateOptions, Llm, generate};
use lastmile_models::llama::KvPrecision;

enum Input {
    Prompt(String),
    Chat(String),
}

struct Args {
    input: Input,
    max_tokens: usize,
    temperature: f64,
    top_p: Option<f64>,
    seed: u64,
    kv: KvPrecision,
    model: Option<std::path::PathBuf>,
}

const USAGE: &str = "expected --prompt TEXT or --chat MESSAGE, and optionally --max-tokens N, \
                     --temperature T, --top-p P, --seed S, --kv-cache f32|f16, --model PATH";

fn parse_args() -> Result<Args> {
    let mut input = None;
    let (mut max_tokens, mut temperature, mut top_p, mut seed) = (128, 0.0, None, 0);
    let mut kv = KvPrecision::F32;
    let mut model = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--prompt" => input = Some(Input::Prompt(value("--prompt")?)),
            "--chat" => input = Some(Input::Chat(value("--chat")?)),
            "--model" => model = Some(value("--model")?.into()),
            "--max-tokens" => {
                max_tokens = value("--max-tokens")?
                    .parse()
                    .context("--max-tokens needs an integer")?
            }
            "--temperature" => {
                temperature = value("--temperature")?
                    .parse()
                    .context("--temperature needs a number")?
            }
            "--top-p" => {
                top_p = Some(
                    value("--top-p")?
                        .parse()
                        .context("--top-p needs a number")?,
                )
            }
            "--seed" => {
                seed = value("--seed")?
                    .parse()
                    .context("--seed needs an integer")?
            }
            "--kv-cache" => {
                kv = match value("--kv-cache")?.as_str() {
                    "f32" => KvPrecision::F32,
                    "f16" => KvPrecision::F16,
                    other => bail!("--kv-cache {other}: expected f32 or f16"),
                }
            }
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    let input = input.with_context(|| format!("no input; {USAGE}"))?;
    Ok(Args {
        input,
        max_tokens,
        temperature,
        top_p,
        seed,
        kv,
        model,
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let mut sampling = SamplingParams::new(args.temperature)?;
    if let Some(p) = args.top_p {
        if args.temperature == 0.0 {
            bail!("--top-p {p} has no effect with greedy decoding; give --temperature T > 0 too");
        }
        sampling = sampling.with_top_p(p)?;
    }
    let device = default_device()?;
    let mut llm = match &args.model {
        Some(path) => Llm::load_from(path, &device)?,
        None => Llm::load(&device)?,
    };
    let name = args.model.as_ref().map_or_else(
        || "SmolLM2-135M-Instruct".to_owned(),
        |p| p.display().to_string(),
    );
    llm.model = llm.model.with_kv_precision(args.kv)?;
    let prompt = match &args.input {
        Input::Prompt(text) => llm.text_prompt(text),
        Input::Chat(message) => llm.chat_prompt(message)?,
    };
    eprintln!(
        "[loaded {name} in {:.1} s; {} prompt tokens; T = {}, top-p = {}, seed {}, {:?} key/value cache]",
        llm.load_secs,
        prompt.len(),
        args.temperature,
        args.top_p.map_or("off".to_owned(), |p| p.to_string()),
        args.seed,
        args.kv
    );
    if let Input::Prompt(text) = &args.input {
        print!("{text}");
    }
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling,
        seed: args.seed,
    };
    let mut stdout = std::io::stdout();
    let (_, stats) = generate(&llm, &prompt, &options, |piece| {
        stdout.write_all(piece.as_bytes())?;
        stdout.flush()?;
        Ok(())
    })?;
    println!();
    eprintln!(
        "[{} tokens generated{}; prompt: {} tokens in {:.3} s = {:.1} tok/s; decoding: {} steps in {:.3} s = {:.1} tok/s]",
        stats.generated,
        if stats.stopped {
            " (stopped at end of generation)"
        } else {
            ""
        },
        stats.prompt_tokens,
        stats.prompt_secs,
        stats.prompt_tokens_per_sec(),
        stats.decode_steps,
        stats.decode_secs,
        stats.decode_tokens_per_sec()
    );
    Ok(())
}
