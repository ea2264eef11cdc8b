//! Shared helpers for lastmile's example programs: progress bars, CSV output,
//! a small MLP classifier and its training loop.

pub mod adapters;
pub mod conformal;
pub mod mlp;
pub mod report;
pub mod spec_decode;
