//! The MLP the simulation and its clients train.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use lastmile_core::CoreError;
use lastmile_core::convert::{indices_to_vec, tensor_from_vec, tensor_to_vec};
use lastmile_core::module::{ParamValue, Selector, collect_params};
use lastmile_core::validate::check_at_least;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::ClientData;
use crate::error::Result;
use crate::shard::DenseParam;

/// A multi-layer perceptron `Linear → ReLU → … → Linear` (logits out), the
/// model the simulation trains. Layer `i` is the module path `layers.{i}`,
/// so its weight is `layers.{i}.weight` (stored `[in, out]`, burn's
/// `Linear`, [`Layout::InOut`](lastmile_core::module::Layout::InOut)) and its bias `layers.{i}.bias`.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_federated_sharding::simulation::Mlp;
/// let d = Device::flex();
/// let mlp = Mlp::new(&[4, 8, 3], 0, &d)?;
/// assert_eq!(mlp.forward(Tensor::zeros([5, 4], &d)).dims(), [5, 3]);
/// assert_eq!(Mlp::weight_path(1), "layers.1.weight");
/// # }
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    /// An MLP with widths `[input, hidden…, classes]`, initialised on the
    /// host from `seed` like burn's `Linear` default: every weight and bias
    /// uniform in `[−1/√in, 1/√in]` (Kaiming-uniform with gain `1/√3`).
    ///
    /// # Errors
    /// [`CoreError::Empty`] for fewer than 2 widths,
    /// [`CoreError::OutOfRange`] named `layer_sizes[i]` for a width of 0.
    pub fn new(layer_sizes: &[usize], seed: u64, device: &Device) -> Result<Self> {
        check_layer_sizes(layer_sizes)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut layers = Vec::with_capacity(layer_sizes.len() - 1);
        for w in layer_sizes.windows(2) {
            let (d_in, d_out) = (w[0], w[1]);
            let bound = 1.0 / (d_in as f64).sqrt();
            let mut uniform = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
                    .collect()
            };
            let weight = tensor_from_vec(uniform(d_in * d_out), [d_in, d_out], device)?;
            let bias = tensor_from_vec(uniform(d_out), [d_out], device)?;
            layers.push(Linear {
                weight: Param::from_tensor(weight),
                bias: Some(Param::from_tensor(bias)),
            });
        }
        Ok(Self { layers })
    }

    /// Logits `[batch, classes]` for inputs `[batch, input]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len().saturating_sub(1);
        self.layers.iter().enumerate().fold(x, |h, (i, layer)| {
            let h = layer.forward(h);
            if i < last { relu(h) } else { h }
        })
    }

    /// Number of `Linear` layers.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// Module path of layer `i`'s weight: `layers.{i}.weight`.
    pub fn weight_path(i: usize) -> String {
        format!("layers.{i}.weight")
    }

    /// Module path of layer `i`'s bias: `layers.{i}.bias`.
    pub fn bias_path(i: usize) -> String {
        format!("layers.{i}.bias")
    }

    /// Every parameter, as stored (weights `[in, out]`), in module order.
    ///
    /// # Errors
    /// Only if a tensor cannot be read back from its device.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_federated_sharding::simulation::Mlp;
    /// let p = Mlp::new(&[4, 3], 0, &Device::flex())?.params()?;
    /// assert_eq!((p[0].path.as_str(), p[0].shape.as_slice()), ("layers.0.weight", &[4, 3][..]));
    /// # }
    /// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
    /// ```
    pub fn params(&self) -> Result<Vec<DenseParam>> {
        collect_params(self, &Selector::all(), ParamValue::Stored)?
            .into_iter()
            .map(|p| {
                let values = tensor_to_vec(p.value)?;
                DenseParam::new(p.path, p.shape, values)
            })
            .collect()
    }

    /// Accuracy of the arg-max prediction on `data` (rows of `dim`
    /// features), evaluated in chunks of 1024 rows.
    ///
    /// # Errors
    /// As [`ClientData`]'s checks: empty data, wrong feature count,
    /// non-finite features, labels `≥` the output width.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_federated_sharding::simulation::{ClientData, Mlp};
    /// let mlp = Mlp::new(&[2, 2], 0, &Device::flex())?;
    /// let data = ClientData { features: vec![1.0, 0.0, 0.0, 1.0], labels: vec![0, 1] };
    /// let acc = mlp.accuracy(&data)?;
    /// assert!((0.0..=1.0).contains(&acc));
    /// assert!(mlp.accuracy(&ClientData { features: vec![], labels: vec![] }).is_err());
    /// # }
    /// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
    /// ```
    pub fn accuracy(&self, data: &ClientData) -> Result<f64> {
        let (Some(first), Some(last)) = (self.layers.first(), self.layers.last()) else {
            return Err(CoreError::Empty {
                what: "MLP layers".to_owned(),
                min: 1,
            }
            .into());
        };
        let dim = first.weight.val().dims()[0];
        let classes = last.weight.val().dims()[1];
        data.check("evaluation data", dim, classes)?;
        let device = first.weight.val().device();
        let idx: Vec<usize> = (0..data.len()).collect();
        let mut hits = 0usize;
        for chunk in idx.chunks(1024) {
            let (x, _) = data.batch(chunk, dim, &device)?;
            let pred = indices_to_vec(self.forward(x).argmax(1))?;
            hits += pred
                .iter()
                .zip(chunk)
                .filter(|(p, i)| **p == data.labels[**i])
                .count();
        }
        Ok(hits as f64 / data.len() as f64)
    }
}

pub(crate) fn check_layer_sizes(sizes: &[usize]) -> Result<()> {
    if sizes.len() < 2 {
        return Err(CoreError::Empty {
            what: "layer sizes (input and output widths)".to_owned(),
            min: 2,
        }
        .into());
    }
    for (i, &s) in sizes.iter().enumerate() {
        check_at_least(&format!("layer_sizes[{i}]"), s, 1)?;
    }
    Ok(())
}
