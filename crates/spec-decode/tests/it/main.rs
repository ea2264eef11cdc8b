//! The crate's integration tests, built as one test binary: one link of
//! burn per crate instead of one per file keeps CI's disk and build time
//! small. Run one file's tests with `cargo test -p <crate> --test it <file>::`.

#![allow(clippy::unwrap_used)]

mod errors;
mod feature_drafter;
mod policies;
