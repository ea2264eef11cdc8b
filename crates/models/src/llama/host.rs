//! Parts of a block computed in host memory beside the panel kernel, for
//! the host storages ([`super::WeightStorage::is_host`]): the feed-forward
//! network's products already give host vectors, so its SwiGLU gate runs
//! on them directly instead of as tensor operations between products
//! (measured on SmolLM2-135M, BlocksQ8, 2 cores: burn's scalar `sigmoid`
//! took about 1.3 ms of a 17 ms pass over 8 tokens).

use burn::tensor::{Tensor, TensorData};
use lastmile_core::panel::PanelMatrix;

use super::block::Heads;
use super::error::{LlamaError, LlamaResult};
use super::rope::RopeAt;

/// The feed-forward network `down(SiLU(gate·h) ⊙ up·h)` on host matrices,
/// `h` `[b, n, d]` → `[b, n, d]`.
pub(crate) fn swiglu(
    gate: &PanelMatrix,
    up: &PanelMatrix,
    down: &PanelMatrix,
    h: Tensor<3>,
) -> LlamaResult<Tensor<3>> {
    let [b, n, _] = h.dims();
    let device = h.device();
    let data = h.into_data();
    let h = host_values(&data)?;
    let [mut g, u]: [Vec<f32>; 2] = PanelMatrix::matmul_each(&[gate, up], h, b * n)?
        .try_into()
        .map_err(|_| shared_error())?;
    swiglu_in_place(&mut g, &u);
    let y = down.matmul(&g, b * n)?;
    Ok(Tensor::from_data(
        TensorData::new(y, [b, n, down.out()]),
        &device,
    ))
}

/// Queries (`[b, n_heads, n, dh]`, RoPE applied), keys (RoPE applied)
/// and values (`[b, n_kv_heads, n, dh]`) of the normed `h` (`[b, n, d]`)
/// by the host matrices `[q, k, v]`.
#[allow(clippy::type_complexity)]
pub(crate) fn qkv(
    [q, k, v]: [&PanelMatrix; 3],
    h: Tensor<3>,
    heads: Heads,
    rope: &RopeAt,
) -> LlamaResult<(Tensor<4>, Tensor<4>, Tensor<4>)> {
    let [b, n, _] = h.dims();
    let device = h.device();
    let data = h.into_data();
    let h = host_values(&data)?;
    let dh = heads.head_dim;
    let tensor = |values: Vec<f32>, heads_n: usize| {
        Tensor::<4>::from_data(TensorData::new(values, [b, n, heads_n, dh]), &device)
            .swap_dims(1, 2)
    };
    let [mut qv, mut kv, vv]: [Vec<f32>; 3] = PanelMatrix::matmul_each(&[q, k, v], h, b * n)?
        .try_into()
        .map_err(|_| shared_error())?;
    rope.apply_host(&mut qv, heads.n_heads, dh);
    rope.apply_host(&mut kv, heads.n_kv_heads, dh);
    Ok((
        tensor(qv, heads.n_heads),
        tensor(kv, heads.n_kv_heads),
        tensor(vv, heads.n_kv_heads),
    ))
}

/// `matmul_each` gives one product per matrix; this reports it did not.
fn shared_error() -> LlamaError {
    LlamaError::Core(lastmile_core::CoreError::ShapeMismatch {
        what: "shared-input products".to_owned(),
        expected: "one product per matrix".to_owned(),
        found: vec![],
    })
}

/// `data`'s values as f32 (a CPU tensor's data is a hand-over of host memory).
pub(crate) fn host_values(data: &TensorData) -> LlamaResult<&[f32]> {
    data.as_slice::<f32>().map_err(|e| {
        LlamaError::Core(lastmile_core::CoreError::ShapeMismatch {
            what: format!("activations for the panel kernel ({e:?})"),
            expected: "f32 values".to_owned(),
            found: data.shape().to_vec(),
        })
    })
}

/// `g ← SiLU(g) ⊙ u`, SwiGLU's gate (Shazeer 2020, eq. 6), with
/// `SiLU(x) = x / (1 + e^(−x))` and [`exp`].
pub(crate) fn swiglu_in_place(g: &mut [f32], u: &[f32]) {
    for (g, u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// `e^x` in f32 by Cody–Waite range reduction and a degree-6 polynomial
/// (Cephes `expf`'s coefficients): `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`,
/// `e^x = 2ⁿ·p(r)`. Within 2 ulp of the exact value on the whole f32 range
/// (tested against f64), clamped to `[e^−87.3, e^88]` outside that range;
/// plain arithmetic, so loops over it vectorise where `f32::exp` is a
/// library call per element.
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for |n| < 2⁹.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ];
    // Round to nearest by adding and removing 1.5·2²³ (exact for |v| < 2²²).
    const MAGIC: f32 = 12_582_912.0;
    // n = round(x·log2 e) then lies in [−126, 127], a normal 2ⁿ.
    let x = x.clamp(-87.3, 88.0);
    let n = (x * LOG2E + MAGIC) - MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = P[0];
    for c in &P[1..] {
        p = p * r + c;
    }
    let p = p * r * r + r + 1.0;
    // 2ⁿ by its exponent bits.
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            // One ulp of the f32 result.
            let ulp = f64::from(f32::EPSILON) * want;
            worst = worst.max((got - want).abs() / ulp);
            x += 0.0137;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-200.0) > 0.0 && exp(-200.0) < 1.3e-38);
        assert!(exp(200.0).is_finite());
    }

    #[test]
    fn swiglu_matches_the_formula() {
        let mut g: Vec<f32> = (-40..40).map(|i| i as f32 * 0.37).collect();
        let u: Vec<f32> = (0..80).map(|i| 1.0 - i as f32 * 0.03).collect();
        let want: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| {
                let g = f64::from(g);
                g / (1.0 + (-g).exp()) * f64::from(u)
            })
            .collect();
        swiglu_in_place(&mut g, &u);
        for (a, b) in g.iter().zip(&want) {
            assert!(
                (f64::from(*a) - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "{a} vs {b}"
            );
        }
    }
}
