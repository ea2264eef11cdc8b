//! The crate's integration tests, built as one test binary: one link of
//! burn per crate instead of one per file keeps CI's disk and build time
//! small. Run one file's tests with `cargo test -p <crate> --test it <file>::`.

#![allow(clippy::unwrap_used)]

mod device;
mod gguf;
mod gguf_hostile;
mod gguf_smollm2;
mod host;
mod linalg;
mod lm;
mod module;
mod numerics;
mod tensor_file;
mod validate;
