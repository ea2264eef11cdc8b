//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A fresh path in the temp directory, unique per process and call.
pub fn temp_path(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("lastmile-moe-{tag}-{}-{n}", std::process::id()))
}

/// Removes the file when dropped.
pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}

/// `steps` steps of `k` distinct ids below `universe`, drawn with a bias
/// towards low ids (so there is reuse to find).
pub fn random_steps(seed: u64, steps: usize, universe: usize, k: usize) -> Vec<Vec<usize>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..steps)
        .map(|_| {
            let mut s = Vec::with_capacity(k);
            while s.len() < k {
                let u: f64 = rng.random();
                let id = ((u * u) * universe as f64) as usize % universe;
                if !s.contains(&id) {
                    s.push(id);
                }
            }
            s
        })
        .collect()
}
