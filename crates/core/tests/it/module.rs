//! The module walker: selection, layouts, stored vs effective values, and
//! typed errors for everything that would otherwise be skipped silently.
#![allow(clippy::unwrap_used)]

use burn::module::{Module, Param, Reparameterization, Reparameterizer};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use lastmile_core::CoreError;
use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::module::*;

#[derive(Module, Debug)]
struct Block {
    up: Linear,
    down: Linear,
}

#[derive(Module, Debug)]
struct Net {
    layers: Vec<Block>,
    head: Linear,
}

fn net(device: &Device) -> Net {
    let block = |d: &Device| Block {
        up: LinearConfig::new(3, 5).init(d),
        down: LinearConfig::new(5, 3).init(d),
    };
    Net {
        layers: vec![block(device), block(device)],
        head: LinearConfig::new(3, 2).with_bias(false).init(device),
    }
}

backend_test!(lists_every_parameter_by_path, |device| {
    let names: Vec<String> = list_params(&net(device))
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        names,
        [
            "layers.0.up.weight",
            "layers.0.up.bias",
            "layers.0.down.weight",
            "layers.0.down.bias",
            "layers.1.up.weight",
            "layers.1.up.bias",
            "layers.1.down.weight",
            "layers.1.down.bias",
            "head.weight",
        ]
    );
});

backend_test!(patterns_select_by_segment, |device| {
    let n = net(device);
    let pick = |p: &[&str]| -> Vec<String> {
        collect_params(&n, &Selector::new(p).unwrap(), ParamValue::Stored)
            .unwrap()
            .into_iter()
            .map(|p| p.path)
            .collect()
    };
    assert_eq!(
        pick(&["layers.*.up.weight"]),
        ["layers.0.up.weight", "layers.1.up.weight"]
    );
    assert_eq!(pick(&["**.bias"]).len(), 4);
    assert_eq!(pick(&["layers.1.**"]).len(), 4);
    assert_eq!(
        pick(&["head.weight", "layers.0.d*.weight"]),
        ["layers.0.down.weight", "head.weight"]
    );
});

backend_test!(unmatched_and_malformed_patterns_are_errors, |device| {
    let n = net(device);
    let err = collect_params(
        &n,
        &Selector::new(["layers.*.ffn.weight"]).unwrap(),
        ParamValue::Stored,
    )
    .unwrap_err();
    match err {
        CoreError::NoMatch { pattern, available } => {
            assert_eq!(pattern, "layers.*.ffn.weight");
            assert_eq!(available.len(), 9);
        }
        e => panic!("unexpected {e}"),
    }
    // One good and one bad pattern: still an error.
    let mixed = Selector::new(["head.weight", "head.bias"]).unwrap();
    assert!(matches!(
        collect_params(&n, &mixed, ParamValue::Stored),
        Err(CoreError::NoMatch { .. })
    ));
    assert!(matches!(
        Selector::new(Vec::<String>::new()),
        Err(CoreError::Empty { .. })
    ));
    assert!(matches!(
        Selector::new(["a..b"]),
        Err(CoreError::NoMatch { .. })
    ));
    assert!(matches!(
        map_params(net(device), &mixed, |p| Ok::<_, CoreError>(p.value.clone())),
        Err(CoreError::NoMatch { .. })
    ));
});

backend_test!(matrix_view_is_out_in_for_both_layouts, |device| {
    let n = net(device);
    let stored = n.head.weight.val(); // burn: [in = 3, out = 2]
    let p = &collect_params(
        &n,
        &Selector::new(["head.weight"]).unwrap(),
        ParamValue::Stored,
    )
    .unwrap()[0];
    assert_eq!(p.shape, vec![3, 2]);
    let w = p.matrix(Layout::InOut).unwrap();
    assert_eq!(w.dims(), [2, 3]);
    assert_eq!(
        tensor_to_vec(w).unwrap(),
        tensor_to_vec(stored.clone().transpose()).unwrap()
    );
    // Read as if it were stored [out, in]: no transpose.
    let raw = p.matrix(Layout::OutIn).unwrap();
    assert_eq!(tensor_to_vec(raw).unwrap(), tensor_to_vec(stored).unwrap());
    // A bias is no matrix.
    let b = &collect_params(
        &n,
        &Selector::new(["layers.0.up.bias"]).unwrap(),
        ParamValue::Stored,
    )
    .unwrap()[0];
    assert!(matches!(
        b.matrix(Layout::InOut),
        Err(CoreError::ShapeMismatch { .. })
    ));
    // A rank-4 conv kernel [out, in, k, k] flattens to out × in·k·k.
    let conv = NamedParam {
        path: "conv.weight".into(),
        shape: vec![4, 2, 3, 3],
        value: Tensor::zeros([72], device),
    };
    assert_eq!(conv.matrix(Layout::OutIn).unwrap().dims(), [4, 18]);
    assert!(conv.matrix(Layout::InOut).is_err());
});

backend_test!(map_matrices_round_trips_the_layout, |device| {
    let n = net(device);
    let before = tensor_to_vec(n.layers[1].up.weight.val()).unwrap();
    let sel = Selector::new(["layers.1.up.weight"]).unwrap();
    // Add 1 to entry [out = 4, in = 0] of the [out, in] view.
    let mapped = map_matrices(n, &sel, Layout::InOut, |path, w| {
        assert_eq!(path, "layers.1.up.weight");
        assert_eq!(w.dims(), [5, 3]);
        let mut v = tensor_to_vec(w).unwrap();
        v[4 * 3] += 1.0;
        Ok::<_, CoreError>(Tensor::<1>::from_floats(v.as_slice(), device).reshape([5, 3]))
    })
    .unwrap();
    let after = tensor_to_vec(mapped.layers[1].up.weight.val()).unwrap();
    // Stored [in, out]: entry [in = 0, out = 4] is flat index 4.
    for (i, (a, b)) in after.iter().zip(&before).enumerate() {
        let want = if i == 4 { b + 1.0 } else { *b };
        assert_eq!(*a, want, "index {i}");
    }
    // Returning a different shape is an error, not a silent skip.
    let err = map_matrices(mapped, &sel, Layout::InOut, |_, w| {
        Ok::<_, CoreError>(w.transpose())
    })
    .unwrap_err();
    assert!(matches!(err, CoreError::ShapeMismatch { .. }), "{err}");
});

backend_test!(closure_errors_propagate, |device| {
    #[derive(Debug)]
    enum MyError {
        Core,
        Mine,
    }
    impl From<CoreError> for MyError {
        fn from(_: CoreError) -> Self {
            MyError::Core
        }
    }
    let r = map_params(net(device), &Selector::all(), |_| {
        Err::<Tensor<1>, _>(MyError::Mine)
    });
    assert!(matches!(r, Err(MyError::Mine)));
    let r = map_params(net(device), &Selector::new(["nope"]).unwrap(), |p| {
        Ok::<_, MyError>(p.value.clone())
    });
    assert!(matches!(r, Err(MyError::Core)));
});

/// A reparameterisation adding a constant, to tell stored from effective.
#[derive(Module, Debug)]
struct PlusOne {
    shift: Param<Tensor<1>>,
}

impl Reparameterization for PlusOne {
    const NAME: &'static str = "plus";
    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        base + 1.0
    }
}

struct AttachPlusOne(Device);

impl Reparameterizer for AttachPlusOne {
    type Reparam = PlusOne;
    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<PlusOne>) {
        let r = (path == "head.weight").then(|| PlusOne {
            shift: Param::from_tensor(Tensor::zeros([1], &self.0)),
        });
        (param, r)
    }
}

backend_test!(
    stored_and_effective_values_differ_under_reparameterisation,
    |device| {
        let n = net(device).apply_reparameterization(AttachPlusOne(device.clone()));
        let sel = Selector::new(["head.weight"]).unwrap();
        let stored = tensor_to_vec(
            collect_params(&n, &sel, ParamValue::Stored).unwrap()[0]
                .value
                .clone(),
        )
        .unwrap();
        let effective = tensor_to_vec(
            collect_params(&n, &sel, ParamValue::Effective).unwrap()[0]
                .value
                .clone(),
        )
        .unwrap();
        for (s, e) in stored.iter().zip(&effective) {
            assert!((e - s - 1.0).abs() < 1e-6);
        }
        // The reparameterisation's own parameters are walked too.
        let nested = collect_params(
            &n,
            &Selector::new(["head.weight.plus.shift"]).unwrap(),
            ParamValue::Stored,
        )
        .unwrap();
        assert_eq!(nested[0].shape, vec![1]);
        // Rewriting replaces the stored base and keeps the reparameterisation.
        let zeroed = map_params(n, &sel, |p| {
            Ok::<_, CoreError>(p.value.clone().zeros_like())
        })
        .unwrap();
        let eff = tensor_to_vec(zeroed.head.weight.val()).unwrap();
        assert!(eff.iter().all(|v| (*v - 1.0).abs() < 1e-6));
    }
);
