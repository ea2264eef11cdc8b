//! Integration tests: adapter set switching, combination, interference, attach helper.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use crate::common::*;
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Tensor;
use lastmile_adapters::attach::{AdapterSpec, Attached, attach_adapters, attach_with};
use lastmile_adapters::combine::{CombineMethod, awom, awor, combine_lora};
use lastmile_adapters::{
    Adapter, AdapterError, AdapterSet, Foura, FouraConfig, GateMode, Lora, Shira, ShiraBudget,
    ShiraConfig, ShiraMask, WeightLayout,
};
use lastmile_core::{CoreError, backend_test};

fn lora(d_out: usize, d_in: usize, r: usize, device: &burn::tensor::Device) -> Lora {
    Lora::from_factors(
        randn([r, d_in], device),
        randn([d_out, r], device),
        2.0 * r as f64,
        false,
    )
    .unwrap()
}

fn shira(w0: &Tensor<2>, seed: u64, device: &burn::tensor::Device) -> Shira {
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

backend_test!(switching_is_exact_per_kind, |device| {
    let w0 = randn([12, 16], device);
    for layout in [WeightLayout::OutIn, WeightLayout::InOut] {
        let stored = if layout == WeightLayout::OutIn {
            w0.clone()
        } else {
            w0.clone().transpose()
        };
        let w0_bits = vec2(stored.clone());
        let mut set = AdapterSet::new();
        set.add_target("fc", stored.clone(), layout).unwrap();
        let (s1, s2, l1) = (
            shira(&w0, 1, device),
            shira(&w0, 2, device),
            lora(12, 16, 2, device),
        );
        let expect = |d: Tensor<2>| {
            let d = if layout == WeightLayout::OutIn {
                d
            } else {
                d.transpose()
            };
            vec2(stored.clone() + d)
        };
        let (e1, e2, el) = (
            expect(s1.delta_weight()),
            expect(s2.delta_weight()),
            expect(l1.delta_weight()),
        );
        let mask1: Vec<usize> = s1
            .indices()
            .iter()
            .map(|&i| layout.flat(i / 16, i % 16, 12, 16))
            .collect();
        set.add_adapter("s1", one("fc", s1)).unwrap();
        set.add_adapter("s2", one("fc", s2)).unwrap();
        set.add_adapter("l1", one("fc", l1)).unwrap();
        assert_err!(
            set.add_adapter("s1", BTreeMap::new()),
            AdapterError::Duplicate { .. }
        );
        assert_err!(set.activate("nope"), AdapterError::NotFound { .. });
        set.activate("s1").unwrap();
        let w = vec2(set.weight("fc").unwrap());
        assert!(max_abs_diff(&w, &e1) < 1e-6);
        // only masked entries differ from W0
        for i in 0..w.len() {
            if !mask1.contains(&i) {
                assert_eq!(w[i].to_bits(), w0_bits[i].to_bits());
            }
        }
        set.activate("s2").unwrap();
        assert!(max_abs_diff(&vec2(set.weight("fc").unwrap()), &e2) < 1e-6);
        set.activate("l1").unwrap();
        assert!(max_abs_diff(&vec2(set.weight("fc").unwrap()), &el) < 1e-4);
        set.activate("s1").unwrap();
        assert!(max_abs_diff(&vec2(set.weight("fc").unwrap()), &e1) < 1e-6);
        set.deactivate().unwrap();
        let back = vec2(set.weight("fc").unwrap());
        assert!(
            back.iter()
                .zip(&w0_bits)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        // Repeated switches, the same adapter twice and an adapter on the same
        // mask included (on a CPU device each is one sweep that also undoes
        // the previous one): always W0 + S of the active adapter.
        let s3 = {
            let s1 = set.adapter("s1").unwrap()["fc"].clone();
            let Adapter::Shira(s1) = s1 else {
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
        set.add_adapter("s3", one("fc", s3)).unwrap();
        for (name, want) in [
            ("s1", &e1),
            ("s1", &e1),
            ("s3", &e3),
            ("s2", &e2),
            ("s3", &e3),
            ("s1", &e1),
        ] {
            set.activate(name).unwrap();
            assert!(
                max_abs_diff(&vec2(set.weight("fc").unwrap()), want) < 1e-6,
                "{name}"
            );
        }
        set.deactivate().unwrap();
        assert!(
            vec2(set.weight("fc").unwrap())
                .iter()
                .zip(&w0_bits)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        // weighted combination: W0 + 0.5 S1 + 2 S2, and mixed kinds fuse densely
        set.activate_weighted(&[("s1", 0.5), ("s2", 2.0)]).unwrap();
        let d = vec2(stored.clone());
        let want: Vec<f32> = (0..d.len())
            .map(|i| d[i] + 0.5 * (e1[i] - d[i]) + 2.0 * (e2[i] - d[i]))
            .collect();
        assert!(max_abs_diff(&vec2(set.weight("fc").unwrap()), &want) < 1e-5);
        set.activate_weighted(&[("s1", 1.0), ("l1", 1.0)]).unwrap();
        let want: Vec<f32> = (0..d.len()).map(|i| e1[i] + el[i] - d[i]).collect();
        assert!(max_abs_diff(&vec2(set.weight("fc").unwrap()), &want) < 1e-4);
        assert_eq!(set.active().len(), 2);
        set.deactivate().unwrap();
        assert!(
            vec2(set.weight("fc").unwrap())
                .iter()
                .zip(&w0_bits)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }
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

backend_test!(interference_metrics, |device| {
    let w0 = randn([8, 8], device);
    // Disjoint row supports: S1ᵀS2 = 0 exactly.
    let s1 = Shira::from_coo(&[0, 1], &[0, 3], &[1.0, 2.0], 8, 8, device).unwrap();
    let s2 = Shira::from_coo(&[5, 6], &[0, 3], &[1.0, 2.0], 8, 8, device).unwrap();
    assert_eq!(awom(&s1.delta_weight(), &s2.delta_weight()).unwrap(), 0.0);
    assert_eq!(awor(&s1.delta_weight(), &s2.delta_weight()).unwrap(), 1.0);
    let (l1, l2) = (lora(8, 8, 2, device), lora(8, 8, 2, device));
    assert!(awom(&l1.delta_weight(), &l2.delta_weight()).unwrap() > 0.0);
    assert!(awor(&l1.delta_weight(), &l2.delta_weight()).unwrap() < 0.05);
    let mut set = AdapterSet::new();
    set.add_target("fc", w0, WeightLayout::OutIn).unwrap();
    set.add_adapter("a", one("fc", s1)).unwrap();
    set.add_adapter("b", one("fc", s2)).unwrap();
    let m = set.interference("a", "b").unwrap();
    assert_eq!(m["fc"].awor, 1.0);
    let comb = set
        .combine(&[("a", 1.0), ("b", 1.0)], CombineMethod::Concat)
        .unwrap();
    assert_eq!(comb["fc"].trainable_params(), 4);
});

#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2
            .forward(burn::tensor::activation::relu(self.fc1.forward(x)))
    }
}

backend_test!(attach_trains_only_adapters_and_set_deploys_them, |device| {
    let ad = device.clone().autodiff();
    let mlp = Mlp {
        fc1: LinearConfig::new(6, 10).init(&ad),
        fc2: LinearConfig::new(10, 3).init(&ad),
    };
    let before = (
        vec2(mlp.fc1.weight.val()),
        vec2(mlp.fc2.weight.val()),
        vec1(mlp.fc1.bias.as_ref().unwrap().val()),
    );
    let x = randn([24, 6], &ad);
    let y = randn([24, 3], &ad);
    for spec in [
        AdapterSpec::Lora(lastmile_adapters::LoraConfig::new(2, 4.0)),
        AdapterSpec::Shira(ShiraConfig::new(
            ShiraMask::WeightMagnitude,
            ShiraBudget::Count(9),
        )),
        AdapterSpec::Foura(FouraConfig::new(2, 4.0).with_gate(GateMode::Off)),
    ] {
        let (mut model, attached) = attach_adapters(mlp.clone(), &["fc1", "fc2"], &spec).unwrap();
        let base_out = vec2(mlp.forward(x.clone()));
        assert!(
            max_abs_diff(&vec2(model.forward(x.clone())), &base_out) < 1e-6,
            "{spec:?}: init changed output"
        );
        let mut optim = AdamConfig::new().init();
        for _ in 0..5 {
            let loss = (model.forward(x.clone()) - y.clone())
                .powf_scalar(2.0)
                .mean();
            let grads = loss.backward();
            assert!(model.fc1.bias.as_ref().unwrap().grad(&grads).is_none());
            let gp = GradientsParams::from_grads(grads, &model);
            model = optim.step(1e-2, model, gp);
        }
        // Base values untouched; outputs moved.
        assert_eq!(vec2(model.fc1.weight.base()), before.0);
        assert_eq!(vec2(model.fc2.weight.base()), before.1);
        assert_eq!(vec1(model.fc1.bias.as_ref().unwrap().val()), before.2);
        let trained_out = vec2(model.forward(x.clone()));
        assert!(max_abs_diff(&trained_out, &base_out) > 1e-4);
        // Read the adapters back and deploy them through a set on the plain module.
        let adapters = attached.extract(&model).unwrap();
        assert_eq!(adapters.len(), 2);
        let mut set = AdapterSet::from_module(&mlp, &["fc1", "fc2"]).unwrap();
        set.add_adapter("task", adapters).unwrap();
        set.activate("task").unwrap();
        let deployed = set.apply_to(mlp.clone()).unwrap();
        assert!(
            max_abs_diff(&vec2(deployed.forward(x.clone())), &trained_out) < 1e-4,
            "{spec:?}"
        );
        set.deactivate().unwrap();
        assert_eq!(
            vec2(set.apply_to(mlp.clone()).unwrap().forward(x.clone())),
            base_out
        );
    }
    match attach_adapters(
        mlp.clone(),
        &["fc3"],
        &AdapterSpec::Lora(lastmile_adapters::LoraConfig::new(2, 4.0)),
    ) {
        Err(AdapterError::NotFound {
            what: "target",
            available,
            ..
        }) => assert_eq!(available, ["fc1.weight", "fc2.weight"]),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        attach_adapters(mlp, &["fc1"], &AdapterSpec::Foura(FouraConfig::new(2, 4.0))),
        Err(AdapterError::Unsupported { .. })
    ));
});

/// An adapter with a non-zero `ΔW` on `fc1` (LoRA) and `fc2` (FouRA with a
/// frozen gate that switches one rank component off).
fn attach_nonzero(mlp: Mlp, device: &burn::tensor::Device) -> (Mlp, Attached) {
    attach_with(mlp, &["fc1", "fc2"], |name, w0| {
        let [d_out, d_in] = w0.dims();
        let (a, b) = (randn([2, d_in], device), randn([d_out, 2], device));
        Ok(if name == "fc1" {
            Lora::from_factors(a, b, 4.0, false)?.into()
        } else {
            let config = FouraConfig::new(2, 4.0).with_gate(GateMode::Frozen);
            Foura::from_factors(a, b, &config)?
                .with_frozen_mask(Tensor::from_floats([1.0, 0.0], device))?
                .into()
        })
    })
    .unwrap()
}

backend_test!(set_from_attached_module_reads_the_stored_base, |device| {
    let ad = device.clone().autodiff();
    let mlp = Mlp {
        fc1: LinearConfig::new(6, 10).init(&ad),
        fc2: LinearConfig::new(10, 3).init(&ad),
    };
    let (model, attached) = attach_nonzero(mlp.clone(), &ad);
    let adapters = attached.extract(&model).unwrap();
    for (name, w0, effective) in [
        ("fc1", &mlp.fc1.weight, &model.fc1.weight),
        ("fc2", &mlp.fc2.weight, &model.fc2.weight),
    ] {
        // The effective weight is W0 + ΔW (ΔW in burn's [in, out] layout) ...
        let delta = adapters[name].delta_in_layout(WeightLayout::InOut).unwrap();
        assert!(vec2(delta.clone()).iter().any(|v| v.abs() > 1e-3), "{name}");
        let want = vec2(w0.val() + delta);
        assert!(max_abs_diff(&vec2(effective.val()), &want) < 1e-5, "{name}");
    }
    // ... but the set's base is the stored W0, bit for bit.
    let mut set = AdapterSet::from_module(&model, &["fc1", "fc2"]).unwrap();
    assert_eq!(
        vec2(set.base_weight("fc1").unwrap()),
        vec2(mlp.fc1.weight.val())
    );
    assert_eq!(
        vec2(set.base_weight("fc2").unwrap()),
        vec2(mlp.fc2.weight.val())
    );

    // Writing into the attached module replaces the stored base; the adapter
    // stays attached and still applies on top.
    set.add_adapter("task", adapters.clone()).unwrap();
    set.activate("task").unwrap();
    let deployed = set.apply_to(model).unwrap();
    assert_eq!(
        vec2(deployed.fc1.weight.base()),
        vec2(set.weight("fc1").unwrap())
    );
    let again = attached.extract(&deployed).unwrap();
    assert_eq!(
        vec2(again["fc1"].delta_weight().unwrap()),
        vec2(adapters["fc1"].delta_weight().unwrap())
    );
    let twice = vec2(
        set.weight("fc1").unwrap()
            + adapters["fc1"]
                .delta_in_layout(WeightLayout::InOut)
                .unwrap(),
    );
    assert!(max_abs_diff(&vec2(deployed.fc1.weight.val()), &twice) < 1e-5);

    // A materialised module has lost its adapters.
    match attached.extract(&deployed.materialize()) {
        Err(AdapterError::NotFound {
            what: "adapter",
            name,
            ..
        }) => {
            assert_eq!(name, "fc1.weight.adapter.inner.**")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
});

#[derive(Module, Debug)]
struct Gain {
    weight: Param<Tensor<1>>,
}

#[derive(Module, Debug)]
struct WithGain {
    fc1: Linear,
    gain: Gain,
}

backend_test!(set_and_module_that_do_not_fit_are_typed_errors, |device| {
    let mlp = Mlp {
        fc1: LinearConfig::new(6, 10).init(device),
        fc2: LinearConfig::new(10, 3).init(device),
    };
    match AdapterSet::from_module(&mlp, &["fc1", "fc3"]) {
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
    assert!(matches!(
        AdapterSet::from_module(&mlp, &[]),
        Err(AdapterError::Core(CoreError::Empty { .. }))
    ));
    let with_gain = WithGain {
        fc1: LinearConfig::new(6, 10).init(device),
        gain: Gain {
            weight: Param::from_tensor(Tensor::ones([4], device)),
        },
    };
    match AdapterSet::from_module(&with_gain, &["gain"]) {
        Err(AdapterError::Shape { found, .. }) => assert_eq!(found, [4]),
        other => panic!("expected Shape, got {other:?}"),
    }

    // A target the module lacks.
    let set = AdapterSet::from_module(&mlp, &["fc1", "fc2"]).unwrap();
    match set.apply_to(with_gain) {
        Err(AdapterError::NotFound {
            what: "target",
            name,
            ..
        }) => assert_eq!(name, "fc2.weight"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A target whose shape does not fit: [5, 10] stored, set holds [6, 10].
    let other = Mlp {
        fc1: LinearConfig::new(5, 10).init(device),
        fc2: LinearConfig::new(10, 3).init(device),
    };
    match set.apply_to(other) {
        Err(AdapterError::Shape { what, found, .. }) => {
            assert_eq!(what, "parameter `fc1.weight`");
            assert_eq!(found, [5, 10]);
        }
        other => panic!("expected Shape, got {other:?}"),
    }
    // Same element count, other layout: still a mismatch, not a silent reshape.
    let fresh = WithGain {
        fc1: LinearConfig::new(6, 10).init(device),
        gain: Gain {
            weight: Param::from_tensor(Tensor::ones([4], device)),
        },
    };
    let mut only_t = AdapterSet::new();
    only_t
        .add_target("fc1", randn([10, 6], device), WeightLayout::OutIn)
        .unwrap();
    assert!(matches!(
        only_t.apply_to(fresh),
        Err(AdapterError::Shape { .. })
    ));
    // An empty set changes nothing.
    let same = AdapterSet::new().apply_to(mlp.clone()).unwrap();
    assert_eq!(vec2(same.fc1.weight.val()), vec2(mlp.fc1.weight.val()));
});
