//! How weight matrices are held on the device, behind one type so that the
//! storage (f32 today; f16 / bf16 or kept-quantised blocks later) can be
//! changed and measured without touching the model.

use burn::tensor::{Device, Tensor, TensorData};

/// The element type of the weight matrices on the device.
///
/// Every GGUF tensor is first dequantised to `f32` on the host
/// ([`GgufFile::dequantize`](lastmile_core::gguf::GgufFile::dequantize),
/// bit-exact to ggml), then stored as chosen here.
///
/// ```
/// use lastmile_models::llama::WeightStorage;
/// assert_eq!(WeightStorage::default(), WeightStorage::F32);
/// assert_eq!(WeightStorage::F32.bytes_per_weight(), 4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WeightStorage {
    /// 32-bit floats: exact dequantised values, 4 bytes per weight.
    #[default]
    F32,
}

impl WeightStorage {
    /// Bytes per stored weight.
    pub fn bytes_per_weight(self) -> usize {
        match self {
            WeightStorage::F32 => 4,
        }
    }
}

/// Output columns per panel of a [`Matrix`] (see there).
pub(crate) const PANEL: usize = 32;

/// A weight matrix `W` (`[out, in]` as stored in the file) applied as
/// `y = x Wᵀ`.
///
/// Held as contiguous panels of [`PANEL`] output columns, `[out/32, in, 32]`
/// (one batched product over the panels), when `out` is a multiple of 32,
/// and as `Wᵀ` (`[in, out]`, one plain product) otherwise. Each panel is
/// read front to back, where a product with a few rows over the plain `Wᵀ`
/// strides down whole rows. Measured on SmolLM2-135M with flex (release, 2
/// cores), against the plain layout: a decoding step about as fast
/// (37 vs 34 tokens/s) and a pass over 2 / 8 tokens at 1.17× / 1.78× a
/// one-token pass instead of 2.7× / 4.8×; panels of 16 or 64 columns were
/// slower for one token or for several.
#[derive(Debug, Clone)]
pub(crate) struct Matrix {
    layout: Layout,
    out: usize,
    inp: usize,
    storage: WeightStorage,
}

#[derive(Debug, Clone)]
enum Layout {
    /// `Wᵀ`, `[in, out]`.
    Plain(Tensor<2>),
    /// `[out / PANEL, in, PANEL]`: panel `p` holds output columns `p·PANEL .. (p + 1)·PANEL`.
    Panels(Tensor<3>),
}

impl Matrix {
    /// From `values`, row-major `[out, in]` (the GGUF order).
    pub(crate) fn from_out_in(
        values: &[f32],
        out: usize,
        inp: usize,
        storage: WeightStorage,
        device: &Device,
    ) -> Self {
        debug_assert_eq!(values.len(), out * inp);
        let mut t = vec![0.0f32; values.len()];
        let layout = if out.is_multiple_of(PANEL) {
            // t[p][i][c] = W[p·PANEL + c][i]
            for (o, row) in values.chunks_exact(inp).enumerate() {
                let (p, c) = (o / PANEL, o % PANEL);
                for (i, v) in row.iter().enumerate() {
                    t[(p * inp + i) * PANEL + c] = *v;
                }
            }
            match storage {
                WeightStorage::F32 => Layout::Panels(Tensor::from_data(
                    TensorData::new(t, [out / PANEL, inp, PANEL]),
                    device,
                )),
            }
        } else {
            for (o, row) in values.chunks_exact(inp).enumerate() {
                for (i, v) in row.iter().enumerate() {
                    t[i * out + o] = *v;
                }
            }
            match storage {
                WeightStorage::F32 => {
                    Layout::Plain(Tensor::from_data(TensorData::new(t, [inp, out]), device))
                }
            }
        };
        Self {
            layout,
            out,
            inp,
            storage,
        }
    }

    /// `x Wᵀ` for `x` of shape `[b, n, in]`; returns `[b, n, out]`.
    pub(crate) fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, inp] = x.dims();
        match &self.layout {
            Layout::Plain(w_t) => x
                .reshape([b * n, inp])
                .matmul(w_t.clone())
                .reshape([b, n, self.out]),
            Layout::Panels(w) => x
                .reshape([1, b * n, inp])
                .matmul(w.clone())
                .swap_dims(0, 1)
                .reshape([b, n, self.out]),
        }
    }

    /// Bytes held on the device.
    pub(crate) fn bytes(&self) -> usize {
        self.out * self.inp * self.storage.bytes_per_weight()
    }
}
