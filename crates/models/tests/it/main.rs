//! The crate's integration tests, built as one test binary: one link of
//! burn per crate instead of one per file keeps CI's disk and build time
//! small. Run one file's tests with `cargo test -p <crate> --test it <file>::`.

#![allow(clippy::unwrap_used)]

mod chat_templates;
mod distill;
mod feature_draft;
mod llama;
mod llama_early_exit;
mod llama_files;
mod llama_interface;
mod llama_module;
mod llama_reference;
mod llama_speed;
mod lm;
mod models;
mod moe;
mod tiny_models;
mod tokenizer_gguf;
mod tokenizer_llama_cpp;
mod tokenizer_vocabs;

/// FNV-1a (64-bit) over ids as little-endian u32: how the fixture scripts
/// summarise long id sequences (`make_tokenizer_fixture.py`).
fn fnv1a64(ids: &[usize]) -> String {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &id in ids {
        for b in (id as u32).to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    format!("{h:016x}")
}
