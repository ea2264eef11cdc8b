//! The crate's integration tests, built as one test binary: one link of
//! burn per crate instead of one per file keeps CI's disk and build time
//! small. Run one file's tests with `cargo test -p <crate> --test it <file>::`.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;
mod foura;
mod fuse;
mod lora;
mod mixed_batch;
mod model;
mod peft;
mod shira;
mod smollm2;
mod transform;
