//! Tokenising speed: the shipped 1.3 MB corpus (`crates/datasets/data/
//! rust-book.txt`, English prose and Rust code) and a short chat prompt,
//! encoded by lastmile's tokenizer with four vocabularies, and by
//! llama.cpp with the same files in the same run.
//!
//! - `tokenizer_encode/<vocab>/corpus` and `…/prompt`: `Tokenizer::encode`
//!   without special tokens added or parsed, on SmolLM2-135M-Instruct's
//!   byte-level BPE (`scripts/fetch-smollm2.sh`) and llama.cpp's
//!   vocabulary files of Llama 2 (SentencePiece), Llama 3 and Qwen2
//!   (byte-level BPE; `scripts/fetch-vocabs.sh`);
//! - the anchor: `python3 benches/llama_cpp_reference.py tokenize`
//!   (llama-cpp-python 0.3.36's `llama_tokenize` on the corpus, best of
//!   5), run after the criterion group and printed with it; skipped with a
//!   note without python3 or llama-cpp-python.
//!
//! ```text
//! bash scripts/fetch-smollm2.sh && bash scripts/fetch-vocabs.sh
//! cargo bench -p lastmile-benches --bench tokenizer -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! A vocabulary whose file is missing is skipped with a message.

use std::ffi::OsStr;
use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lastmile_core::gguf::GgufFile;
use lastmile_core::model_files::{LLAMA_CPP_VOCABS, SMOLLM2_135M_INSTRUCT, models_dir};
use lastmile_models::tokenizer::Tokenizer;

/// A chat prompt of the length a user types.
const PROMPT: &str = "Hi! Could you explain, in two or three sentences, why the borrow \
    checker rejects `let r = &mut v; v.push(1); r.len()`? I'm new to Rust (coming from C++).";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `(name, file)` of each vocabulary timed.
fn vocabularies() -> Vec<(&'static str, PathBuf)> {
    let models = models_dir(&workspace());
    let vocab = |name: &str| {
        models
            .join(LLAMA_CPP_VOCABS)
            .join(format!("ggml-vocab-{name}.gguf"))
    };
    vec![
        ("smollm2", models.join(SMOLLM2_135M_INSTRUCT)),
        ("llama-spm", vocab("llama-spm")),
        ("llama-bpe", vocab("llama-bpe")),
        ("qwen2", vocab("qwen2")),
    ]
}

fn corpus_path() -> PathBuf {
    workspace().join("crates/datasets/data/rust-book.txt")
}

fn bench_encode(c: &mut Criterion) {
    let corpus = std::fs::read_to_string(corpus_path()).expect("the shipped corpus");
    let mut group = c.benchmark_group("tokenizer_encode");
    group.sample_size(10);
    for (name, path) in vocabularies() {
        if !path.is_file() {
            println!(
                "tokenizer_encode/{name}: skipped, {} is missing (scripts/fetch-smollm2.sh, \
                 scripts/fetch-vocabs.sh)",
                path.display()
            );
            continue;
        }
        let file = GgufFile::open(&path).expect("GGUF");
        let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
        group.throughput(Throughput::Bytes(corpus.len() as u64));
        group.bench_with_input(BenchmarkId::new(name, "corpus"), &corpus, |b, text| {
            b.iter(|| tok.encode(text, false, false).len())
        });
        group.throughput(Throughput::Bytes(PROMPT.len() as u64));
        group.bench_with_input(BenchmarkId::new(name, "prompt"), &PROMPT, |b, text| {
            b.iter(|| tok.encode(text, false, false).len())
        });
    }
    group.finish();
}

/// llama.cpp on the same files, in the same run.
fn llama_cpp_anchor(_: &mut Criterion) {
    let script = lastmile_benches::llama_cpp_script();
    let corpus = corpus_path();
    let vocabs: Vec<PathBuf> = vocabularies().into_iter().map(|(_, p)| p).collect();
    let mut args: Vec<&OsStr> = ["tokenize", "--text"].map(OsStr::new).to_vec();
    args.push(corpus.as_os_str());
    args.push(OsStr::new("--vocab"));
    args.extend(vocabs.iter().map(|p| p.as_os_str()));
    let title = format!("llama.cpp anchor ({})", script.display());
    lastmile_benches::print_python(&title, &script, &args);
}

criterion_group!(benches, bench_encode, llama_cpp_anchor);
criterion_main!(benches);
