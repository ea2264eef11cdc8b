//! The GGUF architectures read as a Llama-family model, and what each
//! changes in how the file's tensors are laid out in the model.
//!
//! Qwen2 (llama.cpp's `qwen2`) is Llama's graph with two differences
//! (llama.cpp's `src/models/qwen2.cpp`): biases on the query, key and value
//! projections, and NEOX rotary positions, which turn a head's dimension
//! `i` with `i + d/2` where Llama's turn `2i` with `2i + 1`, both at
//! frequency `θ^(−2i/d)`. Rather than a second rotation, the query and key
//! rows (and their biases) of each head are reordered on loading so that
//! NEOX's pairs sit side by side ([`neox_as_pairs`]): the rotation is then
//! Llama's, and since queries and keys are reordered alike their dot
//! products, and so the attention, are unchanged.
//!
//! Phi-3 (llama.cpp's `phi3`, `src/models/phi3.cpp`) is Llama's graph with
//! NEOX rotary positions, as Qwen2's, and two matrices stored fused: the
//! query, key and value projections as one `attn_qkv` (their rows one
//! after another) and the SwiGLU gate and up projections as one `ffn_up`
//! of twice the feed-forward width, the gate first (ggml's `swiglu` of
//! one tensor gates its second half by its first). The loader takes each
//! projection's rows out of the fused matrix ([`fused_rows`]), so the
//! model runs the same products as for Llama. A sliding window in the
//! file (`phi3.attention.sliding_window`) is ignored, as llama.cpp ignores
//! it for this architecture (it warns and attends to every position).
//!
//! Qwen3 (llama.cpp's `qwen3`, `src/models/qwen3.cpp`) is Llama's graph
//! with NEOX rotary positions and one more step: each head's query and key
//! vectors are RMS-normalised with a gain of their own (`attn_q_norm`,
//! `attn_k_norm`, `head_dim` values shared by the heads) before the
//! rotation. Its head width is the file's `qwen3.attention.key_length`,
//! which need not be the model's width over its heads (Qwen3-0.6B: 16
//! heads of 128 at width 1024), so the query and output projections are
//! `n_heads · head_dim` wide. The gains are reordered on loading as the
//! query and key rows are ([`neox_as_pairs`] of one head): a norm's mean
//! of squares does not depend on the order.
//!
//! SmolLM3 (llama.cpp's `smollm3`, `src/models/smollm3.cpp`) is Llama's
//! graph, rotation included, except that every fourth block (blocks 3, 7,
//! …; llama.cpp fixes the step at 4) applies no rotary positions ("NoPE"):
//! its queries and keys, and so its cached keys, are used as projected
//! ([`super::LlamaConfig::nope_every`]).
//!
//! Granite (llama.cpp's `granite`, `src/models/granite.cpp`: IBM Granite
//! 3.x dense models) is Llama's graph with four multipliers
//! ([`super::Scales`]): the embeddings times `embedding_scale`, each
//! attention and feed-forward output times `residual_scale` before its
//! residual add, the attention's scores times `attention.scale` instead of
//! `1/√d_head`, and the logits divided by `logit_scale`; its rotary
//! positions are switched off for every block when
//! `granite.rope.scaling.finetuned` is false.

use lastmile_core::gguf::GgufFile;

use super::error::{LlamaError, LlamaResult};

/// The GGUF architectures read as a Llama-family model (llama.cpp's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Architecture {
    /// `llama`: Llama 1–3, SmolLM, TinyLlama, Mistral 7B v0.1, …
    Llama,
    /// `qwen2`: Qwen2 and Qwen2.5 — Llama's graph with biases on the query,
    /// key and value projections, and NEOX rotary positions (a head's
    /// dimension `i` turns with `i + d/2`, not `2i` with `2i + 1`).
    Qwen2,
    /// `phi3`: Phi-3 and Phi-3.5 mini — Llama's graph with NEOX rotary
    /// positions and fused query/key/value and gate/up matrices.
    Phi3,
    /// `qwen3`: Qwen3 (dense) — Llama's graph with NEOX rotary positions,
    /// each head's queries and keys RMS-normalised before them, and a head
    /// width the file may set apart from the model's width.
    Qwen3,
    /// `smollm3`: SmolLM3 — Llama's graph with every fourth block
    /// attending without rotary positions.
    Smollm3,
    /// `granite`: IBM Granite 3.x (dense) — Llama's graph with multipliers
    /// on the embeddings, the residual branches, the attention's scores
    /// and the logits.
    Granite,
}

impl Architecture {
    /// The file's `general.architecture`.
    ///
    /// # Errors
    /// [`LlamaError::Architecture`] for another; [`LlamaError::Gguf`] when
    /// the key is missing or not a string.
    pub(crate) fn of(file: &GgufFile) -> LlamaResult<Self> {
        match file.metadata().get_str("general.architecture")? {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "phi3" => Ok(Self::Phi3),
            "qwen3" => Ok(Self::Qwen3),
            "smollm3" => Ok(Self::Smollm3),
            "granite" => Ok(Self::Granite),
            other => Err(LlamaError::Architecture {
                found: other.to_owned(),
            }),
        }
    }

    /// The prefix of the architecture's metadata keys.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Phi3 => "phi3",
            Self::Qwen3 => "qwen3",
            Self::Smollm3 => "smollm3",
            Self::Granite => "granite",
        }
    }

    /// Whether the rotary positions are NEOX's (a head's dimension `i`
    /// turned with `i + d/2`), which the loader reorders into Llama's pairs.
    pub(crate) fn neox(self) -> bool {
        matches!(self, Self::Qwen2 | Self::Phi3 | Self::Qwen3)
    }
}

/// The rows of a fused matrix that hold one projection: `rows` rows from
/// row `first` on, each put through `order` (the projection's own row
/// order, see [`neox_as_pairs`]) when given.
///
/// ```text
/// first = 4, rows = 4, order = [0, 2, 1, 3]: [4, 6, 5, 7]
/// ```
pub(crate) fn fused_rows(first: usize, rows: usize, order: Option<&[usize]>) -> Vec<usize> {
    match order {
        Some(order) => order.iter().map(|r| first + r).collect(),
        None => (first..first + rows).collect(),
    }
}

/// The row order that puts each head's NEOX pairs side by side: row
/// `h·d + 2i` of the result is row `h·d + i` of the file, row `h·d + 2i + 1`
/// its row `h·d + i + d/2` (`heads` heads of `d` rows, `d` even).
///
/// ```text
/// d = 4: [0, 2, 1, 3]   (pairs (0, 2) and (1, 3) of NEOX become (0, 1), (2, 3))
/// ```
pub(crate) fn neox_as_pairs(heads: usize, d: usize) -> Vec<usize> {
    let half = d / 2;
    (0..heads * d)
        .map(|r| {
            let (h, j) = (r / d, r % d);
            h * d + j / 2 + (j % 2) * half
        })
        .collect()
}

/// Rows `order[r]` of `data` (rows of `row` elements) as rows `r`.
pub(crate) fn reorder<T: Copy>(data: &[T], row: usize, order: &[usize]) -> Vec<T> {
    order
        .iter()
        .flat_map(|&r| &data[r * row..(r + 1) * row])
        .copied()
        .collect()
}

/// The biases llama.cpp's `llama`, `qwen2` and `phi3` graphs may add
/// beyond the query, key and value ones (and a fused `attn_qkv` bias): a
/// file with any of them is refused rather than run without it.
///
/// # Errors
/// [`LlamaError::Config`] naming the first such tensor found.
pub(crate) fn refuse_other_biases(file: &GgufFile, layers: usize) -> LlamaResult<()> {
    let parts = ["attn_qkv", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];
    let names = (0..layers)
        .flat_map(|l| parts.map(|p| format!("blk.{l}.{p}.bias")))
        .chain(["output.bias".to_owned()]);
    for name in names {
        if file.tensor_info(&name).is_ok() {
            return Err(LlamaError::Config {
                field: "tensor",
                value: name,
                expected: "no bias other than separate query, key and value projections' \
                           (not supported)"
                    .to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neox_pairs_become_adjacent() {
        assert_eq!(neox_as_pairs(1, 4), [0, 2, 1, 3]);
        assert_eq!(neox_as_pairs(2, 6), [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]);
        // A permutation: every row once.
        let mut order = neox_as_pairs(3, 12);
        order.sort_unstable();
        assert_eq!(order, (0..36).collect::<Vec<_>>());
    }

    #[test]
    fn fused_rows_pick_one_projection() {
        assert_eq!(fused_rows(4, 4, Some(&[0, 2, 1, 3])), [4, 6, 5, 7]);
        assert_eq!(fused_rows(8, 3, None), [8, 9, 10]);
    }

    #[test]
    fn reorder_moves_whole_rows() {
        let data = [0, 1, 10, 11, 20, 21];
        assert_eq!(reorder(&data, 2, &[2, 0, 1]), [20, 21, 0, 1, 10, 11]);
    }
}
