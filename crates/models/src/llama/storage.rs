//! How weight matrices are held on the device, behind one type so that the
//! storage (f32, f16, bf16, or the file's quantised blocks on the CPU) can
//! be changed and measured without touching the model.

use std::sync::Arc;

use burn::tensor::{DType, Device, Tensor, TensorData};
use lastmile_core::Backend;
use lastmile_core::gguf::GgmlType;
use lastmile_core::panel::PanelMatrix;

use super::error::{LlamaError, LlamaResult};

/// The element type of the weight matrices on the device.
///
/// Measured on SmolLM2-135M (`benches/llama.rs`, flex, release, 2 cores;
/// `docs/benchmarks.md`):
///
/// - **[`WeightStorage::BlocksQ8`] is the fastest on a CPU with AVX-512
///   VNNI**: the file's blocks in the file's size (4-bit codes two a byte,
///   f16 scales: 96 MB), multiplied in integers with activations rounded
///   to 8 bits as llama.cpp does; a one-token step about 1.6× faster than
///   Blocks, a pass over 8 tokens about 1.9 such steps (2.7 for Blocks).
/// - **[`WeightStorage::Blocks`]** keeps the same codes with f32
///   activations, exact to the dequantised file: about twice as fast per
///   decoding step as F32. [`WeightStorage::fastest_on`] picks one of the two
///   for CPU devices.
/// - **F32 is the default**, the storage every device computes with: a
///   one-token step reads 537 MB through the backend's matrix product.
/// - f16 halves F32's bytes but flex's f16 product is slower per step and
///   twice as slow over 8 tokens (it converts as it goes); bf16 is slower
///   still (flex converts every bf16 matrix to f32 for each product). The
///   half storages are for memory-bound devices and for measuring.
///
/// The float storages take every GGUF tensor dequantised to `f32` on the
/// host ([`GgufFile::dequantize`](lastmile_core::gguf::GgufFile::dequantize),
/// bit-exact to ggml); Blocks keeps the blocks and dequantises to the same
/// values inside its product.
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
    /// The file's quantised blocks kept as they are, on the CPU: each
    /// weight's integer code in one byte, each block's scale (and Q4_1's
    /// minimum) as f32 — 1.25 bytes a weight for Q4_1, against 4 for
    /// [`WeightStorage::F32`] — multiplied by lastmile's panel kernel
    /// ([`lastmile_core::panel`]), which dequantises as it goes to exactly
    /// the f32 values of the F32 storage. Float tensors (and random or
    /// trained weights) are kept as f32 in the same kernel's layout.
    /// CPU devices only (flex, ndarray): the kernel reads host memory.
    Blocks,
    /// The file's blocks in their own size (4-bit codes two a byte, f16
    /// scales: 0.625 bytes a weight for Q4_1), multiplied as llama.cpp
    /// multiplies them: each product rounds its activations to 8-bit
    /// blocks (ggml's Q8_0) and sums each block's products of codes in
    /// integers ([`PanelMatrix::from_gguf_q8`]). The activations' rounding
    /// moves SmolLM2's logits by up to about 2 from the exact ones, as
    /// llama.cpp's own rounding does (measured against llama.cpp in
    /// `tests/it/llama_reference.rs`); in exchange, on CPUs with AVX-512
    /// VNNI a pass over several tokens costs little more than one. Float
    /// matrices (and random or trained weights) whose rows are whole
    /// 32-value blocks are rounded to Q8_0 blocks
    /// ([`lastmile_core::gguf::quantize_q8_0`]); others stay f32. CPU
    /// devices only.
    BlocksQ8,
    /// [`WeightStorage::BlocksQ8`] with float matrices (trained or random
    /// weights whose rows are whole 32-value blocks) rounded to Q4_1
    /// blocks instead of Q8_0 ([`lastmile_core::gguf::quantize_q4_1`]):
    /// 0.625 bytes a weight instead of 1.06, for a small model whose step
    /// is bound by reading its weights. A file's own blocks are kept as
    /// they are, so a GGUF checkpoint loads as with BlocksQ8. Measured on
    /// SmolLM2-135M's distilled 2-block draft (`docs/benchmarks.md`): a
    /// draft step 0.094 target steps instead of 0.142, with the same
    /// tokens a round. CPU devices only.
    BlocksQ4,
}

impl WeightStorage {
    /// Every storage, in the order benches report them.
    pub const ALL: [WeightStorage; 6] = [
        WeightStorage::F32,
        WeightStorage::F16,
        WeightStorage::Bf16,
        WeightStorage::Blocks,
        WeightStorage::BlocksQ8,
        WeightStorage::BlocksQ4,
    ];

    /// Whether the matrices live in host memory for lastmile's panel
    /// kernel ([`WeightStorage::Blocks`], [`WeightStorage::BlocksQ8`],
    /// [`WeightStorage::BlocksQ4`]).
    ///
    /// ```
    /// use lastmile_models::llama::WeightStorage;
    /// assert!(WeightStorage::BlocksQ8.is_host() && !WeightStorage::F32.is_host());
    /// ```
    pub fn is_host(self) -> bool {
        matches!(
            self,
            WeightStorage::Blocks | WeightStorage::BlocksQ8 | WeightStorage::BlocksQ4
        )
    }

    /// Bytes per stored weight, rounded up to whole bytes: for the block
    /// storages the byte of an 8-bit code ([`WeightStorage::BlocksQ8`]
    /// packs 4-bit codes two a byte; the block scales add 2 to 8 bytes per
    /// 32 weights; [`LlamaModel::matrix_bytes`](super::LlamaModel::matrix_bytes)
    /// counts exactly).
    pub fn bytes_per_weight(self) -> usize {
        match self {
            WeightStorage::F32 => 4,
            WeightStorage::F16 | WeightStorage::Bf16 => 2,
            WeightStorage::Blocks | WeightStorage::BlocksQ8 | WeightStorage::BlocksQ4 => 1,
        }
    }

    /// The tensor element type of the stored matrices (f32 for
    /// [`WeightStorage::Blocks`], whose products take and give f32 tensors).
    ///
    /// ```
    /// use burn::tensor::DType;
    /// use lastmile_models::llama::WeightStorage;
    /// assert_eq!(WeightStorage::Bf16.dtype(), DType::BF16);
    /// assert_eq!(WeightStorage::ALL.map(WeightStorage::bytes_per_weight), [4, 2, 2, 1, 1, 1]);
    /// ```
    pub fn dtype(self) -> DType {
        match self {
            WeightStorage::F32
            | WeightStorage::Blocks
            | WeightStorage::BlocksQ8
            | WeightStorage::BlocksQ4 => DType::F32,
            WeightStorage::F16 => DType::F16,
            WeightStorage::Bf16 => DType::BF16,
        }
    }

    /// The storage measured fastest on `device`'s kind
    /// (`docs/benchmarks.md`): on CPU devices [`WeightStorage::BlocksQ8`]
    /// where the CPU has an 8-bit kernel
    /// ([`lastmile_core::panel::int8_simd_available`]: with AVX-512 VNNI a
    /// SmolLM2-135M step about 1.6× faster than Blocks, in 96 MB, a pass
    /// over 8 tokens more than twice as fast; with AVX2 (and F16C) alone a
    /// step 1.6× and a pass over 8 tokens 1.3× as fast) and
    /// [`WeightStorage::Blocks`] otherwise (a step about twice as fast as
    /// F32, in 164 MB instead of 537); [`WeightStorage::F32`] elsewhere.
    ///
    /// BlocksQ8 rounds activations to 8 bits as llama.cpp does; choose
    /// Blocks for products exact to the dequantised file.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_models::llama::WeightStorage;
    /// let storage = WeightStorage::fastest_on(&Device::flex());
    /// assert!(storage.is_host());
    /// # }
    /// ```
    pub fn fastest_on(device: &Device) -> WeightStorage {
        if !Backend::of(device).is_some_and(Backend::is_cpu) {
            WeightStorage::F32
        } else if lastmile_core::panel::int8_simd_available() {
            WeightStorage::BlocksQ8
        } else {
            WeightStorage::Blocks
        }
    }

    /// The storage for a small trained draft of a target stored as `self`:
    /// [`WeightStorage::BlocksQ4`] for a [`WeightStorage::BlocksQ8`]
    /// target (the draft's float matrices in 4-bit blocks: its step, bound
    /// by reading them, costs two thirds as much, and SmolLM2-135M's
    /// distilled draft gave as many tokens a round, `docs/benchmarks.md`),
    /// `self` otherwise.
    ///
    /// ```
    /// use lastmile_models::llama::WeightStorage;
    /// assert_eq!(WeightStorage::BlocksQ8.for_draft(), WeightStorage::BlocksQ4);
    /// assert_eq!(WeightStorage::Blocks.for_draft(), WeightStorage::Blocks);
    /// ```
    pub fn for_draft(self) -> WeightStorage {
        match self {
            WeightStorage::BlocksQ8 => WeightStorage::BlocksQ4,
            other => other,
        }
    }

    /// Whether `device` can hold this storage: its element type, and a CPU
    /// device for the host storages ([`WeightStorage::is_host`]).
    ///
    /// # Errors
    /// [`LlamaError::Storage`] when it cannot.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_models::llama::WeightStorage;
    /// assert!(WeightStorage::Blocks.check_device(&Device::flex()).is_ok());
    /// # }
    /// ```
    pub fn check_device(self, device: &Device) -> LlamaResult<()> {
        let cpu = Backend::of(device).is_some_and(Backend::is_cpu);
        if !device.supports_dtype(self.dtype()) || (self.is_host() && !cpu) {
            return Err(LlamaError::Storage {
                storage: format!("{self:?}"),
                device: format!("{device:?}"),
            });
        }
        Ok(())
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
    /// Added to every row of the product (Qwen2's query, key and value
    /// projections have one).
    bias: Option<Bias>,
}

/// A projection's bias: the values (for the host pass) and a tensor (for
/// products on the device).
#[derive(Debug, Clone)]
struct Bias {
    values: Arc<[f32]>,
    tensor: Tensor<1>,
}

#[derive(Debug, Clone)]
enum Layout {
    /// `Wᵀ`, `[in, out]`.
    Plain(Tensor<2>),
    /// `[out / PANEL, in, PANEL]`: panel `p` holds output columns `p·PANEL .. (p + 1)·PANEL`.
    Panels(Tensor<3>),
    /// Host memory, for the panel kernel ([`WeightStorage::is_host`]).
    Host(Arc<PanelMatrix>),
}

impl Matrix {
    /// From `values`, row-major `[out, in]` (the GGUF order).
    ///
    /// # Errors
    /// [`LlamaError::Core`] when `values` is not `out · in` long.
    pub(crate) fn from_out_in(
        values: &[f32],
        out: usize,
        inp: usize,
        storage: WeightStorage,
        device: &Device,
    ) -> LlamaResult<Self> {
        if inp.is_multiple_of(lastmile_core::panel::BLOCK) {
            // Trained or random weights: rounded to blocks, for the 8-bit kernel.
            match storage {
                WeightStorage::BlocksQ8 => {
                    let blocks = lastmile_core::gguf::quantize_q8_0(values)?;
                    return Self::from_gguf_blocks(GgmlType::Q8_0, &blocks, out, inp, storage);
                }
                WeightStorage::BlocksQ4 => {
                    let blocks = lastmile_core::gguf::quantize_q4_1(values)?;
                    return Self::from_gguf_blocks(GgmlType::Q4_1, &blocks, out, inp, storage);
                }
                _ => {}
            }
        }
        if storage.is_host() {
            return Ok(Self::host(
                PanelMatrix::from_f32(values, out, inp)?,
                storage,
            ));
        }
        if values.len() != out * inp {
            return Err(LlamaError::Core(lastmile_core::CoreError::ShapeMismatch {
                what: "weight matrix".to_owned(),
                expected: format!("{out} × {inp} values"),
                found: vec![values.len()],
            }));
        }
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
        Ok(Self {
            layout,
            out,
            inp,
            storage,
            bias: None,
        })
    }

    /// A host storage ([`WeightStorage::is_host`]) from a GGUF tensor's
    /// raw data (`out` rows of `inp` elements of `ggml_type`).
    ///
    /// # Errors
    /// [`LlamaError::Gguf`] as [`PanelMatrix::from_gguf`].
    pub(crate) fn from_gguf_blocks(
        ggml_type: GgmlType,
        data: &[u8],
        out: usize,
        inp: usize,
        storage: WeightStorage,
    ) -> LlamaResult<Self> {
        let m = if matches!(storage, WeightStorage::BlocksQ8 | WeightStorage::BlocksQ4) {
            PanelMatrix::from_gguf_q8(ggml_type, data, out, inp)?
        } else {
            PanelMatrix::from_gguf(ggml_type, data, out, inp)?
        };
        Ok(Self::host(m, storage))
    }

    fn host(m: PanelMatrix, storage: WeightStorage) -> Self {
        Self {
            out: m.out(),
            inp: m.inp(),
            layout: Layout::Host(Arc::new(m)),
            storage,
            bias: None,
        }
    }

    /// This matrix with `bias` (`out` values) added to each row of its
    /// products; its tensor on `device`.
    ///
    /// # Errors
    /// [`LlamaError::Core`] when `bias` is not `out` long.
    pub(crate) fn with_bias(mut self, bias: Vec<f32>, device: &Device) -> LlamaResult<Self> {
        if bias.len() != self.out {
            return Err(LlamaError::Core(lastmile_core::CoreError::ShapeMismatch {
                what: "projection bias".to_owned(),
                expected: format!("{} values (one per output)", self.out),
                found: vec![bias.len()],
            }));
        }
        let tensor = Tensor::from_data(TensorData::new(bias.clone(), [self.out]), device);
        self.bias = Some(Bias {
            values: bias.into(),
            tensor,
        });
        Ok(self)
    }

    /// The bias added to each row of the products, if any.
    pub(crate) fn bias(&self) -> Option<&[f32]> {
        self.bias.as_ref().map(|b| &*b.values)
    }

    /// `x Wᵀ` for `x` of shape `[b, n, in]`; returns `[b, n, out]`.
    ///
    /// # Errors
    /// [`LlamaError::Core`] when the host kernel cannot read `x` as f32
    /// values (only with a host storage).
    pub(crate) fn forward(&self, x: Tensor<3>) -> LlamaResult<Tensor<3>> {
        let [b, n, inp] = x.dims();
        let half = matches!(self.storage, WeightStorage::F16 | WeightStorage::Bf16);
        let y = match &self.layout {
            Layout::Host(m) => host_product(m, x)?,
            Layout::Plain(w_t) => cast_to(x, self.storage)
                .reshape([b * n, inp])
                .matmul(w_t.clone())
                .reshape([b, n, self.out]),
            Layout::Panels(w) => cast_to(x, self.storage)
                .reshape([1, b * n, inp])
                .matmul(w.clone())
                .swap_dims(0, 1)
                .reshape([b, n, self.out]),
        };
        let y = if half { y.cast(DType::F32) } else { y };
        Ok(match &self.bias {
            Some(bias) => y + bias.tensor.clone().reshape([1, 1, self.out]),
            None => y,
        })
    }

    /// `Wᵀ` as `f32`, `[in, out]`: the layout of burn's `Linear` weight,
    /// on `device`.
    pub(crate) fn to_in_out(&self, device: &Device) -> Tensor<2> {
        let w_t = match &self.layout {
            Layout::Host(m) => {
                let w = Tensor::<2>::from_data(
                    TensorData::new(m.to_f32(), [self.out, self.inp]),
                    device,
                );
                return w.transpose();
            }
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

    /// The matrix in host memory, for a host storage.
    /// `(out, in)`.
    pub(crate) fn shape(&self) -> (usize, usize) {
        (self.out, self.inp)
    }

    pub(crate) fn as_host(&self) -> Option<&PanelMatrix> {
        match &self.layout {
            Layout::Host(m) => Some(m),
            _ => None,
        }
    }

    /// Bytes held on the device (in host memory for the host storages).
    pub(crate) fn bytes(&self) -> usize {
        match &self.layout {
            Layout::Host(m) => m.bytes(),
            _ => self.out * self.inp * self.storage.bytes_per_weight(),
        }
    }
}

/// `x` in `storage`'s element type for a product on the device.
fn cast_to(x: Tensor<3>, storage: WeightStorage) -> Tensor<3> {
    match storage {
        WeightStorage::F32
        | WeightStorage::Blocks
        | WeightStorage::BlocksQ8
        | WeightStorage::BlocksQ4 => x,
        WeightStorage::F16 | WeightStorage::Bf16 => x.cast(storage.dtype()),
    }
}

/// `x Wᵀ` by the panel kernel: `x` (`[b, n, in]`, on a CPU device, where
/// this is a hand-over of host memory) to the host and the product back.
fn host_product(m: &PanelMatrix, x: Tensor<3>) -> LlamaResult<Tensor<3>> {
    let [b, n, _] = x.dims();
    let device = x.device();
    let data = x.into_data();
    let values = data.as_slice::<f32>().map_err(|e| {
        LlamaError::Core(lastmile_core::CoreError::ShapeMismatch {
            what: format!("activations for the panel kernel ({e:?})"),
            expected: "f32 values".to_owned(),
            found: vec![b, n, m.inp()],
        })
    })?;
    let y = m.matmul(values, b * n)?;
    Ok(Tensor::from_data(
        TensorData::new(y, [b, n, m.out()]),
        &device,
    ))
}

/// `data` (f32) on `device` as `storage`'s element type.
fn stored<const D: usize>(data: TensorData, storage: WeightStorage, device: &Device) -> Tensor<D> {
    let t = Tensor::<D>::from_data(data, device);
    match storage {
        WeightStorage::F32
        | WeightStorage::Blocks
        | WeightStorage::BlocksQ8
        | WeightStorage::BlocksQ4 => t,
        WeightStorage::F16 | WeightStorage::Bf16 => t.cast(storage.dtype()),
    }
}
