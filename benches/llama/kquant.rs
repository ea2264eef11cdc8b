//! llama.cpp's own `Q4_K_M` quantisation of the model (Q5_0, Q4_K, Q6_K
//! and Q8_0 tensors; `python3 benches/llama_cpp_reference.py kquant` makes
//! it): one decoding step against the Q4_1 file's, both on the fastest
//! storage, then llama.cpp decoding the same file in the same run.

use std::process::Command;

use criterion::{BenchmarkId, Criterion};
use lastmile_models::llama::{LlamaModel, WeightStorage};

use super::{PROMPT, model_path, open, prompt};

/// The file's name beside the Q4_1 file.
const KQUANT: &str = "SmolLM2-135M-Instruct.Q4_K_M.gguf";

pub(crate) fn bench_kquant(c: &mut Criterion) {
    let path = model_path().with_file_name(KQUANT);
    if !path.is_file() {
        println!(
            "llama_kquant skipped: {} is missing; make it with \
             `python3 benches/llama_cpp_reference.py kquant` (needs llama-cpp-python)",
            path.display()
        );
        return;
    }
    let device = lastmile_core::default_device().expect("default device");
    let storage = WeightStorage::fastest_on(&device);
    let Some(q4_1) = open(storage, &device) else {
        return;
    };
    let q4_k_m = LlamaModel::open(&path, storage, &device).expect("the Q4_K_M file");
    let mut group = c.benchmark_group("llama_kquant_step");
    group.sample_size(30);
    for (name, model) in [("q4_1", &q4_1), ("q4_k_m", &q4_k_m)] {
        println!(
            "llama_kquant {name}: {} MB of weight matrices read per step",
            model.matrix_bytes() / 1_000_000
        );
        let prompt = prompt(model.config().vocab_size);
        let mut cache = model.new_cache(1).expect("cache");
        model
            .forward_cached(&mut cache, std::slice::from_ref(&prompt))
            .expect("prompt");
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let logits = model.forward_cached(&mut cache, &[vec![42]]).expect("step");
                let n = logits.into_data().num_elements();
                cache.truncate(0, PROMPT).expect("truncate");
                n
            })
        });
    }
    group.finish();
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("llama_cpp_reference.py");
    match Command::new("python3")
        .arg(&script)
        .args(["bench", "--threads", "2", "--tokens", "128", "--model"])
        .arg(&path)
        .output()
    {
        Ok(o) => {
            println!("llama.cpp on {KQUANT}:");
            print!("{}", String::from_utf8_lossy(&o.stdout));
        }
        Err(e) => println!("llama.cpp on {KQUANT} skipped: cannot run python3: {e}"),
    }
}
