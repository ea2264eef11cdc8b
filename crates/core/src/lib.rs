//! # lastmile-core
//!
//! The backend-agnostic layer every lastmile crate stands on:
//!
//! - [`device`]: which burn backends this build has ([`Backend`]) and devices
//!   for them; the default is the CPU (`flex`), the GPU (`wgpu`) is opt-in.
//! - [`numerics`]: batched softmax / log-softmax with temperature,
//!   log-sum-exp, entropy, top-k / top-p filtering, argmax, seeded
//!   categorical sampling.
//! - [`linalg`]: thin SVD and QR of `f32` matrices.
//! - [`host`]: in-place work on CPU tensors' memory (a scatter, `C + α·A·B`
//!   through faer) where burn has no fast kernel.
//! - [`lm`]: the incremental causal language-model trait ([`lm::LanguageModel`])
//!   every decoder, drafter and model in lastmile speaks, with a conformance
//!   kit for implementations (`testing` feature).
//! - [`module`]: visit and rewrite the named parameters of any burn module,
//!   selected by name or pattern, with the weight layout explicit.
//! - [`validate`] and [`error`]: input checks in two tiers (host checks, and
//!   tensor checks that cost one device synchronisation) and the [`CoreError`] type.
//! - [`convert`] and [`tensor_file`]: tensor ⇄ `Vec` conversion and
//!   safetensors files of named tensors, safe on hostile input.
//! - [`gguf`]: GGUF (llama.cpp / ggml) files: metadata, tensor index and
//!   dequantisation of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, the
//!   k-quants Q2_K … Q6_K, IQ4_NL and IQ4_XS, safe on hostile input.
//! - [`panel`], [`fastmath`] and [`simd`]: host products of (quantised)
//!   weight matrices on a team of threads, `exp` / `ln` that vectorise, and
//!   host loops compiled for AVX2 + FMA when the CPU has them.
//! - [`model_files`]: where model files fetched or trained at setup time are
//!   kept (`lastmile-models` in cargo's target directory, or `$LASTMILE_MODELS`).
//! - `stats` and `testing` (feature `testing`, for tests only): chi-square /
//!   normal tests and a harness that runs one test body on every compiled backend.
//!
//! Code is written against burn's runtime-dispatched `Tensor<D>` and a
//! [`Device`](burn::tensor::Device) value; nothing here hard-wires a backend.
//!
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::tensor::Tensor;
//! use rand::{SeedableRng, rngs::StdRng};
//! use lastmile_core::{default_device, numerics::{SamplingParams, sample_categorical}};
//!
//! let device = default_device()?;
//! let logits = Tensor::<2>::from_floats([[2.0, 1.0, 0.1, -1.0]], &device);
//! let probs = SamplingParams::new(0.8)?.with_top_p(0.9)?.probabilities(logits)?;
//! let mut rng = StdRng::seed_from_u64(42);
//! let token = sample_categorical(probs, &mut rng)?[0];
//! assert!(token < 4);
//! # }
//! # Ok::<(), lastmile_core::CoreError>(())
//! ```

pub mod convert;
pub mod device;
pub mod error;
pub mod fastmath;
pub mod gguf;
pub mod host;
pub mod linalg;
pub mod lm;
pub mod model_files;
pub mod module;
pub mod numerics;
pub mod panel;
pub mod simd;
#[cfg(feature = "testing")]
pub mod stats;
pub mod tensor_file;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validate;

pub use burn;
pub use device::{Backend, default_backend, default_device};
pub use error::{CoreError, Result};
