//! Integration tests: lora.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use burn::nn::LinearConfig;
use burn::tensor::{Distribution, Tensor};
use lastmile_adapters::{
    AdaptedLinear, Adapter, AdapterError, FouraConfig, Lora, LoraConfig, LoraInit,
};
use lastmile_core::backend_test;
use lastmile_core::testing::assert_close;

fn trained_lora(d_out: usize, d_in: usize, r: usize, device: &burn::tensor::Device) -> Lora {
    // A LoRA with non-zero B, as after training.
    Lora::from_factors(
        randn([r, d_in], device),
        randn([d_out, r], device).mul_scalar(0.3),
        8.0,
        false,
    )
    .unwrap()
}

backend_test!(zero_init_reproduces_base_exactly, |device| {
    for init in [LoraInit::KaimingUniform, LoraInit::Gaussian] {
        let base = LinearConfig::new(12, 7).init(device);
        let lora = LoraConfig::new(4, 8.0)
            .with_init(init)
            .init(12, 7, device)
            .unwrap();
        let layer = AdaptedLinear::new(base.clone(), lora.into()).unwrap();
        let x = randn([5, 12], device);
        assert_eq!(vec2(layer.forward(x.clone())), vec2(base.forward(x)));
    }
});

backend_test!(delta_weight_matches_naive_product, |device| {
    let lora = trained_lora(6, 9, 3, device);
    let (a, b) = (vec2(lora.a.val()), vec2(lora.b.val()));
    let expected: Vec<f64> = matmul(&b, &a, 6, 3, 9)
        .iter()
        .map(|v| v * 8.0 / 3.0)
        .collect();
    assert_close(&vec2(lora.delta_weight()), &expected, 1e-5, 1e-5);
    // rsLoRA: α/√r
    let rs = Lora::from_factors(lora.a.val(), lora.b.val(), 8.0, true).unwrap();
    assert!((rs.scaling() - 8.0 / 3f64.sqrt()).abs() < 1e-12);
    assert_eq!(lora.trainable_params(), 3 * (6 + 9));
});

backend_test!(unmerged_forward_is_base_plus_low_rank, |device| {
    let base = LinearConfig::new(9, 6).init(device);
    let lora = trained_lora(6, 9, 3, device);
    let delta = vec2(lora.delta_weight());
    let layer = AdaptedLinear::new(base.clone(), lora.into()).unwrap();
    let x = randn([4, 9], device);
    let xs = vec2(x.clone());
    let base_y = vec2(base.forward(x.clone()));
    let dy = matmul(&xs, &transpose(&delta, 6, 9), 4, 9, 6);
    let expected: Vec<f64> = base_y
        .iter()
        .zip(&dy)
        .map(|(b, d)| f64::from(*b) + d)
        .collect();
    assert_close(&vec2(layer.forward(x)), &expected, 1e-4, 1e-4);
});

backend_test!(merge_matches_unmerged_and_unmerge_restores, |device| {
    let base = LinearConfig::new(16, 10).init(device);
    let w0 = vec2(base.weight.val());
    let layer = AdaptedLinear::new(base, trained_lora(10, 16, 4, device).into()).unwrap();
    let x = randn([8, 16], device);
    let unmerged = vec2(layer.forward(x.clone()));
    let (merged, restored) = deploy(&layer, x);
    assert!(max_abs_diff(&merged, &unmerged) < 1e-4);
    assert_eq!(restored, w0);
});

backend_test!(pissa_factors_are_the_top_singular_directions, |device| {
    let w0 = randn([10, 8], device);
    let cfg = LoraConfig::new(3, 6.0).with_init(LoraInit::Pissa);
    assert!(matches!(
        cfg.init(8, 10, device),
        Err(AdapterError::Unsupported { .. })
    ));
    let (lora, residual) = cfg.init_pissa(w0.clone()).unwrap();
    // W0 is reproduced at init ...
    assert!(
        max_abs_diff(
            &vec2(residual.clone() + lora.delta_weight()),
            &vec2(w0.clone())
        ) < 1e-5
    );
    // ... s·BA is the best rank-3 approximation: its error is the tail singular values.
    let s = vec1(lastmile_core::linalg::svd(w0).unwrap().s);
    let tail: f32 = s[3..].iter().map(|v| v * v).sum::<f32>().sqrt();
    let res_norm = vec2(residual).iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!(
        (res_norm - tail).abs() < 1e-4 * tail.max(1.0),
        "{res_norm} vs {tail}"
    );
});

backend_test!(init_distributions_follow_peft, |device| {
    device.seed(3);
    let k = LoraConfig::new(16, 16.0).init(400, 32, device).unwrap();
    let a = vec2(k.a.val());
    let bound = 1.0 / 400f32.sqrt();
    assert!(a.iter().all(|v| v.abs() <= bound));
    assert!(a.iter().cloned().fold(0.0, f32::max) > 0.9 * bound);
    let g = LoraConfig::new(16, 16.0)
        .with_init(LoraInit::Gaussian)
        .init(400, 32, device)
        .unwrap();
    let a = vec2(g.a.val());
    let std = (a.iter().map(|v| v * v).sum::<f32>() / a.len() as f32).sqrt();
    assert!((std - 1.0 / 16.0).abs() < 0.005, "std {std}");
    assert!(vec2(g.b.val()).iter().all(|v| *v == 0.0));
});

backend_test!(invalid_configs_are_rejected, |device| {
    // Rank 0, a rank above min(out, in), a NaN α, dropout 1.
    for (bad, d_out, d_in) in [
        (LoraConfig::new(0, 1.0), 4, 4),
        (LoraConfig::new(5, 1.0), 4, 8),
        (LoraConfig::new(2, f64::NAN), 4, 4),
        (LoraConfig::new(2, 1.0).with_dropout(1.0), 4, 4),
    ] {
        assert_err!(
            bad.init(d_in, d_out, device),
            AdapterError::InvalidConfig { .. }
        );
    }
    let a = Tensor::<2>::random([2, 4], Distribution::Default, device);
    let b = Tensor::<2>::zeros([4, 3], device);
    assert!(matches!(
        Lora::from_factors(a, b, 1.0, false),
        Err(AdapterError::Shape { .. })
    ));
    let base = LinearConfig::new(4, 6).init(device);
    let wrong = LoraConfig::new(2, 2.0).init(6, 4, device).unwrap();
    assert_err!(
        AdaptedLinear::new(base, Adapter::Lora(wrong)),
        AdapterError::Shape { .. }
    );
});

backend_test!(seeded_init_is_the_same_on_every_backend_and_run, |device| {
    use burn::tensor::TensorData;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    let c = LoraConfig::new(4, 8.0).with_seed(11);
    // Whatever the device's generator holds.
    device.seed(1);
    let x = c.init(10, 6, device).unwrap();
    device.seed(2);
    let y = c.init(10, 6, device).unwrap();
    assert_eq!(vec2(x.a.val()), vec2(y.a.val()));
    // Exactly the host draw of StdRng(seed): the same on every backend.
    let bound = 1.0 / 10f64.sqrt();
    let want = TensorData::random::<f32, _, _>(
        [4, 10],
        Distribution::Uniform(-bound, bound),
        &mut StdRng::seed_from_u64(11),
    )
    .try_to_vec::<f32>()
    .unwrap();
    assert_eq!(vec2(x.a.val()), want);
    let other = LoraConfig::new(4, 8.0)
        .with_seed(12)
        .init(10, 6, device)
        .unwrap();
    assert_ne!(vec2(other.a.val()), want);
    let f1 = FouraConfig::new(2, 4.0)
        .with_seed(3)
        .init(7, 5, device)
        .unwrap();
    let f2 = FouraConfig::new(2, 4.0)
        .with_seed(3)
        .init(7, 5, device)
        .unwrap();
    assert_eq!(vec2(f1.a.val()), vec2(f2.a.val()));
});

backend_test!(attach_gives_each_layer_its_own_seeded_factors, |device| {
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use lastmile_adapters::{AdaptedModel, AdapterSpec};

    #[derive(Module, Debug)]
    struct Two {
        p: Linear,
        q: Linear,
    }
    let build = || Two {
        p: LinearConfig::new(8, 8).init(device),
        q: LinearConfig::new(8, 8).init(device),
    };
    let spec = AdapterSpec::Lora(LoraConfig::new(2, 4.0).with_seed(5));
    let trained = || {
        let mut model = AdaptedModel::new(build(), &["p", "q"]).unwrap();
        model.attach(&spec).unwrap();
        model.trained().unwrap()
    };
    let (a1, a2) = (trained(), trained());
    let factor = |m: &std::collections::BTreeMap<String, Adapter>, k: &str| match &m[k] {
        Adapter::Lora(l) => vec2(l.a.val()),
        _ => panic!("LoRA expected"),
    };
    // Reproducible per layer, different between layers of one shape.
    assert_eq!(factor(&a1, "p"), factor(&a2, "p"));
    assert_eq!(factor(&a1, "q"), factor(&a2, "q"));
    assert_ne!(factor(&a1, "p"), factor(&a1, "q"));
});
