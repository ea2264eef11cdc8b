//! The crate's integration tests, built as one test binary: one link of
//! burn per crate instead of one per file keeps CI's disk and build time
//! small. Run one file's tests with `cargo test -p <crate> --test it <file>::`.

#![allow(clippy::unwrap_used)]

mod chat_templates;
mod distill;
mod feature_draft;
mod llama;
mod llama_early_exit;
mod llama_interface;
mod llama_module;
mod llama_reference;
mod llama_rope_freqs;
mod llama_speed;
mod lm;
mod models;
mod moe;
mod tokenizer_gguf;
mod tokenizer_llama_cpp;
mod tokenizer_vocabs;
