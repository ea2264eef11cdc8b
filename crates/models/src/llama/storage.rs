//! How weight matrices are held on the device, behind one type so that the
//! storage (f32, f16 or bf16; kept-quantised blocks would go here too) can
//! be changed and measured without touching the model.

use burn::tensor::{DType, Device, Tensor, TensorData};

/// The element type of the weight matrices on the device.
///
/// **F32 is the default, chosen by measurement** (`benches/llama.rs`,
/// SmolLM2-135M, flex, release, 2 cores; docs/benchmarks.md): a one-token
/// step reads 537 MB as f32 and takes 26.5 ms; f16 halves the bytes
/// (268 MB) but its step takes 30.5 ms and a pass over 8 tokens 113 ms
/// instead of 57 ms (flex's f16 product converts as it goes); bf16 takes
/// 103 ms a step (flex converts every bf16 matrix to f32 for each product).
/// The half storages are for memory-bound devices and for measuring.
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
    /// IEEE half precision, 2 bytes per weight: half the bytes read per
    /// step. Activations are rounded to f16 for the product (the backend's
    /// f16 matrix product), logits and everything else stay f32.
    F16,
    /// bfloat16, 2 bytes per weight, the product as for [`WeightStorage::F16`].
    Bf16,
}

impl WeightStorage {
    /// Every storage, in the order benches report them.
    pub const ALL: [WeightStorage; 3] =
        [WeightStorage::F32, WeightStorage::F16, WeightStorage::Bf16];

    /// Bytes per stored weight.
    pub fn bytes_per_weight(self) -> usize {
        match self {
            WeightStorage::F32 => 4,
            WeightStorage::F16 | WeightStorage::Bf16 => 2,
        }
    }

    /// The tensor element type of the stored matrices.
    ///
    /// ```
    /// use burn::tensor::DType;
    /// use lastmile_models::llama::WeightStorage;
    /// assert_eq!(WeightStorage::Bf16.dtype(), DType::BF16);
    /// assert_eq!(WeightStorage::ALL.map(WeightStorage::bytes_per_weight), [4, 2, 2]);
    /// ```
    pub fn dtype(self) -> DType {
        match self {
            WeightStorage::F32 => DType::F32,
            WeightStorage::F16 => DType::F16,
            WeightStorage::Bf16 => DType::BF16,
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
            Layout::Panels(stored(
                TensorData::new(t, [out / PANEL, inp, PANEL]),
                storage,
                device,
            ))
        } else {
            for (o, row) in values.chunks_exact(inp).enumerate() {
                for (i, v) in row.iter().enumerate() {
                    t[i * out + o] = *v;
                }
            }
            Layout::Plain(stored(TensorData::new(t, [inp, out]), storage, device))
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
        let half = self.storage != WeightStorage::F32;
        let x = if half {
            x.cast(self.storage.dtype())
        } else {
            x
        };
        let y = match &self.layout {
            Layout::Plain(w_t) => x
                .reshape([b * n, inp])
                .matmul(w_t.clone())
                .reshape([b, n, self.out]),
            Layout::Panels(w) => x
                .reshape([1, b * n, inp])
                .matmul(w.clone())
                .swap_dims(0, 1)
                .reshape([b, n, self.out]),
        };
        if half { y.cast(DType::F32) } else { y }
    }

    /// `Wᵀ` as `f32`, `[in, out]`: the layout of burn's `Linear` weight.
    pub(crate) fn to_in_out(&self) -> Tensor<2> {
        let w_t = match &self.layout {
            Layout::Plain(w_t) => w_t.clone(),
            // [p, in, c] → [in, p, c] → [in, p·PANEL + c]
            Layout::Panels(w) => w.clone().swap_dims(0, 1).reshape([self.inp, self.out]),
        };
        if self.storage == WeightStorage::F32 {
            w_t
        } else {
            w_t.cast(DType::F32)
        }
    }

    /// Bytes held on the device.
    pub(crate) fn bytes(&self) -> usize {
        self.out * self.inp * self.storage.bytes_per_weight()
    }
}

/// `data` (f32) on `device` as `storage`'s element type.
fn stored<const D: usize>(data: TensorData, storage: WeightStorage, device: &Device) -> Tensor<D> {
    let t = Tensor::<D>::from_data(data, device);
    match storage {
        WeightStorage::F32 => t,
        WeightStorage::F16 | WeightStorage::Bf16 => t.cast(storage.dtype()),
    }
}
