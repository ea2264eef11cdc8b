//! LoRA, FouRA and SHiRA adapters (under construction).

pub mod error;
pub mod foura;
pub mod lora;
pub mod shira;
pub mod transform;

pub use error::{AdapterError, Result};
pub use foura::{Foura, FouraConfig, GateMode, RankGate};
pub use lora::{Lora, LoraConfig, LoraInit};
pub use shira::{Shira, ShiraBudget, ShiraConfig, ShiraMask, WeightLayout};
pub use transform::{SpectralTransform, TransformPlan};
pub mod adapter;
pub mod combine;
pub mod set;
pub use adapter::{AdaptedLinear, Adapter, AdapterKind};
pub use set::{AdapterSet, Interference};
pub mod attach;
pub mod peft;
