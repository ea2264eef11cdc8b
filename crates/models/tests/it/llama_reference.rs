//! The Llama model on SmolLM2-135M-Instruct (Q4_1 GGUF) against llama.cpp
//! and against an exact float64 evaluation of the same file.
//!
//! The fixture `tests/fixtures/llama_cpp_reference.json` (written by
//! `benches/llama_cpp_reference.py fixture`: llama-cpp-python 0.3.36, one
//! thread, no flash attention) holds, for 8 prompts (3 chat-formatted with
//! the model's template, 2 plain text, 2 code, 1 numbers with non-ASCII
//! text), llama.cpp's token ids, its 64-token greedy continuation, and at
//! every position of that token path llama.cpp's argmax and 16 largest
//! logits, from two llama.cpp runs:
//!
//! - **on the Q4_1 file** as users run it (f16 KV cache), plus at the same
//!   ids the logits of an exact float64 numpy reference (weights
//!   dequantised by the `gguf` package);
//! - **on an F32 copy of the file** (the same dequantised weights written
//!   back as F32) with an f32 KV cache: llama.cpp's own forward code, without
//!   its activation rounding.
//!
//! The model is fed each run's token path: for the F32 run as llama.cpp
//! was (the prompt in one forward, then the continuation one token per
//! forward: the decoding path), for the Q4_1 run in one forward (half the
//! time; equal by the interface's chunking property). While its own
//! argmax equals llama.cpp's next token, this *is* its greedy decoding, so
//! the first step where they differ is where the two greedy continuations
//! part. The test checks
//!
//! 1. against llama.cpp on the F32 copy: `max |Δlogit|` ≤ [`F32_TOL`], top-1
//!    agreement at every position (755) and identical 64-token greedy
//!    continuations on all 8 prompts;
//! 2. against the exact reference: `max |Δlogit|` ≤ [`EXACT_TOL`];
//! 3. against llama.cpp on the Q4_1 file: `max |Δlogit|` ≤ [`LOGIT_TOL`], and
//!    top-1 agreement at every position except **near ties**, where
//!    llama.cpp's own gap between its argmax and ours, or the exact
//!    reference's gap between the same two tokens, is below [`NEAR_TIE`]
//!    (this includes the step where a greedy continuation parts from
//!    llama.cpp's). It prints the near ties and how many continuations are
//!    identical (1 of 8 when this was written: the others part at near ties
//!    with gaps ≤ 0.15).
//!
//! Each check runs twice, with [`WeightStorage::F32`] and with
//! [`WeightStorage::Blocks`] (the file's blocks, dequantised inside the
//! panel kernel to the same f32 values).
//!
//! Runtime: about 50 s for F32 and 21 s for Blocks in the dev profile on 2 cores (most of it the 504
//! one-token forwards of the F32 run).
//!
//! The model file is not committed. Fetch it with `scripts/fetch-smollm2.sh`
//! (into `${LASTMILE_MODELS:-${CARGO_TARGET_DIR:-<repo>/target}/lastmile-models}/smollm2-135m-instruct/`).
//! **When the file is missing this test prints how to fetch it and passes
//! having checked nothing.**
//!
//! # Tolerances
//!
//! Both sides dequantise the weights identically (ggml's Q4_1 / Q8_0 block
//! formulas, bit-exact in `lastmile_core::gguf`). On the F32 copy llama.cpp
//! computes in f32 like us, so only summation order differs: measured
//! max |Δ| 1.1e-4 on logits of magnitude ~20; `F32_TOL = 2e-3` leaves over an
//! order of margin, and `F32_NEAR_TIE = 1e-3` exempts only ties closer than
//! that rounding could decide (none occurred). Against the exact float64
//! reference: measured 1.4e-4, `EXACT_TOL = 2e-3`. A modelling error (RoPE
//! pairing, head mapping, norm ε) moves logits by whole units.
//!
//! On the Q4_1 file llama.cpp rounds activations: each input vector of a
//! Q4_1 product to Q8_1 (blocks of 32, 8-bit codes, relative error up to 2⁻⁸
//! of the block's largest value), the input of the tied Q8_0 head to Q8_0,
//! and keys and values to f16. Measured on the fixture, that run is as far
//! from the exact reference (max 1.25 over the stored entries) as from us
//! (max 1.25), and from its own F32 run (max 1.25 over the prompt
//! positions): the differences are its rounding.
//! A numpy simulation of those roundings (made while writing this test, not
//! committed) moved the same logit differences by a median 0.33 and at most
//! 1.36, the distribution of llama.cpp's (median 0.31, max 1.22). Hence
//! `LOGIT_TOL = 1.5` (the measured 1.25 plus margin) and `NEAR_TIE = 0.3`
//! (the median rounding noise on a logit difference: a gap that small is
//! decided by llama.cpp's rounding).
#![cfg(feature = "flex")]
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::model_files::{SMOLLM2_135M_INSTRUCT, models_dir};
use lastmile_models::llama::{KvPrecision, LlamaModel, WeightStorage};
use serde::Deserialize;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/llama_cpp_reference.json"
);

/// Largest accepted |Δlogit| against the exact float64 reference.
const EXACT_TOL: f32 = 2e-3;
/// Largest accepted |Δlogit| against llama.cpp (see the module docs).
const LOGIT_TOL: f32 = 1.5;
/// A top-1 disagreement is a near tie when llama.cpp's logit of our argmax is
/// within this of its maximum.
const NEAR_TIE: f32 = 0.3;
/// Largest accepted |Δlogit| of [`WeightStorage::BlocksQ8`] against the
/// exact reference. Rounding every product's activations to 8 bits moves
/// logits of magnitude ~20 by up to 1.89 (measured; llama.cpp's own Q4_1
/// run, which rounds likewise, is 1.25 from it): the rounding, not a
/// modelling error, which moves them by whole units everywhere.
const Q8_EXACT_TOL: f32 = 3.0;
/// Largest accepted |Δlogit| of [`WeightStorage::BlocksQ8`] against
/// llama.cpp's Q4_1 run: two independent 8-bit roundings (measured 1.20).
const Q8_LOGIT_TOL: f32 = 2.0;
/// Near-tie gap for [`WeightStorage::BlocksQ8`]: its argmax may part from
/// llama.cpp's where their roundings differ by more than the gap (one
/// parting at a gap of 0.34 was seen while tuning the kernel).
const Q8_NEAR_TIE: f32 = 0.5;
/// Near-tie gap against llama.cpp on its own Q4_K_M and IQ4_XS files,
/// which round the inputs of their k-quant products to Q8_K (one scale per
/// 256 values, coarser than Q8_1's 32): its argmax differs from the exact
/// reference's at 33 and 32 of 755 positions there, at gaps up to 0.39
/// and 0.37 (15, up to 0.15, on the Q4_1 file).
const K_NEAR_TIE: f32 = 0.5;
/// The same for [`WeightStorage::BlocksQ8`], whose own 8-bit rounding adds
/// to llama.cpp's (a parting at llama.cpp's gap of 0.54 was seen).
const K_Q8_NEAR_TIE: f32 = 0.75;
/// Largest accepted |Δlogit| against llama.cpp on the F32 copy.
const F32_TOL: f32 = 2e-3;
/// Near-tie gap against llama.cpp on the F32 copy.
const F32_NEAR_TIE: f32 = 1e-3;

#[derive(Deserialize)]
struct Fixture {
    llama_cpp_python: String,
    continuation_length: usize,
    prompts: Vec<Prompt>,
    f32_reference: F32Reference,
}

#[derive(Deserialize)]
struct F32Reference {
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct Prompt {
    #[serde(default)]
    kind: String,
    prompt_ids: Vec<usize>,
    prompt_positions: Vec<Position>,
    continuation: Vec<usize>,
    continuation_positions: Vec<Position>,
}

#[derive(Deserialize)]
struct Position {
    argmax: usize,
    top_ids: Vec<usize>,
    top_logits: Vec<f32>,
    /// The exact float64 reference (main run only).
    #[serde(default)]
    exact_logits: Vec<f32>,
}

/// The model file, where `scripts/fetch-smollm2.sh` puts it.
fn model_path() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    models_dir(&workspace).join(SMOLLM2_135M_INSTRUCT)
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b })
}

/// Running figures over all positions.
struct Tally {
    near_tie: f32,
    exact: f32,
    llama: f32,
    positions: usize,
    near_ties: Vec<String>,
    failures: Vec<String>,
}

impl Tally {
    /// Compares our logits `row` at one position with the stored entries.
    /// Returns whether our argmax equals llama.cpp's.
    fn check(&mut self, row: &[f32], r: &Position, at: &str) -> bool {
        for (&id, &l) in r.top_ids.iter().zip(&r.top_logits) {
            self.llama = self.llama.max((row[id] - l).abs());
        }
        for (&id, &e) in r.top_ids.iter().zip(&r.exact_logits) {
            self.exact = self.exact.max((row[id] - e).abs());
        }
        self.positions += 1;
        let ours = argmax(row);
        if ours == r.argmax {
            return true;
        }
        // llama.cpp's gap between its argmax and ours (ours outside its top
        // 16: no tie), and the exact reference's gap between the same two
        // tokens where the fixture has it: a tie in the exact model that
        // llama.cpp's rounding decided is a near tie too.
        let k = r.top_ids.iter().position(|&id| id == ours);
        let gap = k.map(|k| r.top_logits[0] - r.top_logits[k]);
        let exact_gap = k.and_then(|k| Some(r.exact_logits.first()? - r.exact_logits.get(k)?));
        let what = format!(
            "{at}: top-1 {ours}, llama.cpp's {} (its gap {gap:?}, the exact reference's {exact_gap:?})",
            r.argmax
        );
        let tie = |g: Option<f32>| g.is_some_and(|g| g < self.near_tie);
        if tie(gap) || tie(exact_gap) {
            self.near_ties.push(what);
        } else {
            self.failures.push(what);
        }
        false
    }
}

/// Feeds each prompt and then llama.cpp's continuation (one token per
/// forward) and compares every position; returns the tally and the number of
/// prompts whose greedy continuation is identical to llama.cpp's.
fn run(
    model: &LlamaModel,
    prompts: &[Prompt],
    n: usize,
    near_tie: f32,
    stepwise: bool,
) -> (Tally, usize) {
    let vocab = model.config().vocab_size;
    let mut tally = Tally {
        near_tie,
        exact: 0.0,
        llama: 0.0,
        positions: 0,
        near_ties: Vec::new(),
        failures: Vec::new(),
    };
    let mut identical = 0;
    for (p, prompt) in prompts.iter().enumerate() {
        let t = Instant::now();
        assert_eq!(prompt.continuation.len(), n);
        assert_eq!(prompt.continuation_positions.len(), n - 1);
        let mut cache = model.new_cache(1).unwrap();
        let m = prompt.prompt_ids.len();
        // Stepwise: the prompt in one forward, then one token per forward.
        // Otherwise prompt and continuation in one forward (equal by the
        // interface's chunking property, checked in tests/it/llama.rs).
        let first: Vec<usize> = if stepwise {
            prompt.prompt_ids.clone()
        } else {
            [&prompt.prompt_ids[..], &prompt.continuation[..n - 1]].concat()
        };
        let mut rows = tensor_to_vec(model.forward_cached(&mut cache, &[first]).unwrap()).unwrap();
        if stepwise {
            for &token in &prompt.continuation[..n - 1] {
                rows.extend(
                    tensor_to_vec(model.forward_cached(&mut cache, &[vec![token]]).unwrap())
                        .unwrap(),
                );
            }
        }
        let references = prompt
            .prompt_positions
            .iter()
            .chain(&prompt.continuation_positions);
        let mut parted = false;
        for (i, r) in references.enumerate() {
            let at = if i < m {
                format!("prompt {p} ({}) position {i}", prompt.kind)
            } else {
                format!(
                    "prompt {p} ({}) continuation step {}",
                    prompt.kind,
                    i + 1 - m
                )
            };
            let agree = tally.check(&rows[i * vocab..(i + 1) * vocab], r, &at);
            // Position m - 1 + s chose continuation token s.
            if i + 1 >= m && !agree && !parted {
                eprintln!(
                    "prompt {p}: greedy continuation parts at step {}",
                    i + 1 - m
                );
                parted = true;
            }
        }
        identical += usize::from(!parted);
        eprintln!(
            "prompt {p} ({:7}, {:2} prompt tokens): {:.1} s",
            prompt.kind,
            prompt.prompt_ids.len(),
            t.elapsed().as_secs_f32()
        );
    }
    (tally, identical)
}

#[test]
fn smollm2_agrees_with_llama_cpp() {
    let path = model_path();
    if !path.is_file() {
        eprintln!(
            "SKIPPED (checked nothing): {} is missing.\n\
             Fetch it with `scripts/fetch-smollm2.sh`, then rerun \
             `cargo test -p lastmile-models --test it llama_reference::`.",
            path.display()
        );
        return;
    }
    let fixture: Fixture =
        serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    assert_eq!(fixture.prompts.len(), 8);
    // Both storages multiply the same f32 weight values (Blocks dequantises
    // in its kernel, bit-identically), so both must pass the same checks.
    for storage in [WeightStorage::F32, WeightStorage::Blocks] {
        agrees(&path, &fixture, storage);
    }
    q8_agrees(&path, &fixture);
}

/// [`WeightStorage::BlocksQ8`] rounds activations to 8-bit blocks as
/// llama.cpp does on the Q4_1 file, so it is held to check 3 (llama.cpp on
/// the Q4_1 file) with that rounding's own tolerances ([`Q8_LOGIT_TOL`],
/// [`Q8_NEAR_TIE`], [`Q8_EXACT_TOL`]); checks 1 and 2 are about f32
/// activations. It runs with an f32 cache and again with an f16 one
/// ([`KvPrecision::F16`], llama.cpp's own cache type in that run).
fn q8_agrees(path: &std::path::Path, fixture: &Fixture) {
    let model = LlamaModel::open(path, WeightStorage::BlocksQ8, &Device::flex()).unwrap();
    for kv in [KvPrecision::F32, KvPrecision::F16] {
        q8_agrees_with(&model.clone().with_kv_precision(kv).unwrap(), fixture);
    }
}

/// [`q8_agrees`] with one cache precision.
fn q8_agrees_with(model: &LlamaModel, fixture: &Fixture) {
    let start = Instant::now();
    let (tally, identical) = run(
        model,
        &fixture.prompts,
        fixture.continuation_length,
        Q8_NEAR_TIE,
        false,
    );
    eprintln!(
        "BlocksQ8, {:?} cache: {} positions; max |Δlogit| vs llama.cpp {:.4} (tolerance {Q8_LOGIT_TOL}), \
         vs exact f64 {:.4} (tolerance {Q8_EXACT_TOL}); {} near ties (gap < {Q8_NEAR_TIE}):\n  {}\n\
         greedy continuations identical for all {} tokens: {identical}/8; {:.1} s",
        model.kv_precision(),
        tally.positions,
        tally.llama,
        tally.exact,
        tally.near_ties.len(),
        tally.near_ties.join("\n  "),
        fixture.continuation_length,
        start.elapsed().as_secs_f32(),
    );
    check_q4_1(&tally, Q8_LOGIT_TOL, Q8_EXACT_TOL);
}

/// The assertions of check 3 (and 2): no top-1 disagreement but near
/// ties, `max |Δlogit|` against llama.cpp and against the exact reference
/// within `llama_tol` and `exact_tol`.
fn check_q4_1(tally: &Tally, llama_tol: f32, exact_tol: f32) {
    assert!(tally.failures.is_empty(), "{}", tally.failures.join("\n"));
    assert!(
        tally.exact <= exact_tol,
        "|Δ| vs exact {} > {exact_tol}",
        tally.exact
    );
    assert!(
        tally.llama <= llama_tol,
        "|Δ| vs llama.cpp {} > {llama_tol}",
        tally.llama
    );
}

fn agrees(path: &std::path::Path, fixture: &Fixture, storage: WeightStorage) {
    let start = Instant::now();
    let model = LlamaModel::open(path, storage, &Device::flex()).unwrap();
    eprintln!(
        "{storage:?}: loaded in {:.1} s ({} MB of weight matrices)",
        start.elapsed().as_secs_f32(),
        model.matrix_bytes() / 1_000_000
    );

    let (tally, identical) = run(
        &model,
        &fixture.prompts,
        fixture.continuation_length,
        NEAR_TIE,
        false,
    );
    eprintln!(
        "llama-cpp-python {}: {} positions; max |Δlogit| vs llama.cpp {:.4} (tolerance {LOGIT_TOL}), \
         vs exact f64 {:.5} (tolerance {EXACT_TOL}); {} near ties (gap < {NEAR_TIE}):\n  {}\n\
         greedy continuations identical for all {} tokens: {identical}/8",
        fixture.llama_cpp_python,
        tally.positions,
        tally.llama,
        tally.exact,
        tally.near_ties.len(),
        tally.near_ties.join("\n  "),
        fixture.continuation_length,
    );
    check_q4_1(&tally, LOGIT_TOL, EXACT_TOL);

    // llama.cpp on the F32 copy (no activation rounding, f32 KV cache).
    let f32_prompts = &fixture.f32_reference.prompts;
    assert_eq!(f32_prompts.len(), 8);
    for (a, b) in fixture.prompts.iter().zip(f32_prompts) {
        assert_eq!(a.prompt_ids, b.prompt_ids);
    }
    let (tally, identical) = run(
        &model,
        f32_prompts,
        fixture.continuation_length,
        F32_NEAR_TIE,
        true,
    );
    eprintln!(
        "llama.cpp on the F32 copy: {} positions; max |Δlogit| {:.5} (tolerance {F32_TOL}); \
         {} near ties (gap < {F32_NEAR_TIE}):\n  {}\n\
         greedy continuations identical for all {} tokens: {identical}/8",
        tally.positions,
        tally.llama,
        tally.near_ties.len(),
        tally.near_ties.join("\n  "),
        fixture.continuation_length,
    );
    assert!(tally.failures.is_empty(), "{}", tally.failures.join("\n"));
    assert!(
        tally.llama <= F32_TOL,
        "|Δ| vs llama.cpp (F32) {} > {F32_TOL}",
        tally.llama
    );
    assert_eq!(
        identical, 8,
        "{storage:?}: greedy continuations identical to llama.cpp's (F32)"
    );
    eprintln!("{storage:?}: total {:.1} s", start.elapsed().as_secs_f32());
}

/// The host storages through the interface's shape checks on the real
/// model: their host path (shared inputs, RoPE and the SwiGLU gate on host
/// vectors) must give a chunked forward and a truncated cache what one
/// pass gives.
///
/// - [`WeightStorage::Blocks`]: f32 rounding only (measured 1e-4;
///   tolerance 1e-3).
/// - [`WeightStorage::BlocksQ8`]: bit-identical (tolerance 0), with an
///   f32 cache and with an f16 one. Each row's activations are rounded on
///   their own, its integer block sums are exact, each cached key and value
///   is rounded on its own, and the host pass sums each query's attention
///   in one order whatever the pass's shape. (Through burn's attention, whose summation
///   order follows the shape, a last-bit difference flipped 8-bit codes and
///   two chunkings differed by 1.72 logits.)
#[test]
fn smollm2_host_storages_conform_to_language_model_interface() {
    use lastmile_core::lm::conformance;
    let path = model_path();
    if !path.is_file() {
        eprintln!(
            "SKIPPED (checked nothing): {} is missing; fetch it with `scripts/fetch-smollm2.sh`.",
            path.display()
        );
        return;
    }
    let seq: Vec<usize> = (0..24).map(|i| (i * 7919 + 13) % 49_152).collect();
    for (storage, kv, tol) in [
        (WeightStorage::Blocks, KvPrecision::F32, 1e-3),
        (WeightStorage::BlocksQ8, KvPrecision::F32, 0.0),
        (WeightStorage::BlocksQ8, KvPrecision::F16, 0.0),
    ] {
        let model = LlamaModel::open(&path, storage, &Device::flex())
            .and_then(|m| m.with_kv_precision(kv))
            .unwrap();
        let mut worst = conformance::chunked_forward(&model, &seq, &[1, 8, 3, 12], tol).unwrap();
        worst = worst.max(
            conformance::truncate_refeed(&model, &seq[..6], &seq[6..14], &seq[14..20], tol)
                .unwrap(),
        );
        eprintln!(
            "{storage:?}, {kv:?} cache, on SmolLM2: worst |Δlogit| across chunkings {worst:.5} (tolerance {tol})"
        );
        assert!(worst <= tol);
    }
}

/// llama.cpp's own Q4_K_M quantisation of the same model (written with
/// its fixture by `benches/llama_cpp_reference.py kquant`: Q5_0 where a
/// row of 576 is not whole 256-value super-blocks, Q4_K and Q6_K for the
/// feed-forward outputs, Q8_0 where Q6_K falls back): the k-quant and 5-bit
/// formats, read by our loader, against llama.cpp on the same file and
/// the exact reference: ours within [`EXACT_TOL`] of the exact reference,
/// llama.cpp within its own distance from it on the file plus ours (2.20
/// and 3.37 there, against 1.25 on the Q4_1 file), top-1 agreement but
/// near ties ([`K_NEAR_TIE`]); with
/// [`WeightStorage::BlocksQ8`] too, which also rounds the Q4_K scales to
/// f16 and the Q6_K blocks to Q8_0. Not committed and not fetched by CI
/// (it needs llama-cpp-python to make), so ignored unless asked for.
#[test]
#[ignore = "needs SmolLM2-135M-Instruct.Q4_K_M.gguf: python3 benches/llama_cpp_reference.py kquant"]
fn smollm2_q4_k_m_agrees_with_llama_cpp() {
    quantised_file_agrees("llama_cpp_q4_k_m.json");
}

/// As [`smollm2_q4_k_m_agrees_with_llama_cpp`] for llama.cpp's IQ4_XS
/// quantisation (IQ4_NL where rows are not whole super-blocks, IQ4_XS for
/// the feed-forward outputs): the non-linear 4-bit levels.
#[test]
#[ignore = "needs SmolLM2-135M-Instruct.IQ4_XS.gguf: python3 benches/llama_cpp_reference.py kquant --ftype IQ4_XS"]
fn smollm2_iq4_xs_agrees_with_llama_cpp() {
    quantised_file_agrees("llama_cpp_iq4_xs.json");
}

/// The checks of the two tests above, from the fixture `name`.
fn quantised_file_agrees(name: &str) {
    #[derive(Deserialize)]
    struct KquantFixture {
        model: String,
        tensor_types: std::collections::BTreeMap<String, usize>,
        continuation_length: usize,
        prompts: Vec<Prompt>,
    }
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let text = std::fs::read_to_string(fixtures.join(name)).unwrap();
    let fixture: KquantFixture = serde_json::from_str(&text).unwrap();
    let path = model_path().with_file_name(&fixture.model);
    assert!(
        path.is_file(),
        "{} is missing: make it with `python3 benches/llama_cpp_reference.py kquant --ftype \
         {}` (needs llama-cpp-python 0.3.36 and gguf 0.19.0)",
        path.display(),
        fixture
            .model
            .trim_start_matches("SmolLM2-135M-Instruct.")
            .trim_end_matches(".gguf")
    );
    // The file the fixture was written from: the same tensor types.
    let file = lastmile_core::gguf::GgufFile::open(&path).unwrap();
    let mut types = std::collections::BTreeMap::new();
    for t in file.tensors() {
        *types.entry(t.ggml_type().name().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(types, fixture.tensor_types);
    // How far llama.cpp's own rounding takes it from the exact reference
    // on this file: with ours within `exact_tol` of that reference, the
    // two are within the sum of both (the triangle inequality).
    let llama_vs_exact = fixture
        .prompts
        .iter()
        .flat_map(|p| p.prompt_positions.iter().chain(&p.continuation_positions))
        .flat_map(|r| r.top_logits.iter().zip(&r.exact_logits))
        .fold(0.0f32, |m, (l, e)| m.max((l - e).abs()));
    for (storage, near_tie, exact_tol) in [
        (WeightStorage::Blocks, K_NEAR_TIE, EXACT_TOL),
        (WeightStorage::BlocksQ8, K_Q8_NEAR_TIE, Q8_EXACT_TOL),
    ] {
        let llama_tol = llama_vs_exact + exact_tol;
        let start = Instant::now();
        let model = LlamaModel::from_gguf(&file, storage, &Device::flex()).unwrap();
        let (tally, identical) = run(
            &model,
            &fixture.prompts,
            fixture.continuation_length,
            near_tie,
            false,
        );
        eprintln!(
            "{}, {storage:?} ({} MB of matrices): {} positions; max |Δlogit| vs llama.cpp {:.4} \
             (tolerance {llama_tol}), vs exact f64 {:.5} (tolerance {exact_tol}); {} near ties \
             (gap < {near_tie}):\n  {}\n\
             greedy continuations identical for all {} tokens: {identical}/8; {:.1} s",
            fixture.model,
            model.matrix_bytes() / 1_000_000,
            tally.positions,
            tally.llama,
            tally.exact,
            tally.near_ties.len(),
            tally.near_ties.join("\n  "),
            fixture.continuation_length,
            start.elapsed().as_secs_f32(),
        );
        check_q4_1(&tally, llama_tol, exact_tol);
    }
}
