//! A Llama-family decoder (the `llama` architecture of llama.cpp, e.g.
//! SmolLM2-135M; `qwen2`, Qwen2 and Qwen2.5; `phi3`, Phi-3 and Phi-3.5 mini;
//! `qwen3`, Qwen3's dense models; `smollm3`, SmolLM3; `granite`, IBM
//! Granite 3.x's dense models)
//! loaded from a GGUF checkpoint and run in burn, with a KV
//! cache and lastmile-core's [`LanguageModel`](lastmile_core::lm::LanguageModel)
//! interface.
//!
//! # The model, and how each part matches llama.cpp
//!
//! - **Weights** ([`LlamaModel::from_gguf`]): every tensor is dequantised to
//!   `f32` on the host by [`lastmile_core::gguf`] (bit-exact to ggml for
//!   F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/IQ4_NL/IQ4_XS and the k-quants
//!   Q2_K … Q6_K of llama.cpp's `Q4_K_M`-style files), then stored as a
//!   [`WeightStorage`]; or,
//!   with [`WeightStorage::Blocks`] on a CPU device, the matrices keep the
//!   file's quantised blocks and lastmile's panel kernel
//!   ([`lastmile_core::panel`]) dequantises them, to the same f32 values,
//!   inside the product (about twice as fast per decoding step on
//!   SmolLM2-135M, in 164 MB instead of 537). [`WeightStorage::BlocksQ8`]
//!   keeps the same blocks in the file's own size (96 MB) and multiplies
//!   them as llama.cpp does, with activations rounded to 8-bit blocks and
//!   integer dot products (AVX-512 VNNI, or AVX2's byte products): the
//!   fastest step, and a pass over several tokens cheap;
//!   [`WeightStorage::fastest_on`] picks one of the two on a CPU. With
//!   either, the whole pass runs on host vectors beside the kernel rather
//!   than as tensor operations (the `host` source file), which also makes
//!   BlocksQ8's logits independent of how tokens are split into passes.
//!   A file without `output.weight` ties the output head to `token_embd`.
//! - **RMSNorm** (Zhang & Sennrich 2019, eq. 4) with ε from
//!   `llama.attention.layer_norm_rms_epsilon`, before attention, before the
//!   feed-forward network and before the head.
//! - **RoPE** (Su et al. 2021, eq. 34) in llama.cpp's `NORM` mode, rotating
//!   adjacent pairs of each head: `convert_hf_to_gguf.py` permutes the rows
//!   of `attn_q`/`attn_k` so that this equals Hugging Face's half-split
//!   rotation, so GGUF weights are used as stored (details in the `rope`
//!   source file); Llama 3.1's per-pair frequency factors
//!   (`rope_freqs.weight`) divide the angles as in ggml, and linear and
//!   YaRN scaling for long contexts ([`RopeScaling`]: DeepSeek Coder's,
//!   Qwen2.5's 128K files) are applied as ggml's `rope_yarn`; LongRoPE is
//!   refused.
//!   SmolLM3's every fourth block applies no rotation
//!   ([`LlamaConfig::nope_every`]).
//!   Qwen2's, Phi-3's and Qwen3's files are
//!   stored for llama.cpp's `NEOX` mode (dimension `i` with `i + d/2`):
//!   their query and key rows are reordered on loading into adjacent pairs,
//!   which leaves the attention unchanged (the `arch` source file).
//! - **Fused matrices** (Phi-3): a fused query/key/value matrix
//!   (`blk.N.attn_qkv.weight`) and a fused gate/up one (`ffn_up` of twice
//!   the width, the gate first) are split into their projections' rows on
//!   loading; Phi-3's sliding window is ignored, as llama.cpp ignores it.
//! - **Biases** on the query, key and value projections where the file has
//!   them (`blk.N.attn_{q,k,v}.bias`: Qwen2), added after the products; a
//!   file with other biases is refused.
//! - **Per-head norms and wider heads** (Qwen3): each head's queries and
//!   keys RMS-normalised with gains of their own (`blk.N.attn_q_norm`,
//!   `attn_k_norm`) before the rotation, and a head width read from
//!   `attention.key_length` ([`LlamaConfig::head_width`]), so that the
//!   query and output projections are `n_heads · head_dim` wide
//!   (Qwen3-0.6B: 16 heads of 128 at width 1024).
//! - **Grouped-query attention** (Ainslie et al. 2023): query head `j`
//!   reads key/value head `j / (n_heads / n_kv_heads)`, scores scaled by
//!   `1/√d_head` (or the file's `attention.scale`), causal mask; the cache
//!   ([`LlamaCache`]) keeps the `n_kv_heads` rotated keys and values only.
//! - **Multipliers** (Granite, [`Scales`]): the embeddings, each residual
//!   branch and the logits scaled by the file's `embedding_scale`,
//!   `residual_scale` and `1/logit_scale`.
//! - **SwiGLU** feed-forward network (Shazeer 2020, eq. 6):
//!   `W_down (SiLU(W_gate h) ⊙ W_up h)`.
//! - **Early exit** ([`LlamaEarlyExit`]): a borrowed view running the first
//!   blocks, the final norm and the head, a self-speculative draft.
//! - **Distilled drafts** ([`distill_draft`]): the first blocks trained to
//!   match the full model, optionally with a head over the tokens the
//!   target is most likely to emit ([`LlamaModule::draft_with_vocab`],
//!   [`likely_tokens`]; other tokens get [`OUTSIDE_HEAD_LOGIT`]): on
//!   SmolLM2 a 2-block draft with an 8 192-token head costs about 3 % of a
//!   target step instead of 14 % with the full 49 152-token head.
//!   With [`WeightStorage::BlocksQ8`] trained float matrices are rounded to
//!   Q8_0 blocks ([`lastmile_core::gguf::quantize_q8_0`]), with
//!   [`WeightStorage::BlocksQ4`] ([`WeightStorage::for_draft`] of
//!   BlocksQ8) to Q4_1 blocks ([`lastmile_core::gguf::quantize_q4_1`]):
//!   the 2-block draft's step 0.09 target steps instead of 0.14 in the
//!   decoding loop's setting, as many tokens a round.
//! - **Feature-level drafts** ([`LlamaFeatureDraft`], EAGLE, Li et al.
//!   2024): one block that reads the target's features
//!   ([`LlamaModel::forward_features`], the head's input) with the next
//!   token's embedding and predicts the target's next feature, read
//!   through the target's (restricted) head; trained by
//!   [`train_feature_draft`] with EAGLE's feature and token losses,
//!   optionally unrolled over several drafting steps that read the draft's
//!   own predictions (EAGLE-3's training-time test,
//!   [`LlamaFeatureDraftModule::forward_unrolled`]), and driven by
//!   lastmile-spec-decode's `FeatureDrafter`.
//!
//! Agreement with llama.cpp itself (llama-cpp-python 0.3.36) is checked by
//! `tests/it/llama_reference.rs` against a committed fixture written by
//! `benches/llama_cpp_reference.py` (read with `serde` / `serde_json`,
//! dev-dependencies of this crate for that test only). On an F32 copy of
//! the SmolLM2-135M Q4_1 file, where llama.cpp computes in f32 as this
//! model does, the logits agree to 1.1e-4 (1.6e-4 with
//! [`WeightStorage::Blocks`]) and the 64-token greedy continuations of all
//! 8 test prompts are identical, with either storage. On the Q4_1 file
//! itself llama.cpp rounds activations to 8 bits for its quantised products
//! (and keys/values to f16), which moves its logits by up to 1.25; argmax
//! choices then differ at near ties (gaps ≤ 0.15), so greedy continuations
//! part after a few to a few dozen tokens. [`WeightStorage::BlocksQ8`],
//! rounding activations likewise (but keys and values kept f32), is
//! 1.20 from llama.cpp's logits on that file and 1.89 from the exact ones,
//! with argmax differences at near ties. llama.cpp's own `Q4_K_M`
//! quantisation of the model (Q5_0, Q4_K, Q6_K and Q8_0 tensors; made by
//! `benches/llama_cpp_reference.py kquant`, not fetched by CI) is checked
//! the same way by an ignored test: 1.1e-4 from the exact reference with
//! [`WeightStorage::Blocks`], and within llama.cpp's own rounding of it
//! (2.2, its inputs to Q4_K and Q6_K rounded to 8 bits per 256 values)
//! with either storage. `tests/it/llama.rs` checks the model
//! against a naive float64 implementation on small GGUF files written by
//! the test.
//!
//! # Examples
//!
//! A tiny randomly initialised model (no file needed):
//!
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::tensor::Device;
//! use lastmile_core::lm::LanguageModel;
//! use lastmile_models::llama::{LlamaConfig, WeightStorage};
//!
//! let model = LlamaConfig::tiny().init_random(42, WeightStorage::F32, &Device::flex())?;
//! let mut cache = model.new_cache(1)?;
//! let logits = model.forward_cached(&mut cache, &[vec![3, 1, 4, 1, 5]])?;
//! assert_eq!(logits.dims(), [1, 5, model.vocab_size()]);
//! // Roll back two tokens and continue from there.
//! cache.truncate(0, 3)?;
//! let next = model.forward_cached(&mut cache, &[vec![9]])?;
//! assert_eq!((next.dims(), cache.len(0)), ([1, 1, 64], 4));
//! # }
//! # Ok::<(), lastmile_models::llama::LlamaError>(())
//! ```
//!
//! Loading a checkpoint:
//!
//! ```no_run
//! use burn::tensor::Device;
//! use lastmile_models::llama::{LlamaModel, WeightStorage};
//! let model = LlamaModel::open("SmolLM2-135M-Instruct.Q4_1.gguf", WeightStorage::F32, &Device::flex())?;
//! println!("{} MB of matrices read per forward", model.matrix_bytes() / 1_000_000);
//! # Ok::<(), lastmile_models::llama::LlamaError>(())
//! ```

mod arch;
mod block;
mod cache;
mod config;
mod distill;
mod early_exit;
mod error;
mod feature_draft;
mod feature_train;
mod feature_unroll;
mod host;
mod host_attention;
mod layer_input;
mod lm;
mod load;
mod model;
mod module;
mod norm;
mod rope;
mod scales;
mod storage;
mod vocab;

pub use cache::{CACHE_CHUNK, KvPrecision, LlamaCache};
pub use config::{LlamaConfig, MAX_DIM, MAX_LAYERS};
pub use distill::{MAX_DRAFT_BYTES, distill_draft, likely_tokens};
pub use early_exit::LlamaEarlyExit;
pub use error::{LlamaError, LlamaResult};
pub use feature_draft::LlamaFeatureDraft;
pub use feature_train::{
    FeatureLoss, FeatureLossConfig, LlamaFeatureDraftModule, train_feature_draft,
};
pub use feature_unroll::MAX_UNROLL;
pub use model::LlamaModel;
pub use module::{LlamaBlock, LlamaModule};
pub use rope::RopeScaling;
pub use scales::Scales;
pub use storage::WeightStorage;
pub use vocab::OUTSIDE_HEAD_LOGIT;
