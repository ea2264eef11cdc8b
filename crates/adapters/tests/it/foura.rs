//! Integration tests: foura.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use burn::nn::LinearConfig;
use burn::tensor::Tensor;
use lastmile_adapters::{
    AdaptedLinear, AdapterError, Foura, FouraConfig, GateMode, Lora, SpectralTransform,
};
use lastmile_core::backend_test;
use lastmile_core::testing::assert_close;

fn foura(cfg: &FouraConfig, d_out: usize, d_in: usize, device: &burn::tensor::Device) -> Foura {
    let a = randn([cfg.rank, d_in], device);
    let b = randn([d_out, cfg.rank], device).mul_scalar(0.3);
    Foura::from_factors(a, b, cfg).unwrap()
}

backend_test!(zero_init_reproduces_base_exactly, |device| {
    for gate in [GateMode::Adaptive, GateMode::Frozen, GateMode::Off] {
        for t in [SpectralTransform::Dct, SpectralTransform::Rfft] {
            let base = LinearConfig::new(10, 6).init(device);
            let f = FouraConfig::new(3, 6.0)
                .with_gate(gate)
                .with_transform(t)
                .init(10, 6, device)
                .unwrap();
            let layer = AdaptedLinear::new(base.clone(), f.into()).unwrap();
            let x = randn([4, 10], device);
            assert_eq!(vec2(layer.forward(x.clone())), vec2(base.forward(x)));
        }
    }
});

backend_test!(gate_off_identity_equals_lora_exactly, |device| {
    let cfg = FouraConfig::new(3, 6.0)
        .with_gate(GateMode::Off)
        .with_transform(SpectralTransform::Identity);
    let f = foura(&cfg, 7, 11, device);
    let lora = Lora::from_factors(f.a.val(), f.b.val(), 6.0, false).unwrap();
    let x = randn([5, 11], device);
    assert_eq!(
        vec2(f.forward_delta(x.clone())),
        vec2(lora.forward_delta(x))
    );
    assert_eq!(vec2(f.delta_weight().unwrap()), vec2(lora.delta_weight()));
});

/// Naive reference: transform x with the FFT plan, project, gate, project,
/// inverse-transform with the plan.
fn naive_forward(f: &Foura, x: &[f32], rows: usize, mask: &[f32]) -> Vec<f64> {
    let (d_in, d_out, r) = (f.d_in(), f.d_out(), f.rank());
    let mut fx = x.to_vec();
    f.transform().plan(d_in).unwrap().forward(&mut fx).unwrap();
    let a = vec2(f.a.val());
    let b = vec2(f.b.val());
    let z = matmul(&fx, &transpose(&a, r, d_in), rows, d_in, r);
    let zg: Vec<f32> = z
        .iter()
        .enumerate()
        .map(|(i, v)| (*v as f32) * mask[i % r])
        .collect();
    let u = matmul(&zg, &transpose(&b, d_out, r), rows, r, d_out);
    let mut u: Vec<f32> = u.iter().map(|v| (*v * f.scaling()) as f32).collect();
    f.transform().plan(d_out).unwrap().inverse(&mut u).unwrap();
    u.iter().map(|v| f64::from(*v)).collect()
}

backend_test!(
    forward_matches_explicit_frequency_domain_reference,
    |device| {
        for t in [SpectralTransform::Dct, SpectralTransform::Rfft] {
            let cfg = FouraConfig::new(4, 4.0)
                .with_transform(t)
                .with_gate(GateMode::Off);
            let f = foura(&cfg, 9, 12, device);
            let x = randn([3, 12], device);
            let expected = naive_forward(&f, &vec2(x.clone()), 3, &[1.0; 4]);
            assert_close(&vec2(f.forward_delta(x.clone())), &expected, 1e-4, 1e-4);
            // frozen mask switches components off
            let mask = Tensor::<1>::from_floats([1.0, 0.0, 1.0, 0.0], device);
            let f = f.with_frozen_mask(mask).unwrap();
            let expected = naive_forward(&f, &vec2(x.clone()), 3, &[1.0, 0.0, 1.0, 0.0]);
            assert_close(&vec2(f.forward_delta(x)), &expected, 1e-4, 1e-4);
        }
    }
);

backend_test!(merge_agrees_with_unmerged_when_gate_is_fixed, |device| {
    for gate in [GateMode::Off, GateMode::Frozen] {
        for t in [
            SpectralTransform::Dct,
            SpectralTransform::Rfft,
            SpectralTransform::Identity,
        ] {
            let cfg = FouraConfig::new(3, 3.0).with_transform(t).with_gate(gate);
            let mut f = foura(&cfg, 8, 10, device);
            if gate == GateMode::Frozen {
                f = f
                    .with_frozen_mask(Tensor::from_floats([0.0, 1.0, 1.0], device))
                    .unwrap();
            }
            let base = LinearConfig::new(10, 8).init(device);
            let w0 = vec2(base.weight.val());
            let layer = AdaptedLinear::new(base, f.into()).unwrap();
            let x = randn([6, 10], device);
            let unmerged = vec2(layer.forward(x.clone()));
            let (merged, back) = deploy(&layer, x);
            assert!(max_abs_diff(&merged, &unmerged) < 1e-4, "{gate:?} {t:?}");
            assert_eq!(back, w0);
        }
    }
});

backend_test!(adaptive_gate_cannot_merge_until_frozen, |device| {
    let cfg = FouraConfig::new(4, 4.0);
    let f = foura(&cfg, 6, 8, device);
    assert!(matches!(
        f.delta_weight(),
        Err(AdapterError::Unsupported { .. })
    ));
    assert_err!(f.to_lora(), AdapterError::Unsupported { .. });
    let x = randn([32, 8], device);
    // Gate open at init: every component on, so adaptive == off.
    assert_eq!(f.active_rank_fraction(x.clone()), 1.0);
    let frozen = f.freeze_gate(x.clone()).unwrap();
    assert_eq!(frozen.gate_mode(), GateMode::Frozen);
    assert_eq!(vec1(frozen.frozen_mask()), vec![1.0; 4]);
    let lora = frozen.to_lora().unwrap();
    assert!(
        max_abs_diff(
            &vec2(lora.forward_delta(x.clone())),
            &vec2(frozen.forward_delta(x))
        ) < 1e-4
    );
});

backend_test!(gate_closes_components_and_trains_through_ste, |device| {
    let ad = device.clone().autodiff();
    let cfg = FouraConfig::new(4, 4.0);
    let mut f = foura(&cfg, 6, 8, &ad);
    // Close component 2 by its bias: σ(-5) < 0.5.
    f.gate.bias = f
        .gate
        .bias
        .map(|_| Tensor::from_floats([2.0, 2.0, -5.0, 2.0], &ad).require_grad());
    let x = randn([16, 8], &ad);
    assert!((f.active_rank_fraction(x.clone()) - 0.75).abs() < 1e-6);
    let mask = Tensor::<1>::from_floats([1.0, 1.0, 0.0, 1.0], &ad);
    let manual = Foura::from_factors(f.a.val(), f.b.val(), &cfg.clone().with_gate(GateMode::Off))
        .unwrap()
        .with_frozen_mask(mask)
        .unwrap();
    assert!(
        max_abs_diff(
            &vec2(f.forward_delta(x.clone())),
            &vec2(manual.forward_delta(x.clone()))
        ) < 1e-5
    );
    // Straight-through: the gate's parameters receive gradients although the mask is hard.
    let loss = f.forward_delta(x).powf_scalar(2.0).sum();
    let grads = loss.backward();
    let g = f.gate.bias.grad(&grads).expect("gate bias gradient");
    assert!(vec1(g).iter().any(|v| *v != 0.0));
    assert!(f.a.grad(&grads).is_some());
});

backend_test!(trainable_count_and_validation, |device| {
    let f = FouraConfig::new(4, 4.0).init(8, 6, device).unwrap();
    assert_eq!(f.trainable_params(), 4 * 14 + 12);
    assert_eq!(f.with_gate_mode(GateMode::Off).trainable_params(), 4 * 14);
    assert_err!(
        FouraConfig::new(4, 4.0)
            .with_threshold(0.0)
            .init(8, 6, device),
        AdapterError::InvalidConfig { .. }
    );
    assert_err!(
        FouraConfig::new(9, 4.0).init(8, 6, device),
        AdapterError::InvalidConfig { .. }
    );
    let f = FouraConfig::new(2, 4.0).init(8, 6, device).unwrap();
    assert_err!(
        f.with_frozen_mask(Tensor::from_floats([0.5, 1.0], device)),
        AdapterError::InvalidConfig { .. }
    );
});

backend_test!(folded_forward_equals_the_training_forward, |device| {
    for t in [
        SpectralTransform::Dct,
        SpectralTransform::Rfft,
        SpectralTransform::Identity,
    ] {
        for gate in [GateMode::Off, GateMode::Frozen, GateMode::Adaptive] {
            let cfg = FouraConfig::new(4, 8.0).with_gate(gate).with_transform(t);
            // Seeded values: this binary's tests share the device's generator.
            let mut f = Foura::from_factors(
                seeded_randn([4, 12], 1, device),
                seeded_randn([10, 4], 2, device).mul_scalar(0.3),
                &cfg,
            )
            .unwrap();
            // A gate that closes some components on some rows, not all or
            // none: component i opens where 4·p_i·w_i − 1 > 0.
            f.gate.energy = f
                .gate
                .energy
                .map(|e| Tensor::from_floats([3.0, -2.0, 1.5, 0.5], &e.device()));
            f.gate.bias = f.gate.bias.map(|b| b.zeros_like().add_scalar(-1.0));
            let x = seeded_randn([16, 12], 3, device);
            if gate == GateMode::Frozen {
                f = f
                    .with_frozen_mask(Tensor::from_floats([1.0, 0.0, 1.0, 1.0], device))
                    .unwrap();
            }
            if gate == GateMode::Adaptive {
                let open = f.active_rank_fraction(x.clone());
                assert!(open > 0.05 && open < 0.95, "{t:?}: open fraction {open}");
            }
            let folded = f.fold();
            let want = vec2(f.forward_delta(x.clone()));
            let got = vec2(folded.forward_delta(x.clone()));
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(
                max_abs_diff(&got, &want) <= 1e-5 * (1.0 + scale),
                "{t:?} {gate:?}: {} (max |y| {scale})",
                max_abs_diff(&got, &want)
            );
            // Leading dimensions are kept.
            let x3 = x.reshape([2, 8, 12]);
            assert_eq!(folded.forward_delta(x3).dims(), [2, 8, 10]);
        }
    }
});
