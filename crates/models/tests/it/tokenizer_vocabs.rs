//! Tokenizers of other model families against their Hugging Face
//! tokenizers: llama.cpp's vocabulary-only GGUF files and the ids the
//! models' own `tokenizers` give for llama.cpp's tokenizer test strings.
//!
//! `scripts/fetch-vocabs.sh` unpacks, from the llama-cpp-python 0.3.36
//! source distribution on PyPI (sha256-checked), `ggml-vocab-<name>.gguf`
//! (vocabulary, merges or scores, special tokens; no weights), `.gguf.inp`
//! (test strings separated by `\n__ggml_vocab_test__\n`: white-space runs,
//! accents, CJK, emoji, code, numbers, apostrophes) and `.gguf.out` (one
//! line of ids per string, from the model's Hugging Face tokenizer without
//! special tokens; llama.cpp's own `test-tokenizer-0` checks itself against
//! them). Every id must be identical, and decoding must give back the
//! string. The files go to
//! `${LASTMILE_MODELS:-${CARGO_TARGET_DIR:-<repo>/target}/lastmile-models}/llama-cpp-vocabs/`.
//!
//! `fixtures/tokenizer_vocabs.json`, written by
//! `fixtures/make_vocab_fixture.py` with llama-cpp-python 0.3.36 on six
//! of those files (Llama 2's and Phi-3's SentencePiece — llama.cpp drops
//! the white space after Phi-3's special tokens —, Llama 3's, Qwen2's,
//! DeepSeek Coder's and DeepSeek LLM's byte-level BPE), adds llama.cpp's own ids — with BOS where the
//! vocabulary adds it, with and without special-token parsing — and its
//! detokenisation for 50 varied and 200 seeded random strings, and the ids
//! of the shipped 1.3 MB corpus by count and hash.
//!
//! **When the files are missing these tests print how to fetch them and
//! pass having checked nothing.**
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use crate::fnv1a64;
use lastmile_core::gguf::GgufFile;
use lastmile_core::model_files::{LLAMA_CPP_VOCABS, models_dir};
use lastmile_models::tokenizer::{PreTokenizer, Tokenizer};
use serde::Deserialize;

const FIXTURE: &str = include_str!("../fixtures/tokenizer_vocabs.json");

fn vocab_dir() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    models_dir(&workspace).join(LLAMA_CPP_VOCABS)
}

/// Test strings with their expected ids.
type Cases = Vec<(String, Vec<usize>)>;

/// The tokenizer, test strings and expected ids of vocabulary `name`;
/// `None` (after saying so) when the files are missing.
fn cases(name: &str) -> Option<(Tokenizer, Cases)> {
    let dir = vocab_dir();
    let gguf = dir.join(format!("ggml-vocab-{name}.gguf"));
    let inp = dir.join(format!("ggml-vocab-{name}.gguf.inp"));
    let out = dir.join(format!("ggml-vocab-{name}.gguf.out"));
    if !(gguf.is_file() && inp.is_file() && out.is_file()) {
        eprintln!(
            "SKIPPED (checked nothing): {} is missing.\n\
             Fetch it with `bash scripts/fetch-vocabs.sh` (pip download of the \
             llama-cpp-python==0.3.36 source distribution, sha256-checked), then rerun \
             `cargo test -p lastmile-models --test it tokenizer_vocabs::`.",
            gguf.display()
        );
        return None;
    }
    let tok = Tokenizer::from_gguf(&GgufFile::open(&gguf).unwrap()).unwrap();
    let raw = std::fs::read_to_string(&inp).unwrap();
    let mut strings: Vec<String> = raw
        .split("\n__ggml_vocab_test__\n")
        .map(str::to_owned)
        .collect();
    // The file ends with the separator: no empty test after it.
    if strings.last().is_some_and(String::is_empty) {
        strings.pop();
    }
    let ids: Vec<Vec<usize>> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        strings.len(),
        ids.len(),
        "{name}: .inp and .out disagree in length"
    );
    assert!(
        strings.len() >= 40,
        "{name}: only {} strings",
        strings.len()
    );
    Some((tok, strings.into_iter().zip(ids).collect()))
}

/// Checks every string of vocabulary `name`; returns how many.
fn check(name: &str) -> usize {
    let Some((tok, cases)) = cases(name) else {
        return 0;
    };
    let mut wrong = Vec::new();
    for (text, expected) in &cases {
        let ids = tok.encode(text, false, false);
        if &ids != expected {
            wrong.push(format!("{text:?}: ours {ids:?}, reference {expected:?}"));
        }
        assert_eq!(
            &tok.decode(&ids, false).unwrap(),
            text,
            "{name}: round trip"
        );
    }
    assert!(
        wrong.is_empty(),
        "{name}: {} of {} strings differ:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    eprintln!("{name}: {} strings identical", cases.len());
    cases.len()
}

#[test]
fn gpt2_family_matches_reference_ids() {
    for name in ["gpt-2", "mpt", "starcoder", "refact", "command-r"] {
        check(name);
    }
}

#[test]
fn llama3_bpe_matches_reference_ids() {
    if check("llama-bpe") > 0 {
        let (tok, _) = cases("llama-bpe").unwrap();
        assert_eq!(tok.pre_tokenizer(), Some(PreTokenizer::Llama3));
    }
}

#[test]
fn qwen2_matches_reference_ids() {
    if check("qwen2") > 0 {
        let (tok, _) = cases("qwen2").unwrap();
        assert_eq!(tok.pre_tokenizer(), Some(PreTokenizer::Qwen2));
    }
}

/// DeepSeek Coder's sequence of expressions (byte-level BPE).
#[test]
fn deepseek_coder_matches_reference_ids() {
    if check("deepseek-coder") > 0 {
        let (tok, _) = cases("deepseek-coder").unwrap();
        assert_eq!(tok.pre_tokenizer(), Some(PreTokenizer::DeepseekCoder));
    }
}

/// DeepSeek LLM's sequence of expressions (listed letter ranges, whole
/// numbers, trailing white space cut off).
#[test]
fn deepseek_llm_matches_reference_ids() {
    if check("deepseek-llm") > 0 {
        let (tok, _) = cases("deepseek-llm").unwrap();
        assert_eq!(tok.pre_tokenizer(), Some(PreTokenizer::DeepseekLlm));
    }
}

#[test]
fn sentencepiece_matches_reference_ids() {
    for name in ["llama-spm", "phi-3"] {
        if check(name) > 0 {
            let (tok, _) = cases(name).unwrap();
            assert_eq!(tok.pre_tokenizer(), None);
        }
    }
}

/// One string of the llama.cpp fixture.
#[derive(Debug, Deserialize)]
struct Case {
    text: String,
    ids: Vec<usize>,
    ids_special: Vec<usize>,
    detok: serde_json::Value,
}

/// A vocabulary's summary in the llama.cpp fixture.
#[derive(Debug, Deserialize)]
struct Summary {
    n_vocab: usize,
    add_bos_token: bool,
    corpus_n_ids: usize,
    corpus_fnv1a64_ids_u32le: String,
}

/// Checks vocabulary `name` against llama.cpp's ids and detokenisation.
fn check_llama_cpp(name: &str) {
    let Some((tok, _)) = cases(name) else {
        return;
    };
    let fixture: HashMap<String, serde_json::Value> = serde_json::from_str(FIXTURE).unwrap();
    let summary: Summary = serde_json::from_value(fixture[name].clone()).unwrap();
    let cases: Vec<Case> =
        serde_json::from_value(fixture[&format!("{name}/cases")].clone()).unwrap();
    assert_eq!(tok.vocab_size(), summary.n_vocab);
    assert_eq!(tok.add_bos(), summary.add_bos_token);
    // llama.cpp's detokeniser "cleans up tokenization spaces" for Llama 3
    // (" ." becomes ".", as Hugging Face's `decode` does by default); ours
    // is lossless, so where that changed the text, ours must give the text.
    let cleans_spaces = name == "llama-bpe";
    let mut cleaned = 0;
    let mut wrong = Vec::new();
    for case in &cases {
        let ids = tok.encode(&case.text, true, false);
        let ids_special = tok.encode(&case.text, true, true);
        if ids != case.ids || ids_special != case.ids_special {
            wrong.push(format!(
                "{:?}: ours {ids:?} / {ids_special:?}, llama.cpp {:?} / {:?}",
                case.text, case.ids, case.ids_special
            ));
            continue;
        }
        // Not UTF-8 (`{"hex": …}`) only where a string ends inside a character.
        if let Some(detok) = case.detok.as_str() {
            let ours = tok.decode(&ids, false).unwrap();
            if cleans_spaces && detok != case.text {
                assert_eq!(ours, case.text, "{name}: lossless decode");
                cleaned += 1;
            } else {
                assert_eq!(ours, detok, "{name}: {:?}", case.text);
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{name}: {} of {} strings differ from llama.cpp:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let corpus =
        std::fs::read_to_string(workspace.join("crates/datasets/data/rust-book.txt")).unwrap();
    let start = Instant::now();
    let ids = tok.encode(&corpus, true, false);
    let took = start.elapsed().as_secs_f64();
    assert_eq!(ids.len(), summary.corpus_n_ids, "{name}: corpus id count");
    assert_eq!(
        fnv1a64(&ids),
        summary.corpus_fnv1a64_ids_u32le,
        "{name}: corpus ids"
    );
    eprintln!(
        "{name}: {} strings as llama.cpp ({cleaned} detokenised with its space clean-up, \
         ours lossless); the {} kB corpus, {} ids, encoded in {took:.2} s",
        cases.len(),
        corpus.len() / 1000,
        ids.len()
    );
}

#[test]
fn llama2_sentencepiece_matches_llama_cpp() {
    check_llama_cpp("llama-spm");
}

#[test]
fn llama3_bpe_matches_llama_cpp() {
    check_llama_cpp("llama-bpe");
}

#[test]
fn qwen2_matches_llama_cpp() {
    check_llama_cpp("qwen2");
}

#[test]
fn phi3_matches_llama_cpp() {
    check_llama_cpp("phi-3");
}

#[test]
fn deepseek_coder_matches_llama_cpp() {
    check_llama_cpp("deepseek-coder");
}

#[test]
fn deepseek_llm_matches_llama_cpp() {
    check_llama_cpp("deepseek-llm");
}
