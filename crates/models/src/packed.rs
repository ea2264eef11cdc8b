//! A transformer prepared for speculative verification on a CPU.

use burn::tensor::Tensor;

use crate::cache::KvCache;
use crate::error::{ModelError, Result};
use crate::transformer::{BlockPanels, Panels, Transformer};

/// Most tokens per forward (over all rows) for which the panel layout is used;
/// larger forwards (prompt prefill) amortise the plain GEMM better.
pub const PANEL_MAX_ROWS: usize = 16;

/// A [`Transformer`] whose weight matrices are also kept as contiguous
/// 16-column panels, used by cached forwards that score 2 to
/// [`PANEL_MAX_ROWS`] tokens (a speculative verify pass).
///
/// Why: one-token steps take a streaming matrix–vector product, but a
/// product with a few rows takes the backend's GEMM kernel, which walks each
/// weight matrix down its columns with a whole row stride between loads; on
/// the CPU backend a 2-token forward then costs ~2.4× a 1-token one. Reading
/// each 16-column panel front to back makes it markedly cheaper (see
/// `docs/benchmarks.md`). Outputs equal [`Transformer::forward_cached`] up to
/// float rounding. The price is a second copy of the weights; the packed
/// model is a snapshot: build it again after changing the weights.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_models::{PackedTransformer, TransformerConfig};
/// let d = Device::flex();
/// let m = TransformerConfig::byte_level(32, 1, 2, 16).init(&d).unwrap();
/// let packed = PackedTransformer::new(m.clone()).unwrap();
/// let (mut c1, mut c2) = (m.new_cache(1), packed.new_cache(1));
/// let a = m.forward_cached(&mut c1, &[vec![1, 2, 3]]).unwrap();
/// let b = packed.forward_cached(&mut c2, &[vec![1, 2, 3]]).unwrap();
/// let diff: f32 = (a - b).abs().max().into_scalar();
/// assert!(diff < 1e-4);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct PackedTransformer {
    model: Transformer,
    blocks: Vec<BlockPanels>,
    head: Panels,
}

impl PackedTransformer {
    /// Packs the weights of `model`.
    ///
    /// # Errors
    /// [`ModelError::Config`] when a layer's output width (`3·d_model`,
    /// `d_model`, `d_ff`, `vocab`) is not a multiple of 16.
    pub fn new(model: Transformer) -> Result<Self> {
        let fail = || {
            ModelError::Config(
                "every linear layer's output width must be a multiple of 16 to pack it".into(),
            )
        };
        let blocks = model
            .blocks
            .iter()
            .map(|b| BlockPanels::new(b).ok_or_else(fail))
            .collect::<Result<Vec<_>>>()?;
        let head = Panels::new(&model.head).ok_or_else(fail)?;
        Ok(Self {
            model,
            blocks,
            head,
        })
    }

    /// The underlying model.
    pub fn model(&self) -> &Transformer {
        &self.model
    }

    /// An empty cache for `batch` sequences.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        self.model.new_cache(batch)
    }

    /// As [`Transformer::forward_cached`], using the panels when the forward
    /// scores between 2 and [`PANEL_MAX_ROWS`] tokens in total.
    ///
    /// # Errors
    /// As [`Transformer::forward_cached`].
    pub fn forward_cached(&self, cache: &mut KvCache, tokens: &[Vec<usize>]) -> Result<Tensor<3>> {
        let n = tokens.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let rows = tokens.len() * n;
        let panels = (2..=PANEL_MAX_ROWS)
            .contains(&rows)
            .then_some((self.blocks.as_slice(), &self.head));
        self.model.forward_cached_with(cache, tokens, panels)
    }
}
