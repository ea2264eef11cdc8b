//! Every bad input returns the exact typed error.
#![allow(clippy::unwrap_used)]

use crate::common::{gaussian, tensor};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use lastmile_core::CoreError;
use lastmile_core::backend_test;
use lastmile_core::module::{Layout, Selector};
use lastmile_federated_sharding::aggregate::{
    factorwise, fedavg, proximal_gradient, proximal_term, weighted_average,
};
use lastmile_federated_sharding::message::{LayerUpdate, UpdateMessage};
use lastmile_federated_sharding::strategy::{collective_error, expected_error_averaged};
use lastmile_federated_sharding::{
    Allocation, Budget, DenseParam, LayerShard, ModelWeights, NamedLayer, NamedMatrix, Sampler,
    SamplingStrategy, ShardingError, SpectralLayer, SpectralModel, Strategy, budget_for_ratio,
};

fn is_range(r: &Result<impl std::fmt::Debug, ShardingError>, param: &str) -> bool {
    matches!(r, Err(ShardingError::Core(CoreError::OutOfRange { name, .. })) if name == param)
}

const SIGMA: [f64; 5] = [5.0, 4.0, 2.0, 1.0, 0.5];

#[test]
fn budget_outside_one_to_rank() {
    for s in Strategy::ALL {
        for n in [0, 6, 100] {
            let r = s.allocate(&SIGMA, n, 2);
            assert!(is_range(&r, "budget"), "{s} n={n}: {r:?}");
        }
    }
    assert!(is_range(&Budget::Rank(0).resolve(5), "budget"));
    assert!(is_range(&Budget::Rank(6).resolve(5), "budget"));
    for ratio in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        assert!(
            is_range(&budget_for_ratio(ratio, 5), "keep_ratio"),
            "{ratio}"
        );
    }
}

#[test]
fn zero_clients_per_round() {
    for s in Strategy::ALL {
        assert!(
            is_range(&s.allocate(&SIGMA, 2, 0), "clients_per_round"),
            "{s}"
        );
    }
    assert!(is_range(
        &collective_error(&SIGMA, &[0.4; 5], 0),
        "clients_per_round"
    ));
    assert!(is_range(
        &expected_error_averaged(&SIGMA, &[0.4; 5], &[1.0; 5], 0),
        "clients_per_round"
    ));
}

#[test]
fn bad_spectra() {
    let s = Strategy::Unbiased;
    assert!(matches!(
        s.allocate(&[], 1, 1),
        Err(ShardingError::Core(CoreError::Empty { .. }))
    ));
    assert!(matches!(
        s.allocate(&[1.0, f64::NAN], 1, 1),
        Err(ShardingError::Core(CoreError::NonFinite { index: 1, .. }))
    ));
    assert!(is_range(&s.allocate(&[1.0, -1.0], 1, 1), "sigma[1]"));
    assert!(is_range(&s.allocate(&[1.0, 2.0], 1, 1), "sigma[1]")); // increasing
}

#[test]
fn zero_and_tied_singular_values_are_safe() {
    // two positive values, budget 3: both positive taken, the rest spread
    let sigma = [2.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    for s in Strategy::ALL {
        let a = s.allocate(&sigma, 3, 4).unwrap();
        assert!(
            (a.probabilities().iter().sum::<f64>() - 3.0).abs() < 1e-12,
            "{s}"
        );
        assert!(a.multipliers().iter().all(|l| l.is_finite()), "{s}");
        assert!(a.expected_error_averaged(&sigma, 4).unwrap().is_finite());
    }
    let a = Strategy::Unbiased.allocate(&sigma, 3, 1).unwrap();
    assert_eq!(&a.probabilities()[..2], [1.0, 1.0]);
    assert_eq!(a.probabilities()[2], 0.25);
    assert_eq!(a.expected_error(&sigma).unwrap(), 0.0);
    // budget 1 of 2 positive: zeros get p = 0 and λ = 0
    let a = Strategy::Unbiased.allocate(&sigma, 1, 1).unwrap();
    assert_eq!(&a.probabilities()[2..], [0.0; 4]);
    assert_eq!(&a.multipliers()[2..], [0.0; 4]);
    // all zero
    let a = Strategy::Collective.allocate(&[0.0; 4], 2, 3).unwrap();
    assert_eq!(a.probabilities(), [0.5; 4]);
    // ties get equal probabilities
    for s in [
        Strategy::Unbiased,
        Strategy::PrismLike,
        Strategy::Collective,
    ] {
        let a = s.allocate(&[3.0, 1.0, 1.0, 1.0, 1.0], 3, 3).unwrap();
        let p = a.probabilities();
        assert!(
            p[1..].windows(2).all(|w| (w[0] - w[1]).abs() < 1e-15),
            "{s}: {p:?}"
        );
    }
}

#[test]
fn invalid_allocations() {
    assert!(matches!(
        Allocation::new(vec![0.5, 0.6], vec![1.0, 1.0]),
        Err(ShardingError::NotFixedSize { .. })
    ));
    assert!(matches!(
        Allocation::new(vec![1.0, 0.0], vec![1.0]),
        Err(ShardingError::Core(CoreError::LengthMismatch { .. }))
    ));
    assert!(is_range(
        &Allocation::new(vec![1.0, 0.0], vec![1.0, 2.0]),
        "multipliers[1]"
    ));
    assert!(is_range(
        &Allocation::new(vec![1.0, 0.0], vec![f64::NAN, 0.0]),
        "multipliers[0]"
    ));
    assert!(is_range(
        &Allocation::new(vec![1.5, -0.5], vec![1.0, 1.0]),
        "p[0]"
    ));
    assert!(matches!(
        Allocation::new(vec![0.0, 0.0], vec![0.0, 0.0]),
        Err(ShardingError::NotFixedSize { .. })
    ));
}

backend_test!(bad_matrices, |device| {
    let mut w = gaussian(4, 3, 0);
    w[5] = f32::NAN;
    let r = SpectralLayer::decompose(tensor(w, 4, 3, device));
    assert!(
        matches!(r, Err(ShardingError::Core(CoreError::NonFinite { .. }))),
        "{r:?}"
    );
    let empty = burn::tensor::Tensor::<2>::zeros([0, 3], device);
    assert!(matches!(
        SpectralLayer::decompose(empty),
        Err(ShardingError::Core(CoreError::ShapeMismatch { .. }))
    ));
});

backend_test!(bad_shards, |device| {
    let layer = SpectralLayer::decompose(tensor(gaussian(4, 3, 1), 4, 3, device)).unwrap();
    let alloc = Strategy::Unbiased.allocate(layer.sigma(), 2, 1).unwrap();
    // indices
    assert!(matches!(
        layer.shard(&[], &alloc),
        Err(ShardingError::Core(CoreError::Empty { .. }))
    ));
    assert!(matches!(
        layer.shard(&[0, 3], &alloc),
        Err(ShardingError::Core(CoreError::IndexOutOfRange {
            index: 3,
            bound: 3,
            ..
        }))
    ));
    assert!(matches!(
        layer.shard(&[1, 1], &alloc),
        Err(ShardingError::Core(CoreError::OutOfRange { .. }))
    ));
    // an allocation of another rank
    let other = Strategy::Unbiased.allocate(&SIGMA, 2, 1).unwrap();
    assert!(matches!(
        layer.shard(&[0, 1], &other),
        Err(ShardingError::Core(CoreError::LengthMismatch {
            expected: 3,
            found: 5,
            ..
        }))
    ));
    // explicit multipliers
    assert!(matches!(
        layer.shard_with(&[0, 1], &[1.0]),
        Err(ShardingError::Core(CoreError::LengthMismatch { .. }))
    ));
    assert!(is_range(
        &layer.shard_with(&[0, 1], &[1.0, 0.0]),
        "multipliers[1]"
    ));
    // factor shapes
    assert!(matches!(
        LayerShard::new(4, 3, vec![0], vec![1.0], vec![0.0; 3], vec![0.0; 3]),
        Err(ShardingError::Core(CoreError::LengthMismatch {
            expected: 4,
            found: 3,
            ..
        }))
    ));
    assert!(matches!(
        LayerShard::new(4, 3, vec![0], vec![1.0], vec![0.0; 4], vec![f32::NAN; 3]),
        Err(ShardingError::Core(CoreError::NonFinite { .. }))
    ));
    let shard = layer.shard(&[0, 2], &alloc).unwrap();
    let (a, b) = shard.factor_tensors(device).unwrap();
    assert!(matches!(
        shard.with_trained_factors(b.clone(), a.clone()),
        Err(ShardingError::Core(CoreError::ShapeMismatch { .. }))
    ));
    assert!(matches!(
        DenseParam::new("b", vec![2, 2], vec![0.0; 3]),
        Err(ShardingError::Core(CoreError::LengthMismatch { .. }))
    ));
});

#[derive(Module, Debug)]
struct Net {
    fc: Linear,
}

backend_test!(bad_modules, |device| {
    let net = Net {
        fc: LinearConfig::new(3, 2).init(device),
    };
    let r = SpectralModel::from_module(
        &net,
        &Selector::new(["head.weight"]).unwrap(),
        Layout::InOut,
    );
    assert!(
        matches!(r, Err(ShardingError::Core(CoreError::NoMatch { .. }))),
        "{r:?}"
    );
    // a bias is not a matrix
    let r = SpectralModel::from_module(&net, &Selector::new(["fc.bias"]).unwrap(), Layout::InOut);
    assert!(
        matches!(r, Err(ShardingError::Core(CoreError::ShapeMismatch { .. }))),
        "{r:?}"
    );
    // weights for a module without that path
    let w = ModelWeights {
        matrices: vec![NamedMatrix {
            path: "other.weight".into(),
            layout: Layout::InOut,
            rows: 2,
            cols: 3,
            values: vec![0.0; 6],
        }],
        dense: vec![],
    };
    assert!(matches!(
        w.apply_to(net),
        Err(ShardingError::Core(CoreError::NoMatch { .. }))
    ));
    // budget above a layer's rank
    let net = Net {
        fc: LinearConfig::new(3, 2).init(device),
    };
    let model =
        SpectralModel::from_module(&net, &Selector::new(["fc.weight"]).unwrap(), Layout::InOut)
            .unwrap();
    let r = model.plan(&Strategy::TopN, Sampler::Systematic, Budget::Rank(3), 1);
    assert!(is_range(&r, "budget"));
    let r = model.plan(
        &Strategy::Collective,
        Sampler::Systematic,
        Budget::Rank(1),
        0,
    );
    assert!(is_range(&r, "clients_per_round"));
});

backend_test!(bad_aggregation_inputs, |device| {
    let layer = SpectralLayer::decompose(tensor(gaussian(3, 2, 2), 3, 2, device)).unwrap();
    let model = SpectralModel::from_parts(
        vec![NamedLayer {
            path: "w".into(),
            layout: Layout::OutIn,
            layer: layer.clone(),
        }],
        vec![DenseParam::new("b", vec![3], vec![0.0; 3]).unwrap()],
    )
    .unwrap();
    let good = UpdateMessage {
        round: 0,
        client_id: 1,
        num_samples: 4,
        layers: vec![LayerUpdate::Factors {
            path: "w".into(),
            shard: layer.shard_with(&[0], &[1.0]).unwrap(),
        }],
        dense: vec![DenseParam::new("b", vec![3], vec![1.0; 3]).unwrap()],
    };
    assert!(matches!(
        fedavg(&model, &[]),
        Err(ShardingError::Core(CoreError::Empty { .. }))
    ));
    let mut zero = good.clone();
    zero.num_samples = 0;
    assert!(is_range(&fedavg(&model, &[zero]), "total weight"));
    // wrong layer path, wrong shape, missing dense parameter
    let mut bad = good.clone();
    bad.layers = vec![LayerUpdate::DenseDelta {
        path: "v".into(),
        rows: 3,
        cols: 2,
        delta: vec![0.0; 6],
    }];
    assert!(matches!(
        fedavg(&model, &[bad]),
        Err(ShardingError::Mismatch { .. })
    ));
    let mut bad = good.clone();
    bad.layers = vec![LayerUpdate::DenseDelta {
        path: "w".into(),
        rows: 2,
        cols: 3,
        delta: vec![0.0; 6],
    }];
    assert!(matches!(
        fedavg(&model, &[bad]),
        Err(ShardingError::Mismatch { .. })
    ));
    let mut bad = good.clone();
    bad.dense.clear();
    assert!(matches!(
        fedavg(&model, &[bad]),
        Err(ShardingError::Mismatch { .. })
    ));
    // factor-wise needs factors
    let mut delta = good.clone();
    delta.layers = vec![LayerUpdate::DenseDelta {
        path: "w".into(),
        rows: 3,
        cols: 2,
        delta: vec![0.0; 6],
    }];
    assert!(fedavg(&model, std::slice::from_ref(&delta)).is_ok());
    assert!(matches!(
        factorwise(&model, &[delta]),
        Err(ShardingError::Mismatch { .. })
    ));
    assert!(factorwise(&model, &[good]).is_ok());
});

#[test]
fn bad_fedavg_and_fedprox_inputs() {
    assert!(matches!(
        weighted_average(&[]),
        Err(ShardingError::Core(CoreError::Empty { .. }))
    ));
    assert!(matches!(
        weighted_average(&[(1, &[1.0, 2.0][..]), (1, &[1.0][..])]),
        Err(ShardingError::Core(CoreError::LengthMismatch { .. }))
    ));
    assert!(is_range(
        &weighted_average(&[(0, &[1.0][..])]),
        "total weight"
    ));
    assert!(is_range(&proximal_term(&[1.0], &[0.0], -0.1), "mu"));
    assert!(is_range(&proximal_term(&[1.0], &[0.0], f64::NAN), "mu"));
    assert!(matches!(
        proximal_gradient(&[1.0, 2.0], &[0.0], 0.1),
        Err(ShardingError::Core(CoreError::LengthMismatch { .. }))
    ));
}
