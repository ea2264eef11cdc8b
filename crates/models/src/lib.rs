//! # lastmile-models
//!
//! Small byte-level decoder-only transformers for lastmile's examples and
//! benchmarks (speculative decoding, mixture-of-experts work): a GPT-2
//! layout model in burn with
//!
//! - a full causal forward for training ([`Transformer::forward`]),
//! - an incremental forward over a ragged batch with a rollback-able
//!   [`KvCache`] ([`Transformer::forward_cached`]), equal to the full forward,
//! - a next-byte training loop ([`train()`]) and held-out loss ([`evaluate`]),
//! - knowledge distillation of a draft from its target ([`distill`], the
//!   forward KL that DistillSpec uses to raise speculative acceptance),
//! - checkpoints in burn's native format ([`Transformer::save`] / [`Transformer::load`]),
//! - a packed weight layout for few-token verify passes ([`PackedTransformer`])
//!   and an arithmetic erf-GELU for decoding ([`gelu_decode`]),
//! - lastmile-core's [`LanguageModel`](lastmile_core::lm::LanguageModel)
//!   interface on [`Transformer`] and [`PackedTransformer`], so that decoders
//!   and drafters (e.g. `lastmile-spec-decode`) take them as they are;
//!   [`ModelError`] converts into [`LmError`](lastmile_core::lm::LmError),
//! - a small mixture-of-experts LM (`MoeTransformer`): the same attention trunk
//!   with lastmile-moe-cache's SwiGLU MoE layers, a load-balancing loss,
//!   routing traces, and a variant (`OffloadedMoeTransformer`) whose experts are read from disk through
//!   moe-cache's DRAM cache,
//! - the byte-level BPE tokenizer of GGUF checkpoints ([`tokenizer`]): vocabulary,
//!   merges and pre-tokenisation from the metadata, matching llama.cpp, with
//!   streaming decoding and the model's chat template,
//! - a Llama-family model loaded from GGUF checkpoints (SmolLM2-135M) with a
//!   KV cache and the same interface ([`llama`]).
//!
//! Not published: it exists to give the method crates real models to run on.
//!
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::tensor::{Device, Int, Tensor};
//! use lastmile_models::TransformerConfig;
//! let d = Device::flex();
//! let model = TransformerConfig::byte_level(32, 2, 4, 64).init(&d)?;
//! let mut cache = model.new_cache(1);
//! let step = model.forward_cached(&mut cache, &[b"hello".iter().map(|b| *b as usize).collect()])?;
//! assert_eq!(step.dims(), [1, 5, 256]);
//! cache.truncate(0, 3)?; // roll back two positions
//! assert_eq!(cache.len(0), 3);
//! # }
//! # Ok::<(), lastmile_models::ModelError>(())
//! ```

mod activation;
mod cache;
mod checkpoint;
mod error;
pub mod llama;
mod lm;
mod moe;
mod packed;
pub mod tokenizer;
mod train;
mod transformer;

pub use activation::gelu_decode;
pub use cache::KvCache;
pub use checkpoint::MAX_CHECKPOINT_BYTES;
pub use error::{ModelError, Result};
pub use moe::{
    Attention, MoeModelError, MoeResult, MoeTrainStep, MoeTransformer, MoeTransformerConfig,
    OffloadedMoeTransformer, Trunk, train_moe,
};
pub use packed::{PANEL_MAX_ROWS, PackedTransformer};
pub use train::{TrainConfig, distill, evaluate, train};
pub use transformer::{Block, Transformer, TransformerConfig};
