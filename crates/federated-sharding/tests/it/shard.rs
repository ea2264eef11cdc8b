//! Sharding of matrices and burn modules, reconstruction, aggregation and
//! the FedProx term, on every compiled backend.
#![allow(clippy::unwrap_used)]

use crate::common::{decaying, gaussian, rel_err, tensor};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Tensor, activation::relu};
use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::module::{Layout, Selector};
use lastmile_federated_sharding::aggregate::{
    factorwise, fedavg, proximal_gradient, proximal_penalty, proximal_term,
};
use lastmile_federated_sharding::message::{LayerUpdate, UpdateMessage};
use lastmile_federated_sharding::{
    Budget, FixedSizeDesign, ModelShard, NamedLayer, Sampler, SamplingStrategy, SpectralLayer,
    SpectralModel, Strategy,
};
use rand::{SeedableRng, rngs::StdRng};

#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(8, 16).init(device),
            fc2: LinearConfig::new(16, 4).init(device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(relu(self.fc1.forward(x)))
    }
}

fn weights() -> Selector {
    Selector::new(["fc*.weight"]).unwrap()
}

fn untrained_update(shard: &ModelShard, client: u64, samples: u64) -> UpdateMessage {
    UpdateMessage {
        round: 0,
        client_id: client,
        num_samples: samples,
        layers: shard
            .layers()
            .iter()
            .map(|l| LayerUpdate::Factors {
                path: l.path.clone(),
                shard: l.shard.clone(),
            })
            .collect(),
        dense: shard.dense().to_vec(),
    }
}

// SVD reconstruction ≤ 1e-4 relative on random (tall and wide) and
// trained-like (decaying spectrum) matrices; a full-budget shard reproduces W.
backend_test!(svd_reconstruction_is_accurate, |device| {
    let cases = [
        ("random 32x24", gaussian(32, 24, 1), 32, 24),
        ("random 24x32", gaussian(24, 32, 2), 24, 32),
        ("decaying 64x48", decaying(64, 48, 3, device), 64, 48),
    ];
    for (label, w, rows, cols) in cases {
        let layer = SpectralLayer::decompose(tensor(w.clone(), rows, cols, device)).unwrap();
        assert_eq!(layer.rank(), rows.min(cols));
        assert!(layer.sigma().windows(2).all(|s| s[0] >= s[1]));
        let e = rel_err(&layer.reconstruct(), &w);
        assert!(e <= 1e-4, "{label}: SVD reconstruction error {e}");
        for strategy in Strategy::ALL {
            let alloc = strategy.allocate(layer.sigma(), layer.rank(), 3).unwrap();
            assert!(alloc.is_deterministic());
            let all: Vec<usize> = (0..layer.rank()).collect();
            let shard = layer.shard(&all, &alloc).unwrap();
            let e = rel_err(&shard.reconstruct_host(), &w);
            assert!(
                e <= 1e-4,
                "{label} / {strategy}: full-budget shard error {e}"
            );
            let on_device = tensor_to_vec(shard.reconstruct(device).unwrap()).unwrap();
            assert!(rel_err(&on_device, &shard.reconstruct_host()) <= 1e-5);
        }
    }
});

// A rank-deficient weight (rank 5 of 24): no NaN, finite multipliers, exact budget.
backend_test!(rank_deficient_weights_are_handled, |device| {
    let a = tensor(gaussian(32, 5, 4), 32, 5, device);
    let b = tensor(gaussian(5, 24, 5), 5, 24, device);
    let layer = SpectralLayer::decompose(a.matmul(b)).unwrap();
    for strategy in Strategy::ALL {
        for n in [3, 12, 24] {
            let alloc = strategy.allocate(layer.sigma(), n, 4).unwrap();
            let p = alloc.probabilities();
            assert!((p.iter().sum::<f64>() - n as f64).abs() < 1e-9);
            assert!(
                alloc
                    .multipliers()
                    .iter()
                    .all(|l| l.is_finite() && *l >= 0.0)
            );
            let design = Sampler::ConditionalPoisson.design(p).unwrap();
            let idx = design.sample(&mut StdRng::seed_from_u64(n as u64));
            let rec = layer.shard(&idx, &alloc).unwrap().reconstruct_host();
            assert!(rec.iter().all(|v| v.is_finite()), "{strategy} n={n}");
        }
    }
});

// MLP 8→16→4: full budget + Top-n reproduces the module's outputs within 1e-4.
backend_test!(full_budget_top_n_reproduces_mlp_outputs, |device| {
    let mlp = Mlp::new(device);
    let x = Tensor::<2>::random([10, 8], Distribution::Normal(0.0, 1.0), device);
    let reference = tensor_to_vec(mlp.forward(x.clone())).unwrap();
    let model = SpectralModel::from_module(&mlp, &weights(), Layout::InOut).unwrap();
    assert_eq!(model.layers().len(), 2);
    assert_eq!(
        model
            .dense()
            .iter()
            .map(|d| d.path.as_str())
            .collect::<Vec<_>>(),
        ["fc1.bias", "fc2.bias"]
    );
    let plan = model
        .plan(
            &Strategy::TopN,
            Sampler::Systematic,
            Budget::KeepRatio(1.0),
            1,
        )
        .unwrap();
    let shard = plan.draw(&mut StdRng::seed_from_u64(0)).unwrap();
    assert_eq!(shard.layers()[0].shard.kept(), 8);
    assert_eq!(shard.layers()[1].shard.kept(), 4);
    let client = shard.apply_to(Mlp::new(device)).unwrap();
    let out = tensor_to_vec(client.forward(x)).unwrap();
    let e = rel_err(&out, &reference);
    assert!(e <= 1e-4, "output relative error {e}");
});

// Partial budget: shapes kept, dense parameters copied exactly, fewer values.
backend_test!(partial_budget_shards_a_module, |device| {
    let mlp = Mlp::new(device);
    let bias = tensor_to_vec(mlp.fc1.bias.as_ref().unwrap().val()).unwrap();
    let model = SpectralModel::from_module(&mlp, &weights(), Layout::InOut).unwrap();
    let plan = model
        .plan(
            &Strategy::Unbiased,
            Sampler::ConditionalPoisson,
            Budget::KeepRatio(0.5),
            4,
        )
        .unwrap();
    assert_eq!(plan.layers()[0].design.size(), 4);
    assert_eq!(plan.layers()[1].design.size(), 2);
    let shard = plan.draw(&mut StdRng::seed_from_u64(1)).unwrap();
    let full = 8 * 16 + 16 * 4 + 16 + 4;
    assert_eq!(shard.num_values(), 4 * (16 + 8) + 2 * (4 + 16) + 16 + 4);
    assert!(shard.num_values() < full);
    let client = shard.apply_to(mlp).unwrap();
    assert_eq!(client.fc1.weight.dims(), [8, 16]);
    assert_eq!(tensor_to_vec(client.fc1.bias.unwrap().val()).unwrap(), bias);
    // the module's fc1 weight is A·B in burn's [in, out] layout
    let w = tensor_to_vec(client.fc1.weight.val().transpose()).unwrap();
    let e = rel_err(&w, &shard.layers()[0].shard.reconstruct_host());
    assert!(e <= 1e-6, "{e}");
});

// Factor tensors round trip through a client's training hook.
backend_test!(factor_tensors_round_trip, |device| {
    let layer = SpectralLayer::decompose(tensor(gaussian(12, 10, 6), 12, 10, device)).unwrap();
    let alloc = Strategy::Collective.allocate(layer.sigma(), 4, 3).unwrap();
    let idx = Sampler::Systematic
        .design(alloc.probabilities())
        .unwrap()
        .sample(&mut StdRng::seed_from_u64(2));
    let shard = layer.shard(&idx, &alloc).unwrap();
    let (a, b) = shard.factor_tensors(device).unwrap();
    assert_eq!(a.dims(), [12, 4]);
    assert_eq!(b.dims(), [4, 10]);
    assert_eq!(shard.with_trained_factors(a, b).unwrap(), shard);
    // λσ split evenly: column s of A and row s of B have the same norm √(λσ)
    for (s, &i) in shard.indices().iter().enumerate() {
        let lam = f64::from(shard.multipliers()[s]);
        let expect = (lam * layer.sigma()[i]).sqrt();
        let col: f64 = (0..12)
            .map(|r| f64::from(shard.a()[r * 4 + s]).powi(2))
            .sum();
        let row: f64 = shard.b()[s * 10..(s + 1) * 10]
            .iter()
            .map(|v| f64::from(*v).powi(2))
            .sum();
        assert!((col.sqrt() - expect).abs() < 1e-4 * expect.max(1.0));
        assert!((row.sqrt() - expect).abs() < 1e-4 * expect.max(1.0));
    }
});

// FedAvg of full-budget untrained shards returns W; factor-wise aggregation of
// partial untrained shards returns W exactly (it is a fixed point).
backend_test!(
    aggregation_of_untrained_shards_returns_the_model,
    |device| {
        let mlp = Mlp::new(device);
        let model = SpectralModel::from_module(&mlp, &weights(), Layout::InOut).unwrap();
        let original: Vec<Vec<f32>> = model
            .layers()
            .iter()
            .map(|l| l.layer.reconstruct())
            .collect();

        let full = model
            .plan(
                &Strategy::TopN,
                Sampler::Systematic,
                Budget::KeepRatio(1.0),
                2,
            )
            .unwrap();
        let updates: Vec<UpdateMessage> = (0..3)
            .map(|k| {
                untrained_update(
                    &full.draw(&mut StdRng::seed_from_u64(k)).unwrap(),
                    k,
                    10 + k,
                )
            })
            .collect();
        let avg = fedavg(&model, &updates).unwrap();
        for (m, w) in avg.matrices.iter().zip(&original) {
            assert!(rel_err(&m.values, w) <= 1e-5);
        }
        assert_eq!(avg.dense, model.dense());

        let partial = model
            .plan(
                &Strategy::Unbiased,
                Sampler::ConditionalPoisson,
                Budget::KeepRatio(0.25),
                3,
            )
            .unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let updates: Vec<UpdateMessage> = (0..3)
            .map(|k| untrained_update(&partial.draw(&mut rng).unwrap(), k, 5))
            .collect();
        let fw = factorwise(&model, &updates).unwrap();
        for (m, w) in fw.matrices.iter().zip(&original) {
            let e = rel_err(&m.values, w);
            assert!(e <= 1e-5, "factor-wise fixed point error {e}");
        }
        // the aggregate writes back into the module
        let back = fw.apply_to(mlp).unwrap();
        assert_eq!(back.fc2.weight.dims(), [16, 4]);
    }
);

// FedAvg weights clients by their sample counts (dense deltas: W + ΔW_k).
backend_test!(fedavg_weights_by_samples, |device| {
    let layer = SpectralLayer::decompose(tensor(gaussian(3, 2, 8), 3, 2, device)).unwrap();
    let model = SpectralModel::from_parts(
        vec![NamedLayer {
            path: "w".into(),
            layout: Layout::OutIn,
            layer: layer.clone(),
        }],
        vec![],
    )
    .unwrap();
    let delta = |v: f32, client, samples| UpdateMessage {
        round: 1,
        client_id: client,
        num_samples: samples,
        layers: vec![LayerUpdate::DenseDelta {
            path: "w".into(),
            rows: 3,
            cols: 2,
            delta: vec![v; 6],
        }],
        dense: vec![],
    };
    let avg = fedavg(&model, &[delta(1.0, 0, 1), delta(-1.0, 1, 3)]).unwrap();
    let w = layer.reconstruct();
    for (a, b) in avg.matrices[0].values.iter().zip(&w) {
        assert!((a - (b - 0.5)).abs() < 1e-6, "{a} vs {}", b - 0.5);
    }
});

// FedAvg of many independent Unbiased shards approaches W (unbiasedness at
// the model level): relative error below 3·√(V/T)/‖W‖ for T = 400 clients.
backend_test!(fedavg_of_unbiased_shards_is_unbiased, |device| {
    let layer =
        SpectralLayer::decompose(tensor(decaying(16, 12, 9, device), 16, 12, device)).unwrap();
    let model = SpectralModel::from_parts(
        vec![NamedLayer {
            path: "w".into(),
            layout: Layout::OutIn,
            layer: layer.clone(),
        }],
        vec![],
    )
    .unwrap();
    let plan = model
        .plan(
            &Strategy::Unbiased,
            Sampler::ConditionalPoisson,
            Budget::Rank(3),
            1,
        )
        .unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let clients = 400;
    let updates: Vec<UpdateMessage> = (0..clients)
        .map(|k| untrained_update(&plan.draw(&mut rng).unwrap(), k, 1))
        .collect();
    let avg = fedavg(&model, &updates).unwrap();
    let v = lastmile_federated_sharding::strategy::unbiased_error(
        layer.sigma(),
        plan.layers()[0].allocation.probabilities(),
    )
    .unwrap();
    let bound = 3.0 * (v / clients as f64 / layer.frobenius_sq()).sqrt();
    let e = rel_err(&avg.matrices[0].values, &layer.reconstruct());
    assert!(e <= bound, "error {e} above 3·√(V/T)/‖W‖ = {bound}");
});

// The FedProx penalty's gradient on an autodiff device is μ (w − w_global).
backend_test!(fedprox_penalty_gradient, |device| {
    let ad = device.clone().autodiff();
    let w = [0.5f32, -1.0, 2.0];
    let g = [0.0f32, 1.0, 1.5];
    let wt = Tensor::<1>::from_floats(w, &ad).require_grad();
    let gt = Tensor::<1>::from_floats(g, &ad);
    let penalty = proximal_penalty(wt.clone(), gt, 0.3).unwrap();
    let value = tensor_to_vec(penalty.clone()).unwrap()[0];
    assert!((f64::from(value) - proximal_term(&w, &g, 0.3).unwrap()).abs() < 1e-6);
    let grads = penalty.backward();
    let grad = tensor_to_vec(wt.grad(&grads).unwrap()).unwrap();
    let expected = proximal_gradient(&w, &g, 0.3).unwrap();
    for (a, b) in grad.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
});
