#![allow(clippy::unwrap_used)]
//! The Llama model against a naive `f64` reference written here, on small
//! random checkpoints written as GGUF files by this test, and typed errors
//! for bad files (the `LanguageModel` interface and the weight storages are
//! in `llama_interface.rs`).
//!
//! The reference takes weights in **Hugging Face's layout** and applies
//! Hugging Face's RoPE (pairs `(i, i + d/2)`); the GGUF file gets the query
//! and key rows permuted as `convert_hf_to_gguf.py` does. Agreement therefore
//! checks that the model's adjacent-pair rotation on GGUF weights is the
//! same function, besides grouped-query attention, RMSNorm, SwiGLU and the
//! (tied or separate) head.
//!
//! Tolerances: logits are O(1)–O(10) on these models. f32 against f64 over
//! 2 blocks and ≤ 40 positions differs by summation rounding, measured
//! ≤ 5e-6 (flex); `REF_TOL = 1e-4` keeps over an order of margin. The
//! negative controls (the wrong key/value head for each query head; query
//! and key weights left in Hugging Face's row order) move logits by 1.9–8.8.

use burn::tensor::Device;
use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::gguf::GgufFile;
use lastmile_models::llama::{LlamaConfig, LlamaModel, RopeScaling, Scales, WeightStorage};

const REF_TOL: f64 = 1e-4;

// ---------------------------------------------------------------- GGUF writer

#[derive(Clone)]
pub(crate) enum Value {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A GGUF v3 file with the given metadata and f32 tensors (`shape` outermost first).
pub(crate) fn write_gguf(
    meta: &[(&str, Value)],
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut out, k);
        match v {
            Value::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Value::F32(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Value::Bool(b) => {
                out.extend(7u32.to_le_bytes());
                out.push(u8::from(*b));
            }
            Value::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
        }
    }
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for (name, shape, values) in tensors {
        put_str(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(0u32.to_le_bytes()); // GGML_TYPE_F32
        out.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset += (values.len() as u64 * 4).div_ceil(32) * 32;
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    let start = out.len();
    for ((_, _, values), off) in tensors.iter().zip(offsets) {
        out.resize(start + off as usize, 0);
        for v in values {
            out.extend(v.to_le_bytes());
        }
    }
    // The data section ends padded, as gguf-py and llama.cpp write it.
    out.resize(start + offset as usize, 0);
    out
}

// ------------------------------------------------------- checkpoint (HF layout)

/// Deterministic values in (-a, a) (a 64-bit LCG: no dependency on rand's stream).
struct Lcg(u64);
impl Lcg {
    fn vec(&mut self, n: usize, a: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * a
            })
            .collect()
    }
}

struct Layer {
    attn_norm: Vec<f64>,
    q: Vec<f64>, // [d, d]  HF layout [out, in]
    k: Vec<f64>, // [kv, d]
    v: Vec<f64>, // [kv, d]
    o: Vec<f64>, // [d, d]
    ffn_norm: Vec<f64>,
    gate: Vec<f64>, // [ff, d]
    up: Vec<f64>,   // [ff, d]
    down: Vec<f64>, // [d, ff]
}

pub(crate) struct Checkpoint {
    c: LlamaConfig,
    embed: Vec<f64>, // [vocab, d]
    layers: Vec<Layer>,
    norm: Vec<f64>,
    output: Option<Vec<f64>>, // [vocab, d] when untied
}

pub(crate) fn checkpoint(c: &LlamaConfig, seed: u64) -> Checkpoint {
    let mut r = Lcg(seed);
    let (d, kv, ff, v) = (c.d_model, c.n_kv_heads * c.head_dim(), c.d_ff, c.vocab_size);
    let s = |n: usize| 1.0 / (n as f64).sqrt();
    let gain = |r: &mut Lcg| r.vec(d, 0.5).into_iter().map(|x| 1.0 + x).collect();
    let layers = (0..c.n_layers)
        .map(|_| Layer {
            attn_norm: gain(&mut r),
            q: r.vec(d * d, 2.0 * s(d)),
            k: r.vec(kv * d, 2.0 * s(d)),
            v: r.vec(kv * d, s(d)),
            o: r.vec(d * d, s(d)),
            ffn_norm: gain(&mut r),
            gate: r.vec(ff * d, s(d)),
            up: r.vec(ff * d, s(d)),
            down: r.vec(d * ff, s(ff)),
        })
        .collect();
    Checkpoint {
        embed: r.vec(v * d, 1.0),
        layers,
        norm: gain(&mut r),
        output: (!c.tied_embeddings).then(|| r.vec(v * d, s(d))),
        c: c.clone(),
    }
}

/// `convert_hf_to_gguf.py`'s row permutation of a query/key matrix:
/// per head, rows `(2, dh/2)` become `(dh/2, 2)`.
fn permute_rows(w: &[f64], heads: usize, cols: usize) -> Vec<f64> {
    let dh = w.len() / cols / heads;
    let half = dh / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for c in 0..2 {
                let src = h * dh + c * half + i;
                let dst = h * dh + 2 * i + c;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

pub(crate) fn base_meta(c: &LlamaConfig) -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::Str("llama".into())),
        ("llama.vocab_size", Value::U32(c.vocab_size as u32)),
        ("llama.embedding_length", Value::U32(c.d_model as u32)),
        ("llama.block_count", Value::U32(c.n_layers as u32)),
        ("llama.attention.head_count", Value::U32(c.n_heads as u32)),
        (
            "llama.attention.head_count_kv",
            Value::U32(c.n_kv_heads as u32),
        ),
        ("llama.feed_forward_length", Value::U32(c.d_ff as u32)),
        ("llama.rope.freq_base", Value::F32(c.rope_base)),
        (
            "llama.rope.dimension_count",
            Value::U32(c.head_dim() as u32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(c.rms_eps),
        ),
        ("llama.context_length", Value::U32(c.max_context as u32)),
    ]
}

pub(crate) fn tensors(ck: &Checkpoint) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let c = &ck.c;
    let (d, kv, ff, v) = (c.d_model, c.n_kv_heads * c.head_dim(), c.d_ff, c.vocab_size);
    let f = |x: &[f64]| x.iter().map(|v| *v as f32).collect::<Vec<f32>>();
    let mut t = vec![("token_embd.weight".to_owned(), vec![v, d], f(&ck.embed))];
    for (l, w) in ck.layers.iter().enumerate() {
        let n = |p: &str| format!("blk.{l}.{p}.weight");
        t.push((n("attn_norm"), vec![d], f(&w.attn_norm)));
        t.push((
            n("attn_q"),
            vec![d, d],
            f(&permute_rows(&w.q, c.n_heads, d)),
        ));
        t.push((
            n("attn_k"),
            vec![kv, d],
            f(&permute_rows(&w.k, c.n_kv_heads, d)),
        ));
        t.push((n("attn_v"), vec![kv, d], f(&w.v)));
        t.push((n("attn_output"), vec![d, d], f(&w.o)));
        t.push((n("ffn_norm"), vec![d], f(&w.ffn_norm)));
        t.push((n("ffn_gate"), vec![ff, d], f(&w.gate)));
        t.push((n("ffn_up"), vec![ff, d], f(&w.up)));
        t.push((n("ffn_down"), vec![d, ff], f(&w.down)));
    }
    t.push(("output_norm.weight".to_owned(), vec![d], f(&ck.norm)));
    if let Some(o) = &ck.output {
        t.push(("output.weight".to_owned(), vec![v, d], f(o)));
    }
    t
}

// ------------------------------------------------------------ naive reference

fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    w.chunks_exact(x.len())
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

fn rms_norm(x: &[f64], g: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (ms + eps).sqrt();
    x.iter().zip(g).map(|(v, g)| v * s * g).collect()
}

/// Hugging Face's rotation: pairs `(i, i + dh/2)` of each head.
fn rope_hf(x: &mut [f64], heads: usize, pos: usize, base: f64) {
    let dh = x.len() / heads;
    let half = dh / 2;
    for h in 0..heads {
        for i in 0..half {
            let theta = pos as f64 * base.powf(-2.0 * i as f64 / dh as f64);
            let (a, b) = (x[h * dh + i], x[h * dh + i + half]);
            x[h * dh + i] = a * theta.cos() - b * theta.sin();
            x[h * dh + i + half] = b * theta.cos() + a * theta.sin();
        }
    }
}

/// Logits `[n][vocab]` of the full causal forward over `tokens`.
/// `gqa_shift` breaks the head mapping (negative control).
fn naive_forward(ck: &Checkpoint, tokens: &[usize], gqa_shift: usize) -> Vec<Vec<f64>> {
    let c = &ck.c;
    let (d, dh) = (c.d_model, c.head_dim());
    let g = c.n_heads / c.n_kv_heads;
    let eps = c.rms_eps as f64;
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| ck.embed[t * d..(t + 1) * d].to_vec())
        .collect();
    for w in &ck.layers {
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        let mut qs = Vec::new();
        for (p, x) in xs.iter().enumerate() {
            let h = rms_norm(x, &w.attn_norm, eps);
            let mut q = matvec(&w.q, &h);
            let mut k = matvec(&w.k, &h);
            rope_hf(&mut q, c.n_heads, p, c.rope_base as f64);
            rope_hf(&mut k, c.n_kv_heads, p, c.rope_base as f64);
            qs.push(q);
            ks.push(k);
            vs.push(matvec(&w.v, &h));
        }
        for (p, x) in xs.iter_mut().enumerate() {
            let mut att = vec![0.0; d];
            for head in 0..c.n_heads {
                let kvh = (head / g + gqa_shift) % c.n_kv_heads;
                let q = &qs[p][head * dh..(head + 1) * dh];
                let scores: Vec<f64> = (0..=p)
                    .map(|j| {
                        let k = &ks[j][kvh * dh..(kvh + 1) * dh];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (dh as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    for i in 0..dh {
                        att[head * dh + i] += ej / z * vs[j][kvh * dh + i];
                    }
                }
            }
            for (xi, oi) in x.iter_mut().zip(matvec(&w.o, &att)) {
                *xi += oi;
            }
            let h = rms_norm(x, &w.ffn_norm, eps);
            let gate = matvec(&w.gate, &h);
            let up = matvec(&w.up, &h);
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            for (xi, di) in x.iter_mut().zip(matvec(&w.down, &act)) {
                *xi += di;
            }
        }
    }
    let head = ck.output.as_ref().unwrap_or(&ck.embed);
    xs.iter()
        .map(|x| matvec(head, &rms_norm(x, &ck.norm, eps)))
        .collect()
}

pub(crate) fn small_config(tied: bool) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 48,
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_width: None,
        head_norms: false,
        nope_every: None,
        d_ff: 40,
        rope_base: 100.0, // small base: even short sequences turn the slow pairs
        rope_freq_factors: Vec::new(),
        rope_scaling: RopeScaling::None,
        rms_eps: 1e-5,
        max_context: 64,
        tied_embeddings: tied,
        scales: Scales::default(),
    }
}

fn load(ck: &Checkpoint, device: &Device) -> LlamaModel {
    let bytes = write_gguf(&base_meta(&ck.c), &tensors(ck));
    let file = GgufFile::from_vec(bytes).unwrap();
    LlamaModel::from_gguf(&file, WeightStorage::F32, device).unwrap()
}

fn max_diff(model: &[f32], reference: &[Vec<f64>]) -> f64 {
    let v = reference[0].len();
    reference
        .iter()
        .enumerate()
        .flat_map(|(i, row)| {
            row.iter()
                .enumerate()
                .map(move |(j, r)| (model[i * v + j] as f64 - r).abs())
        })
        .fold(0.0, f64::max)
}

backend_test!(matches_naive_reference_tied_and_untied, |device| {
    for tied in [true, false] {
        let ck = checkpoint(&small_config(tied), 17 + tied as u64);
        let model = load(&ck, device);
        assert_eq!(model.config(), &ck.c);
        let tokens: Vec<usize> = (0..40).map(|i| (i * 7 + 3) % 48).collect();
        let reference = naive_forward(&ck, &tokens, 0);
        // All at once, then in chunks through the cache.
        let mut cache = model.new_cache(1).unwrap();
        let once = tensor_to_vec(
            model
                .forward_cached(&mut cache, std::slice::from_ref(&tokens))
                .unwrap(),
        )
        .unwrap();
        let worst = max_diff(&once, &reference);
        assert!(worst < REF_TOL, "tied={tied}: |Δ| = {worst:e}");
        let mut cache = model.new_cache(1).unwrap();
        let mut chunked = Vec::new();
        for chunk in tokens.chunks(9) {
            chunked.extend(
                tensor_to_vec(model.forward_cached(&mut cache, &[chunk.to_vec()]).unwrap())
                    .unwrap(),
            );
        }
        let worst = max_diff(&chunked, &reference);
        assert!(worst < REF_TOL, "tied={tied} chunked: |Δ| = {worst:e}");
        eprintln!("tied={tied}: max |Δ| against the f64 reference {worst:e}");
        // Negative control: the wrong key/value head for each query head.
        let wrong = naive_forward(&ck, &tokens, 1);
        let off = max_diff(&once, &wrong);
        assert!(
            off > 100.0 * REF_TOL,
            "the control should differ, got {off:e}"
        );
        eprintln!("tied={tied}: wrong head mapping differs by {off:e}");
    }
});

backend_test!(rotation_on_unpermuted_weights_differs, |device| {
    // Without convert_hf_to_gguf's permutation the adjacent-pair rotation is
    // a different function: the reference must then disagree.
    let ck = checkpoint(&small_config(true), 5);
    let mut t = tensors(&ck);
    for (name, _, values) in &mut t {
        let l: usize = match name.strip_prefix("blk.").and_then(|r| r.split('.').next()) {
            Some(l) => l.parse().unwrap(),
            None => continue,
        };
        if name.ends_with("attn_q.weight") {
            *values = ck.layers[l].q.iter().map(|v| *v as f32).collect();
        } else if name.ends_with("attn_k.weight") {
            *values = ck.layers[l].k.iter().map(|v| *v as f32).collect();
        }
    }
    let file = GgufFile::from_vec(write_gguf(&base_meta(&ck.c), &t)).unwrap();
    let model = LlamaModel::from_gguf(&file, WeightStorage::F32, device).unwrap();
    let tokens: Vec<usize> = (0..20).map(|i| (i * 5 + 1) % 48).collect();
    let mut cache = model.new_cache(1).unwrap();
    let out = tensor_to_vec(
        model
            .forward_cached(&mut cache, std::slice::from_ref(&tokens))
            .unwrap(),
    )
    .unwrap();
    let off = max_diff(&out, &naive_forward(&ck, &tokens, 0));
    assert!(
        off > 100.0 * REF_TOL,
        "unpermuted weights should differ, got {off:e}"
    );
    eprintln!("unpermuted query/key weights differ by {off:e}");
});
