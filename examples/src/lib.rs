//! Shared helpers for lastmile's example programs: progress bars, CSV output,
//! SVG plots, a small MLP classifier and its training loop.

pub mod adapters;
pub mod adapters_llm;
pub mod conformal;
pub mod draft_text;
pub mod drafts;
pub mod federated;
pub mod llm;
pub mod llm_sweep;
pub mod mlp;
pub mod moe;
pub mod plot;
pub mod report;
pub mod spec_decode;
pub mod sweep;
pub mod timing;
