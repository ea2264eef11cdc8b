//! Building a [`LlamaModel`]'s weights from a GGUF file (as the file's
//! architecture lays them out, see the `arch` source file) or at random.

use burn::tensor::{Device, Tensor, TensorData};
use lastmile_core::gguf::GgufFile;
use rand::RngExt;
use rand::rngs::StdRng;

use super::arch::{Architecture, fused_rows, neox_as_pairs, refuse_other_biases, reorder};
use super::block::Block;
use super::cache::KvPrecision;
use super::config::LlamaConfig;
use super::error::{LlamaError, LlamaResult};
use super::model::LlamaModel;
use super::norm::RmsNorm;
use super::rope::Rope;
use super::storage::{Matrix, WeightStorage};

/// Where a weight comes from: the GGUF file or a seeded generator.
pub(super) enum Source<'a> {
    Gguf(&'a GgufFile),
    Random(Box<StdRng>),
}

impl Source<'_> {
    /// The values of `name`, row-major for `shape` (outermost first).
    fn values(&mut self, name: &str, shape: &[usize], fill: Fill) -> LlamaResult<Vec<f32>> {
        match self {
            Source::Gguf(file) => {
                check_shape(file, name, shape)?;
                Ok(file.dequantize(name)?)
            }
            Source::Random(rng) => {
                let n: usize = shape.iter().product();
                Ok(match fill {
                    Fill::Ones => vec![1.0; n],
                    Fill::Uniform(a) => (0..n).map(|_| rng.random_range(-a..a)).collect(),
                })
            }
        }
    }
}

/// Checks that GGUF tensor `name` has `shape` (outermost first).
fn check_shape(file: &GgufFile, name: &str, shape: &[usize]) -> LlamaResult<()> {
    let found = file.tensor_info(name)?.shape();
    // ggml drops trailing ne of 1; compare without leading ones.
    let trim = |s: &[usize]| -> Vec<usize> { s.iter().copied().skip_while(|d| *d == 1).collect() };
    if trim(&found) != trim(shape) {
        return Err(LlamaError::TensorShape {
            name: name.to_owned(),
            expected: shape.to_vec(),
            found,
        });
    }
    Ok(())
}

/// How a randomly initialised weight is filled.
#[derive(Clone, Copy)]
pub(super) enum Fill {
    Ones,
    Uniform(f32),
}

impl LlamaModel {
    pub(super) fn build(
        config: LlamaConfig,
        mut src: Source<'_>,
        storage: WeightStorage,
        device: &Device,
    ) -> LlamaResult<Self> {
        config.check()?;
        storage.check_device(device)?;
        let d = config.d_model;
        let dh = config.head_dim();
        let kv = config.n_kv_heads * dh;
        // The query heads' width: `d` unless the file sets the head width.
        let qw = config.attention_width();
        let (vocab, ff) = (config.vocab_size, config.d_ff);
        let eps = config.rms_eps;
        // Rows `rows[r]` of the file's `name` (`file_rows` × `inp`) become
        // the matrix's rows `r` (a projection's rows out of a fused matrix,
        // reordered as in `neox_as_pairs`); all of them in order when `None`.
        let matrix = |src: &mut Source<'_>,
                      name: &str,
                      file_rows: usize,
                      inp: usize,
                      rows: Option<&[usize]>| {
            let out = rows.map_or(file_rows, <[usize]>::len);
            if let (true, Source::Gguf(file)) = (storage.is_host(), &*src) {
                // The file's blocks as they are (no dequantised copy).
                check_shape(file, name, &[file_rows, inp])?;
                let ggml_type = file.tensor_info(name)?.ggml_type();
                let data = file.tensor_data(name)?;
                let data = match rows {
                    Some(rows) => reorder(&data, data.len() / file_rows, rows),
                    None => data.to_vec(),
                };
                return Matrix::from_gguf_blocks(ggml_type, &data, out, inp, storage);
            }
            let fill = Fill::Uniform(1.0 / (inp as f32).sqrt());
            let values = src.values(name, &[file_rows, inp], fill)?;
            let values = match rows {
                Some(rows) => reorder(&values, inp, rows),
                None => values,
            };
            Matrix::from_out_in(&values, out, inp, storage, device)
        };
        // A projection's bias, where the file has one (reordered as its rows).
        let biased = |src: &Source<'_>, m: Matrix, name: &str, order: Option<&[usize]>| {
            let Source::Gguf(file) = src else {
                return Ok(m);
            };
            if file.tensor_info(name).is_err() {
                return Ok(m);
            }
            check_shape(file, name, &[m.shape().0])?;
            let values = file.dequantize(name)?;
            let values = match order {
                Some(order) => reorder(&values, 1, order),
                None => values,
            };
            m.with_bias(values, device)
        };
        let arch = match &src {
            Source::Gguf(file) => Some(Architecture::of(file)?),
            Source::Random(_) => None,
        };
        let (q_order, k_order) = match arch {
            Some(a) if a.neox() => (
                Some(neox_as_pairs(config.n_heads, dh)),
                Some(neox_as_pairs(config.n_kv_heads, dh)),
            ),
            _ => (None, None),
        };
        // Whether the file stores tensor `name` (false for random weights).
        let has = |src: &Source<'_>, name: &str| match src {
            Source::Gguf(file) => file.tensor_info(name).is_ok(),
            Source::Random(_) => false,
        };
        if let Source::Gguf(file) = &src {
            refuse_other_biases(file, config.n_layers)?;
        }
        let norm = |src: &mut Source<'_>, name: &str| {
            let gain = src.values(name, &[d], Fill::Ones)?;
            Ok::<_, LlamaError>(RmsNorm::new(
                Tensor::from_data(TensorData::new(gain, [d]), device),
                eps,
            ))
        };
        // Qwen3's per-head query and key gains, reordered as the rows are.
        let head_norm = |src: &mut Source<'_>, name: &str| {
            if !config.head_norms {
                if has(src, name) {
                    return Err(LlamaError::Config {
                        field: "tensor",
                        value: name.to_owned(),
                        expected: "no per-head query or key norm outside the qwen3 architecture"
                            .to_owned(),
                    });
                }
                return Ok(None);
            }
            let gain = src.values(name, &[dh], Fill::Ones)?;
            let gain = match arch {
                Some(a) if a.neox() => reorder(&gain, 1, &neox_as_pairs(1, dh)),
                _ => gain,
            };
            Ok::<_, LlamaError>(Some(RmsNorm::new(
                Tensor::from_data(TensorData::new(gain, [dh]), device),
                eps,
            )))
        };
        let embed_values = src.values("token_embd.weight", &[vocab, d], Fill::Uniform(1.0))?;
        let mut blocks = Vec::with_capacity(config.n_layers);
        for l in 0..config.n_layers {
            let name = |part: &str| format!("blk.{l}.{part}.weight");
            let bias = |part: &str| format!("blk.{l}.{part}.bias");
            let (qo, ko) = (q_order.as_deref(), k_order.as_deref());
            let [q, k, v] = if !has(&src, &name("attn_q")) && has(&src, &name("attn_qkv")) {
                // Phi-3's fused rows: the queries', then the keys', then the values'.
                let (fused, rows) = (name("attn_qkv"), qw + 2 * kv);
                [(0, qw, qo), (qw, kv, ko), (qw + kv, kv, None)].map(|(first, n, order)| {
                    let pick = fused_rows(first, n, order);
                    matrix(&mut src, &fused, rows, d, Some(&pick))
                })
            } else {
                [
                    matrix(&mut src, &name("attn_q"), qw, d, qo),
                    matrix(&mut src, &name("attn_k"), kv, d, ko),
                    matrix(&mut src, &name("attn_v"), kv, d, None),
                ]
            };
            let [q, k, v] = [q?, k?, v?];
            let [gate, up] = if arch == Some(Architecture::Phi3) && !has(&src, &name("ffn_gate")) {
                // Phi-3's `ffn_up` holds the gate's rows, then the up projection's.
                let fused = name("ffn_up");
                [0, ff].map(|first| {
                    let pick = fused_rows(first, ff, None);
                    matrix(&mut src, &fused, 2 * ff, d, Some(&pick))
                })
            } else {
                [
                    matrix(&mut src, &name("ffn_gate"), ff, d, None),
                    matrix(&mut src, &name("ffn_up"), ff, d, None),
                ]
            };
            let [gate, up] = [gate?, up?];
            blocks.push(Block {
                attn_norm: norm(&mut src, &name("attn_norm"))?,
                q: biased(&src, q, &bias("attn_q"), qo)?,
                k: biased(&src, k, &bias("attn_k"), ko)?,
                v: biased(&src, v, &bias("attn_v"), None)?,
                q_norm: head_norm(&mut src, &name("attn_q_norm"))?,
                k_norm: head_norm(&mut src, &name("attn_k_norm"))?,
                o: matrix(&mut src, &name("attn_output"), d, qw, None)?,
                ffn_norm: norm(&mut src, &name("ffn_norm"))?,
                gate,
                up,
                down: matrix(&mut src, &name("ffn_down"), d, ff, None)?,
            });
        }
        let final_norm = norm(&mut src, "output_norm.weight")?;
        let head = if config.tied_embeddings {
            match (storage.is_host(), &src) {
                (true, Source::Gguf(file)) => {
                    let ggml_type = file.tensor_info("token_embd.weight")?.ggml_type();
                    let data = file.tensor_data("token_embd.weight")?;
                    Matrix::from_gguf_blocks(ggml_type, &data, vocab, d, storage)?
                }
                _ => Matrix::from_out_in(&embed_values, vocab, d, storage, device)?,
            }
        } else {
            matrix(&mut src, "output.weight", vocab, d, None)?
        };
        let embed = Tensor::from_data(TensorData::new(embed_values, [vocab, d]), device);
        let factors = &config.rope_freq_factors;
        let (base, scale) = (config.rope_base, config.rope_scaling);
        let rope = Rope::new(dh, config.max_context, base, factors, scale, device);
        Ok(Self {
            config,
            storage,
            embed,
            blocks,
            norm: final_norm,
            head,
            head_tokens: None,
            rope,
            device: device.clone(),
            kv: KvPrecision::F32,
        })
    }
}
