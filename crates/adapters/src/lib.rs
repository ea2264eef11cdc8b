//! # lastmile-adapters
//!
//! Parameter-efficient fine-tuning adapters for burn: train a small adapter
//! on a frozen base model, run it unmerged, merge it, switch between many
//! adapters fast, combine them, and exchange them with the Python ecosystem
//! in Hugging Face PEFT's file layout.
//!
//! | kind | update of `W0: [out, in]` | paper |
//! |---|---|---|
//! | [`Lora`] | `s·B A` (rank r), rsLoRA, PiSSA init | Hu et al. 2021; Kalajdzievski 2023; Meng et al. 2024 |
//! | [`Foura`] | `F_out⁻¹ · s·B · diag(G(z)) · A · F_in` (DCT-II / real DFT, adaptive rank gate) | Borse et al., NeurIPS 2024 |
//! | [`Shira`] | `S`, nonzero on a fixed 1–2 % mask (struct, random, weight magnitude, gradient, SNIP) | Bhardwaj et al., NeurIPS 2024 |
//!
//! - [`LinearAdapter`]: the trait every kind implements (`ΔW`, the unmerged
//!   forward, trainable parameters), each kind in its own module with its
//!   config and its PEFT file mapping; [`Adapter`] holds any of them, and
//!   [`Adapter::add_scaled_delta`] is the one fuse `W + c·ΔW` every
//!   deployment path uses (faer's GEMM into the weight's own buffer on a CPU
//!   device).
//! - [`AdaptedModel`]: **the deployment path.** Adapters on named linear
//!   layers of any burn module: attach → train (only adapter parameters
//!   receive gradients) → register → switch / weighted switch / unmerge /
//!   combine → save / load in PEFT's layout. Switches SHiRA by scatter and
//!   low-rank kinds by one fused GEMM; interference metrics AWOM / AWOR
//!   ([`combine`]).
//! - [`Foura::fold`]: FouRA for inference, its transforms folded into the
//!   factors once ([`FoldedFoura`]).
//! - [`AdaptedLinear`]: the layer to write into a model's own code when the
//!   forward must stay unmerged — adapter dropout, FouRA's input-dependent
//!   gate, PiSSA's residual base — which a weight reparameterisation cannot
//!   express; its trained adapter is deployed through [`AdaptedModel`].
//! - [`mixed_batch`]: one forward over a batch whose rows use different
//!   adapters (per-row adapter choice, the base model alone for `None`).
//! - [`peft`]: `adapter_model.safetensors` + `adapter_config.json`, checked
//!   against hostile files.
//!
//! All adapters use PEFT's orientation (`A: [r, in]`, `B: [out, r]`, SHiRA
//! indices into `[out, in]`); burn's `Linear` stores `[in, out]`, which
//! [`WeightLayout`] accounts for when deploying.
//!
//! ## Example
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::module::Module;
//! use burn::nn::{Linear, LinearConfig};
//! use burn::tensor::{Device, Distribution, Tensor};
//! use lastmile_adapters::{AdaptedModel, AdapterSpec, LoraConfig};
//!
//! #[derive(Module, Debug)]
//! struct Net { fc: Linear }
//!
//! let device = Device::flex();
//! let net = Net { fc: LinearConfig::new(16, 8).init(&device) };
//! let mut model = AdaptedModel::new(net, &["fc"])?;
//! model.attach(&AdapterSpec::Lora(LoraConfig::new(4, 8.0).with_seed(1)))?;
//! // … train `model.module()` here (see `AdaptedModel`) …
//! model.register("task")?;
//! model.switch("task")?; // W0 + ΔW fused into `fc`
//! let x = Tensor::<2>::random([2, 16], Distribution::Normal(0.0, 1.0), &device);
//! let y = model.module().fc.forward(x);
//! assert_eq!(y.dims(), [2, 8]);
//! # }
//! # Ok::<(), lastmile_adapters::AdapterError>(())
//! ```

//! ## Dependencies
//! Beyond `lastmile-core` and burn: [rustfft](https://docs.rs/rustfft) for
//! FouRA's `O(n log n)` transform path (the fastest pure-Rust FFT, with
//! reusable plans and caller-owned scratch), and `serde` / `serde_json` to
//! read and write PEFT's `adapter_config.json` — JSON parsing is not
//! something to hand-roll on untrusted input, and serde_json is the
//! ecosystem's audited standard.
//! [regex](https://docs.rs/regex) matches PEFT's `rank_pattern`,
//! `alpha_pattern` and string `target_modules`, which PEFT defines as
//! Python regular expressions; it is the crate burn already compiles, and
//! its linear-time matching is safe on expressions read from files.

pub mod adapter;
mod attach;
pub mod combine;
pub mod error;
pub mod foura;
pub mod layout;
pub mod lora;
mod low_rank;
pub mod mixed_batch;
mod model;
pub mod peft;
mod set;
pub mod shira;
pub mod transform;

pub use adapter::{AdaptedLinear, Adapter, AdapterKind, LinearAdapter};
pub use attach::AdapterSpec;
pub use error::{AdapterError, Result};
pub use foura::{FoldedFoura, Foura, FouraConfig, GateMode, RankGate};
pub use layout::WeightLayout;
pub use lora::{Lora, LoraConfig, LoraInit};
pub use model::AdaptedModel;
pub use set::Interference;
pub use shira::{Shira, ShiraBudget, ShiraConfig, ShiraMask};
pub use transform::{SpectralTransform, TransformPlan};
