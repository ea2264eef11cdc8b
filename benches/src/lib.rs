//! Shared inputs for lastmile's criterion benchmarks: seeded random tensors
//! and the list of CPU backends to compare.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::{Device, Tensor, TensorData};
use lastmile_core::Backend;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A `[rows, cols]` tensor of seeded uniform values in `[-scale, scale]`.
pub fn random_tensor(shape: [usize; 2], scale: f32, seed: u64, device: &Device) -> Tensor<2> {
    let mut rng = StdRng::seed_from_u64(seed);
    let data: Vec<f32> = (0..shape[0] * shape[1])
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// The CPU backends compiled into this build.
pub fn cpu_backends() -> Vec<Backend> {
    Backend::compiled()
        .into_iter()
        .filter(|b| b.is_cpu())
        .collect()
}

/// `benches/llama_cpp_reference.py`, the llama.cpp anchor of the
/// real-model benches.
pub fn llama_cpp_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("llama_cpp_reference.py")
}

/// Runs `python3 script args…` and prints its output under `title`, with
/// its error output when it fails (a signal, e.g. SIGILL from an
/// instruction set the CPU reports but the machine does not allow, leaves
/// none); says so when python3 cannot be run.
pub fn print_python(title: &str, script: &Path, args: &[&OsStr]) {
    match Command::new("python3").arg(script).args(args).output() {
        Ok(o) => {
            println!("{title}:");
            print!("{}", String::from_utf8_lossy(&o.stdout));
            if !o.status.success() {
                println!(
                    "{title} failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
        Err(e) => println!("{title} skipped: cannot run python3: {e}"),
    }
}
