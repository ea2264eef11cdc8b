//! Integration tests: the `AdaptedModel` handle — attach, train, register,
//! switch, combine, save and load — and its typed errors.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use crate::common::*;
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use lastmile_adapters::combine::{CombineMethod, awom, awor, combine_lora};
use lastmile_adapters::{
    AdaptedModel, Adapter, AdapterError, AdapterSpec, Foura, FouraConfig, GateMode, Lora,
    LoraConfig, Shira, ShiraBudget, ShiraConfig, ShiraMask, WeightLayout,
};
use lastmile_core::backend_test;

fn lora(d_out: usize, d_in: usize, r: usize, device: &Device) -> Lora {
    Lora::from_factors(
        randn([r, d_in], device),
        randn([d_out, r], device),
        2.0 * r as f64,
        false,
    )
    .unwrap()
}

fn shira(w0: &Tensor<2>, seed: u64, device: &Device) -> Shira {
    let s = ShiraConfig::new(ShiraMask::Random, ShiraBudget::Density(0.1))
        .with_seed(seed)
        .init(w0, None)
        .unwrap();
    let n = s.nnz();
    Shira::from_parts(
        s.indices().to_vec(),
        randn([1, n], device).reshape([n]),
        s.d_out(),
        s.d_in(),
    )
    .unwrap()
}

fn one(target: &str, a: impl Into<Adapter>) -> BTreeMap<String, Adapter> {
    BTreeMap::from([(target.to_string(), a.into())])
}

#[derive(Module, Debug)]
struct One {
    fc: Linear,
}

#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(6, 10).init(device),
            fc2: LinearConfig::new(10, 3).init(device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2
            .forward(burn::tensor::activation::relu(self.fc1.forward(x)))
    }
}

/// The deployed `fc` weight, `[in, out]` as burn stores it.
fn fc(model: &AdaptedModel<One>) -> Vec<f32> {
    vec2(model.module().fc.weight.val())
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

backend_test!(switching_is_exact_per_kind, |device| {
    // fc: 16 inputs, 12 outputs; adapters work on W0: [out, in] = [12, 16].
    let module = One {
        fc: LinearConfig::new(16, 12).init(device),
    };
    let stored = module.fc.weight.val();
    let w0 = stored.clone().transpose();
    let w0_bits = vec2(stored.clone());
    let mut model = AdaptedModel::new(module, &["fc"]).unwrap();
    let (s1, s2, l1) = (
        shira(&w0, 1, device),
        shira(&w0, 2, device),
        lora(12, 16, 2, device),
    );
    let expect = |d: Tensor<2>| vec2(stored.clone() + d.transpose());
    let (e1, e2, el) = (
        expect(s1.delta_weight()),
        expect(s2.delta_weight()),
        expect(l1.delta_weight()),
    );
    let mask1: Vec<usize> = s1
        .indices()
        .iter()
        .map(|&i| WeightLayout::InOut.flat(i / 16, i % 16, 12, 16))
        .collect();
    model.add("s1", one("fc", s1)).unwrap();
    model.add("s2", one("fc", s2)).unwrap();
    model.add("l1", one("fc", l1)).unwrap();
    assert_err!(
        model.add("s1", BTreeMap::new()),
        AdapterError::Duplicate { .. }
    );
    assert_err!(model.switch("nope"), AdapterError::NotFound { .. });
    model.switch("s1").unwrap();
    let w = fc(&model);
    assert!(max_abs_diff(&w, &e1) < 1e-6);
    // only masked entries differ from W0
    for i in 0..w.len() {
        if !mask1.contains(&i) {
            assert_eq!(w[i].to_bits(), w0_bits[i].to_bits());
        }
    }
    model.switch("s2").unwrap();
    assert!(max_abs_diff(&fc(&model), &e2) < 1e-6);
    model.switch("l1").unwrap();
    assert!(max_abs_diff(&fc(&model), &el) < 1e-4);
    model.switch("s1").unwrap();
    assert!(max_abs_diff(&fc(&model), &e1) < 1e-6);
    model.unmerge().unwrap();
    assert!(same_bits(&fc(&model), &w0_bits));
    // Repeated switches, the same adapter twice and an adapter on the same
    // mask included (on a CPU device each is one sweep that also undoes the
    // previous one): always W0 + S of the active adapter.
    let s3 = {
        let Adapter::Shira(s1) = model.adapter("s1").unwrap()["fc"].clone() else {
            panic!("s1 is SHiRA")
        };
        let n = s1.nnz();
        Shira::from_parts(
            s1.indices().to_vec(),
            randn([1, n], device).reshape([n]),
            12,
            16,
        )
        .unwrap()
    };
    let e3 = expect(s3.delta_weight());
    model.add("s3", one("fc", s3)).unwrap();
    for (name, want) in [
        ("s1", &e1),
        ("s1", &e1),
        ("s3", &e3),
        ("s2", &e2),
        ("s3", &e3),
        ("s1", &e1),
    ] {
        model.switch(name).unwrap();
        assert!(max_abs_diff(&fc(&model), want) < 1e-6, "{name}");
    }
    model.unmerge().unwrap();
    assert!(same_bits(&fc(&model), &w0_bits));
    // weighted combination: W0 + 0.5 S1 + 2 S2, and mixed kinds fuse densely
    model.switch_weighted(&[("s1", 0.5), ("s2", 2.0)]).unwrap();
    let d = w0_bits.clone();
    let want: Vec<f32> = (0..d.len())
        .map(|i| d[i] + 0.5 * (e1[i] - d[i]) + 2.0 * (e2[i] - d[i]))
        .collect();
    assert!(max_abs_diff(&fc(&model), &want) < 1e-5);
    model.switch_weighted(&[("s1", 1.0), ("l1", 1.0)]).unwrap();
    let want: Vec<f32> = (0..d.len()).map(|i| e1[i] + el[i] - d[i]).collect();
    assert!(max_abs_diff(&fc(&model), &want) < 1e-4);
    assert_eq!(model.active().len(), 2);
    // A failed switch leaves the base deployed and nothing active.
    assert_err!(
        model.switch_weighted(&[("s1", f32::NAN)]),
        AdapterError::InvalidConfig { .. }
    );
    assert!(model.active().is_empty());
    assert!(same_bits(&fc(&model), &w0_bits));
    // Removing the active adapter unmerges first.
    model.switch("s2").unwrap();
    assert_eq!(model.remove("s2").unwrap().len(), 1);
    assert!(model.active().is_empty());
    assert!(same_bits(&fc(&model), &w0_bits));
    assert_eq!(model.adapter_names(), ["l1", "s1", "s3"]);
    // Giving up the handle keeps what is switched in (merge and unload).
    model.switch("l1").unwrap();
    let merged = model.into_module();
    assert!(max_abs_diff(&vec2(merged.fc.weight.val()), &el) < 1e-4);
});

backend_test!(lora_combination_is_exact, |device| {
    let (l1, l2) = (lora(10, 14, 2, device), lora(10, 14, 3, device));
    let want = vec2(l1.delta_weight().mul_scalar(0.7) + l2.delta_weight().mul_scalar(-1.5));
    let cat = combine_lora(&[(&l1, 0.7), (&l2, -1.5)], CombineMethod::Concat).unwrap();
    assert_eq!(cat.rank(), 5);
    assert!(max_abs_diff(&vec2(cat.delta_weight()), &want) < 1e-4);
    let svd = combine_lora(&[(&l1, 0.7), (&l2, -1.5)], CombineMethod::Svd { rank: 5 }).unwrap();
    assert!(max_abs_diff(&vec2(svd.delta_weight()), &want) < 1e-3);
    // A lower SVD rank gives the best rank-k approximation: worse, but bounded.
    let low = combine_lora(&[(&l1, 0.7), (&l2, -1.5)], CombineMethod::Svd { rank: 2 }).unwrap();
    assert!(max_abs_diff(&vec2(low.delta_weight()), &want) > 1e-3);
    assert_err!(
        combine_lora(&[(&l1, f64::NAN)], CombineMethod::Concat),
        AdapterError::InvalidConfig { .. }
    );
    assert_err!(
        combine_lora(&[], CombineMethod::Concat),
        AdapterError::InvalidConfig { .. }
    );
});

backend_test!(interference_and_combination_through_the_handle, |device| {
    // Disjoint row supports: S1ᵀS2 = 0 exactly.
    let s1 = Shira::from_coo(&[0, 1], &[0, 3], &[1.0, 2.0], 8, 8, device).unwrap();
    let s2 = Shira::from_coo(&[5, 6], &[0, 3], &[1.0, 2.0], 8, 8, device).unwrap();
    assert_eq!(awom(&s1.delta_weight(), &s2.delta_weight()).unwrap(), 0.0);
    assert_eq!(awor(&s1.delta_weight(), &s2.delta_weight()).unwrap(), 1.0);
    let (l1, l2) = (lora(8, 8, 2, device), lora(8, 8, 2, device));
    assert!(awom(&l1.delta_weight(), &l2.delta_weight()).unwrap() > 0.0);
    assert!(awor(&l1.delta_weight(), &l2.delta_weight()).unwrap() < 0.05);
    let module = One {
        fc: LinearConfig::new(8, 8).init(device),
    };
    let base = vec2(module.fc.weight.val());
    let mut model = AdaptedModel::new(module, &["fc"]).unwrap();
    model.add("a", one("fc", s1.clone())).unwrap();
    model.add("b", one("fc", s2.clone())).unwrap();
    assert_eq!(model.interference("a", "b").unwrap()["fc"].awor, 1.0);
    model
        .combine("ab", &[("a", 1.0), ("b", 0.5)], CombineMethod::Concat)
        .unwrap();
    assert_eq!(model.adapter("ab").unwrap()["fc"].trainable_params(), 4);
    assert_err!(
        model.combine("ab", &[("a", 1.0)], CombineMethod::Concat),
        AdapterError::Duplicate { .. }
    );
    model.switch("ab").unwrap();
    let want = vec2(
        Tensor::<2>::from_data(burn::tensor::TensorData::new(base, [8, 8]), device)
            + (s1.delta_weight() + s2.delta_weight().mul_scalar(0.5)).transpose(),
    );
    assert!(max_abs_diff(&fc(&model), &want) < 1e-6);
});

backend_test!(
    attach_trains_only_adapters_and_switch_deploys_them,
    |device| {
        let ad = device.clone().autodiff();
        let mlp = Mlp::new(&ad);
        let before = (
            vec2(mlp.fc1.weight.val()),
            vec2(mlp.fc2.weight.val()),
            vec1(mlp.fc1.bias.as_ref().unwrap().val()),
        );
        let x = randn([24, 6], &ad);
        let y = randn([24, 3], &ad);
        let base_out = vec2(mlp.forward(x.clone()));
        let mut model = AdaptedModel::new(mlp, &["fc1", "fc2"]).unwrap();
        let specs = [
            AdapterSpec::Lora(LoraConfig::new(2, 4.0).with_seed(1)),
            AdapterSpec::Shira(ShiraConfig::new(
                ShiraMask::WeightMagnitude,
                ShiraBudget::Count(9),
            )),
            AdapterSpec::Foura(FouraConfig::new(2, 4.0).with_gate(GateMode::Off)),
        ];
        let mut trained_outs = Vec::new();
        for (k, spec) in specs.iter().enumerate() {
            model.attach(spec).unwrap();
            assert!(model.is_training());
            assert!(
                max_abs_diff(&vec2(model.module().forward(x.clone())), &base_out) < 1e-6,
                "{spec:?}: init changed output"
            );
            let mut optim = AdamConfig::new().init();
            for _ in 0..5 {
                let loss = (model.module().forward(x.clone()) - y.clone())
                    .powf_scalar(2.0)
                    .mean();
                let grads = loss.backward();
                let m = model.module();
                assert!(m.fc1.bias.as_ref().unwrap().grad(&grads).is_none());
                assert!(m.fc1.weight.grad(&grads).is_none());
                let gp = GradientsParams::from_grads(grads, m);
                model.update(|m| optim.step(1e-2, m, gp));
            }
            // Base values untouched; outputs moved.
            let m = model.module();
            assert_eq!(vec2(m.fc1.weight.base()), before.0);
            assert_eq!(vec2(m.fc2.weight.base()), before.1);
            assert_eq!(vec1(m.fc1.bias.as_ref().unwrap().val()), before.2);
            let trained_out = vec2(m.forward(x.clone()));
            assert!(max_abs_diff(&trained_out, &base_out) > 1e-4);
            assert_eq!(model.trained().unwrap().len(), 2);
            // Switching is refused while training.
            assert_err!(model.switch("task0"), AdapterError::State { .. });
            assert_err!(model.attach(spec), AdapterError::State { .. });
            let name = format!("task{k}");
            model.register(&name).unwrap();
            assert!(!model.is_training());
            // register ends training: the module is its base again, bit for bit.
            assert_eq!(vec2(model.module().forward(x.clone())), base_out);
            assert_err!(model.trained(), AdapterError::State { .. });
            assert_err!(model.register("again"), AdapterError::State { .. });
            model.switch(&name).unwrap();
            assert!(
                max_abs_diff(&vec2(model.module().forward(x.clone())), &trained_out) < 1e-4,
                "{spec:?}"
            );
            // Adapters train on W0, not on a switched-in adapter.
            assert_err!(model.attach(spec), AdapterError::State { .. });
            model.unmerge().unwrap();
            assert_eq!(vec2(model.module().forward(x.clone())), base_out);
            trained_outs.push(trained_out);
        }
        // Every registered task still switches to what it trained.
        for (k, want) in trained_outs.iter().enumerate() {
            model.switch(&format!("task{k}")).unwrap();
            assert!(max_abs_diff(&vec2(model.module().forward(x.clone())), want) < 1e-4);
        }
        model.unmerge().unwrap();
        assert_err!(
            model.attach(&AdapterSpec::Foura(FouraConfig::new(2, 4.0))),
            AdapterError::Unsupported { .. }
        );
        assert!(!model.is_training());
    }
);

backend_test!(
    attach_with_builds_each_layer_and_checks_its_shape,
    |device| {
        let ad = device.clone().autodiff();
        let mlp = Mlp::new(&ad);
        let (w1, w2) = (mlp.fc1.weight.val(), mlp.fc2.weight.val());
        let mut model = AdaptedModel::new(mlp, &["fc1", "fc2"]).unwrap();
        // LoRA on fc1, FouRA with a frozen gate (one rank component off) on fc2.
        model
            .attach_with(|name, w0| {
                let [d_out, d_in] = w0.dims();
                let (a, b) = (randn([2, d_in], &ad), randn([d_out, 2], &ad));
                Ok(if name == "fc1" {
                    Lora::from_factors(a, b, 4.0, false)?.into()
                } else {
                    let config = FouraConfig::new(2, 4.0).with_gate(GateMode::Frozen);
                    Foura::from_factors(a, b, &config)?
                        .with_frozen_mask(Tensor::from_floats([1.0, 0.0], &ad))?
                        .into()
                })
            })
            .unwrap();
        let adapters = model.trained().unwrap();
        for (name, w0, effective) in [
            ("fc1", &w1, &model.module().fc1.weight),
            ("fc2", &w2, &model.module().fc2.weight),
        ] {
            // The effective weight is W0 + ΔW (ΔW in burn's [in, out] layout).
            let delta = adapters[name].delta_in_layout(WeightLayout::InOut).unwrap();
            assert!(vec2(delta.clone()).iter().any(|v| v.abs() > 1e-3), "{name}");
            let want = vec2(w0.clone() + delta);
            assert!(max_abs_diff(&vec2(effective.val()), &want) < 1e-5, "{name}");
        }
        // A module that already carries adapters is refused.
        let attached = model.module().clone();
        assert_err!(
            AdaptedModel::new(attached, &["fc1"]),
            AdapterError::State { .. }
        );
        model.register("task").unwrap();
        // A factory whose adapter does not fit its layer: a typed error, and
        // the handle stays as it was.
        assert_err!(
            model.attach_with(|_, _| Ok(lora(3, 3, 1, &ad).into())),
            AdapterError::Shape { .. }
        );
        assert!(!model.is_training());
        // A failing factory: its error, nothing attached.
        assert_err!(
            model.attach_with(|_, _| Err(AdapterError::NotFound {
                what: "adapter",
                name: "x".into(),
                available: vec![]
            })),
            AdapterError::NotFound { .. }
        );
        assert!(!model.is_training());
    }
);

#[derive(Module, Debug)]
struct Gain {
    weight: Param<Tensor<1>>,
}

#[derive(Module, Debug)]
struct WithGain {
    fc1: Linear,
    gain: Gain,
}

backend_test!(
    names_and_shapes_that_do_not_fit_are_typed_errors,
    |device| {
        match AdaptedModel::new(Mlp::new(device), &["fc1", "fc3"]) {
            Err(AdapterError::NotFound {
                what: "target",
                name,
                available,
            }) => {
                assert_eq!(name, "fc3.weight");
                assert!(available.contains(&"fc2.bias".to_string()));
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert_err!(
            AdaptedModel::new(Mlp::new(device), &[]),
            AdapterError::InvalidConfig { .. }
        );
        let with_gain = WithGain {
            fc1: LinearConfig::new(6, 10).init(device),
            gain: Gain {
                weight: Param::from_tensor(Tensor::ones([4], device)),
            },
        };
        match AdaptedModel::new(with_gain, &["gain"]) {
            Err(AdapterError::Shape { found, .. }) => assert_eq!(found, [4]),
            other => panic!("expected Shape, got {other:?}"),
        }
        // A pattern adapts every layer it matches.
        let mut model = AdaptedModel::new(Mlp::new(device), &["fc*"]).unwrap();
        assert_eq!(model.layers(), ["fc1", "fc2"]);
        // Adapters for a layer that is not adapted, or of the wrong shape.
        assert_err!(
            model.add("a", one("fc3", lora(10, 6, 1, device))),
            AdapterError::NotFound { what: "target", .. }
        );
        assert_err!(
            model.add("a", one("fc1", lora(6, 10, 1, device))),
            AdapterError::Shape { .. }
        );
        assert_err!(model.remove("a"), AdapterError::NotFound { .. });
        assert_err!(
            model.save("a", std::env::temp_dir()),
            AdapterError::NotFound { .. }
        );
        // Unmerging with nothing switched in is a no-op.
        model.unmerge().unwrap();
    }
);

backend_test!(
    save_then_load_in_a_fresh_handle_gives_the_same_outputs,
    |device| {
        let ad = device.clone().autodiff();
        let mlp = Mlp::new(&ad);
        let x = randn([5, 6], &ad);
        let mut model = AdaptedModel::new(mlp.clone(), &["fc1", "fc2"]).unwrap();
        static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lastmile_model_roundtrip_{}_{}",
            std::process::id(),
            RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        for (k, spec) in [
            AdapterSpec::Lora(LoraConfig::new(2, 4.0).with_seed(3)),
            AdapterSpec::Shira(
                ShiraConfig::new(ShiraMask::Random, ShiraBudget::Count(7)).with_seed(3),
            ),
        ]
        .iter()
        .enumerate()
        {
            model.attach(spec).unwrap();
            let mut optim = AdamConfig::new().init();
            for _ in 0..3 {
                let loss = model.module().forward(x.clone()).powf_scalar(2.0).mean();
                let gp = GradientsParams::from_grads(loss.backward(), model.module());
                model.update(|m| optim.step(1e-2, m, gp));
            }
            let name = format!("t{k}");
            model.register(&name).unwrap();
            model.save(&name, dir.join(&name)).unwrap();
        }
        let mut fresh = AdaptedModel::new(mlp, &["fc1", "fc2"]).unwrap();
        for name in ["t0", "t1"] {
            fresh.load(name, dir.join(name)).unwrap();
            model.switch(name).unwrap();
            fresh.switch(name).unwrap();
            assert_eq!(
                vec2(fresh.module().forward(x.clone())),
                vec2(model.module().forward(x.clone())),
                "{name}"
            );
        }
        assert_err!(
            fresh.load("t0", dir.join("t0")),
            AdapterError::Duplicate { .. }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
);
