//! `Adapter::add_scaled_delta`, the one fuse every deployment path uses
//! (merge, unmerge, the set's weighted switch): `W + c·ΔW` against the dense
//! `ΔW` of each kind, in both storage layouts, and its typed errors.

use crate::common::*;
use burn::tensor::Tensor;
use lastmile_adapters::{
    Adapter, AdapterError, Foura, FouraConfig, GateMode, Lora, Shira, ShiraBudget, ShiraConfig,
    ShiraMask, WeightLayout,
};
use lastmile_core::backend_test;

fn kinds(d_out: usize, d_in: usize, device: &burn::tensor::Device) -> Vec<Adapter> {
    let lora = Lora::from_factors(
        randn([3, d_in], device),
        randn([d_out, 3], device),
        6.0,
        false,
    )
    .unwrap();
    let rslora = Lora::from_factors(
        randn([2, d_in], device),
        randn([d_out, 2], device),
        4.0,
        true,
    )
    .unwrap();
    let foura = Foura::from_factors(
        randn([3, d_in], device),
        randn([d_out, 3], device),
        &FouraConfig::new(3, 6.0).with_gate(GateMode::Off),
    )
    .unwrap();
    let w0 = randn([d_out, d_in], device);
    let mask = ShiraConfig::new(ShiraMask::Random, ShiraBudget::Density(0.2))
        .with_seed(4)
        .init(&w0, None)
        .unwrap();
    let n = mask.nnz();
    let shira = Shira::from_parts(
        mask.indices().to_vec(),
        randn([1, n], device).reshape([n]),
        d_out,
        d_in,
    )
    .unwrap();
    vec![lora.into(), rslora.into(), foura.into(), shira.into()]
}

backend_test!(fuse_equals_the_dense_delta_in_both_layouts, |device| {
    let (d_out, d_in) = (9, 14);
    for adapter in kinds(d_out, d_in, device) {
        let delta = adapter.delta_weight().unwrap();
        for layout in [WeightLayout::OutIn, WeightLayout::InOut] {
            let w = randn(layout.shape(d_out, d_in), device);
            let d = if layout == WeightLayout::OutIn {
                delta.clone()
            } else {
                delta.clone().transpose()
            };
            for c in [1.0f32, -1.0, 0.37] {
                let want = vec2(w.clone() + d.clone().mul_scalar(c));
                let got = vec2(adapter.add_scaled_delta(w.clone(), layout, c).unwrap());
                let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                assert!(
                    max_abs_diff(&got, &want) <= 1e-5 * (1.0 + scale),
                    "{} {layout:?} c={c}: {}",
                    adapter.describe(),
                    max_abs_diff(&got, &want)
                );
            }
            // Fusing in and out again returns W (to f32 rounding).
            let back = adapter
                .add_scaled_delta(
                    adapter.add_scaled_delta(w.clone(), layout, 1.0).unwrap(),
                    layout,
                    -1.0,
                )
                .unwrap();
            assert!(max_abs_diff(&vec2(back), &vec2(w)) < 1e-4);
        }
    }
});

backend_test!(fuse_refuses_what_does_not_fit, |device| {
    let adapter = kinds(9, 14, device).remove(0);
    // [out, in] given where [in, out] is stored.
    assert!(matches!(
        adapter.add_scaled_delta(Tensor::zeros([9, 14], device), WeightLayout::InOut, 1.0),
        Err(AdapterError::Shape { .. })
    ));
    assert!(matches!(
        adapter.add_scaled_delta(
            Tensor::zeros([9, 14], device),
            WeightLayout::OutIn,
            f32::INFINITY
        ),
        Err(AdapterError::InvalidConfig { .. })
    ));
    let adaptive = Adapter::from(FouraConfig::new(2, 2.0).init(14, 9, device).unwrap());
    assert!(matches!(
        adaptive.add_scaled_delta(Tensor::zeros([9, 14], device), WeightLayout::OutIn, 1.0),
        Err(AdapterError::Unsupported { .. })
    ));
});
