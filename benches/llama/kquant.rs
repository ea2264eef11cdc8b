//! llama.cpp's own `Q4_K_M` and `IQ4_XS` quantisations of the model
//! (`python3 benches/llama_cpp_reference.py kquant [--ftype IQ4_XS]` makes
//! them): one decoding step on each against the Q4_1 file's, all on the
//! fastest storage, then llama.cpp decoding each file in the same run.

use std::ffi::OsStr;

use criterion::{BenchmarkId, Criterion};
use lastmile_models::llama::{LlamaModel, WeightStorage};

use super::{PROMPT, model_path, open, prompt};

/// The files' quantisations (`SmolLM2-135M-Instruct.<this>.gguf` beside
/// the Q4_1 file).
const FTYPES: [&str; 2] = ["Q4_K_M", "IQ4_XS"];

pub(crate) fn bench_kquant(c: &mut Criterion) {
    let device = lastmile_core::default_device().expect("default device");
    let storage = WeightStorage::fastest_on(&device);
    let mut files = Vec::new();
    for ftype in FTYPES {
        let path = model_path().with_file_name(format!("SmolLM2-135M-Instruct.{ftype}.gguf"));
        if path.is_file() {
            let model = LlamaModel::open(&path, storage, &device).expect("the quantised file");
            files.push((ftype.to_lowercase(), path, model));
        } else {
            println!(
                "llama_kquant: {} is missing; make it with \
                 `python3 benches/llama_cpp_reference.py kquant --ftype {ftype}` \
                 (needs llama-cpp-python)",
                path.display()
            );
        }
    }
    if files.is_empty() {
        return;
    }
    let Some(q4_1) = open(storage, &device) else {
        return;
    };
    let mut group = c.benchmark_group("llama_kquant_step");
    group.sample_size(30);
    let models = std::iter::once(("q4_1", &q4_1))
        .chain(files.iter().map(|(name, _, model)| (name.as_str(), model)));
    for (name, model) in models {
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
    let script = lastmile_benches::llama_cpp_script();
    for (_, path, _) in &files {
        let args = ["bench", "--threads", "2", "--tokens", "128", "--model"].map(OsStr::new);
        let args: Vec<&OsStr> = args.into_iter().chain([path.as_os_str()]).collect();
        let title = format!("llama.cpp on {}", path.display());
        lastmile_benches::print_python(&title, &script, &args);
    }
}
