//! The in-process federated simulation on a tiny synthetic problem:
//! determinism, exact byte accounting, learning, and typed config errors.
#![allow(clippy::unwrap_used)]

use crate::common::normal;
use burn::tensor::Device;
use lastmile_core::CoreError;
use lastmile_federated_sharding::simulation::{
    Aggregation, ClientData, Method, ShardingConfig, Simulation, SimulationConfig,
    SimulationReport, mixed_keep_ratios,
};
use lastmile_federated_sharding::{Sampler, ShardingError, Strategy};
use rand::{SeedableRng, rngs::StdRng};

const SIZES: [usize; 3] = [4, 8, 3];

fn device() -> Device {
    lastmile_core::default_device().unwrap()
}

/// `n` samples of 3 well-separated classes in 4-d: class `c` is centred at
/// `3·e_c`, noise N(0, 0.5²). `skew` picks the class of row `i` as
/// `(i + skew) % 3` for the first half and `skew` for the rest (label skew).
fn toy(n: usize, skew: usize, seed: u64) -> ClientData {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut features = Vec::with_capacity(n * 4);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = if i < n / 2 { (i + skew) % 3 } else { skew % 3 };
        for j in 0..4 {
            let centre = if j == c { 3.0 } else { 0.0 };
            features.push((centre + 0.5 * normal(&mut rng)) as f32);
        }
        labels.push(c);
    }
    ClientData { features, labels }
}

fn clients() -> Vec<ClientData> {
    vec![toy(30, 0, 1), toy(24, 1, 2), toy(36, 2, 3)]
}

fn test_set() -> ClientData {
    let mut t = toy(90, 0, 99);
    // balanced: class i % 3
    let mut rng = StdRng::seed_from_u64(100);
    for (i, label) in t.labels.iter_mut().enumerate() {
        *label = i % 3;
        for j in 0..4 {
            let centre = if j == i % 3 { 3.0 } else { 0.0 };
            t.features[i * 4 + j] = (centre + 0.5 * normal(&mut rng)) as f32;
        }
    }
    t
}

fn sharded(strategy: Strategy, ratios: Vec<f64>) -> Method {
    Method::Sharded(ShardingConfig::new(
        strategy,
        Sampler::ConditionalPoisson,
        ratios,
    ))
}

fn config(method: Method, rounds: usize, k: usize) -> SimulationConfig {
    let mut c = SimulationConfig::new(SIZES.to_vec());
    c.rounds = rounds;
    c.clients_per_round = k;
    c.local_epochs = 2;
    c.batch_size = 8;
    c.learning_rate = 0.1;
    c.method = method;
    c.seed = 7;
    c
}

fn run(config: SimulationConfig) -> SimulationReport {
    Simulation::new(config, clients(), Some(test_set()), &device())
        .unwrap()
        .run(|_| {})
        .unwrap()
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let mut c = config(sharded(Strategy::Collective, vec![0.25, 0.5, 0.5]), 2, 2);
    c.proximal_mu = 0.01;
    let a = run(c.clone());
    let b = run(c.clone());
    assert_eq!(a, b, "two runs with the same seed differ");
    assert_eq!(a.rounds.len(), 2);
    c.seed = 8;
    let other = run(c);
    assert_ne!(a.final_params, other.final_params);

    let full = config(Method::Full, 2, 3);
    assert_eq!(run(full.clone()), run(full));
}

#[test]
fn progress_closure_sees_every_round() {
    let mut seen = Vec::new();
    let report = Simulation::new(config(Method::Full, 3, 2), clients(), None, &device())
        .unwrap()
        .run(|r| seen.push(r.clone()))
        .unwrap();
    assert_eq!(seen, report.rounds);
    assert_eq!(seen.iter().map(|r| r.round).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(
        seen.iter()
            .all(|r| r.clients.len() == 2 && r.test_accuracy.is_none())
    );
    assert_eq!(report.initial_accuracy, None);
}

// ------------------------------------------------------- byte accounting

fn name_len(path: &str) -> usize {
    2 + path.len()
}

fn dense_len(path: &str, shape: &[usize]) -> usize {
    name_len(path) + 1 + 4 * shape.len() + 4 * shape.iter().product::<usize>()
}

/// Size of a shard (`update = false`) or update message for the toy MLP
/// from the README's wire-format tables, independently of the crate.
fn message_len(ratio: Option<f64>, update: bool) -> usize {
    let fixed = if update { 24 } else { 22 };
    let weights = [("layers.0.weight", 8, 4), ("layers.1.weight", 3, 8)];
    let mut payload = fixed + 4 + 4;
    match ratio {
        None => {
            payload += dense_len("layers.0.weight", &[4, 8])
                + dense_len("layers.0.bias", &[8])
                + dense_len("layers.1.weight", &[8, 3])
                + dense_len("layers.1.bias", &[3]);
        }
        Some(r) => {
            for (path, rows, cols) in weights {
                let rank = usize::min(rows, cols);
                let n = ((r * rank as f64).round() as usize).max(1);
                payload += name_len(path) + 1 + 8 + 4 + 8 * n + 4 * n * (rows + cols);
            }
            payload += dense_len("layers.0.bias", &[8]) + dense_len("layers.1.bias", &[3]);
        }
    }
    16 + payload + 8
}

fn check_bytes(method: Method, ratios: Option<Vec<f64>>) {
    let report = run(config(method, 3, 2));
    let (mut cum_down, mut cum_up) = (0u64, 0u64);
    for r in &report.rounds {
        let ratio = |k: usize| ratios.as_ref().map(|v| v[k]);
        let down: usize = r
            .clients
            .iter()
            .map(|&k| message_len(ratio(k), false))
            .sum();
        let up: usize = r.clients.iter().map(|&k| message_len(ratio(k), true)).sum();
        assert_eq!(r.bytes_down, down as u64, "round {}", r.round);
        assert_eq!(r.bytes_up, up as u64, "round {}", r.round);
        cum_down += down as u64;
        cum_up += up as u64;
        assert_eq!(r.cumulative_bytes_down, cum_down);
        assert_eq!(r.cumulative_bytes_up, cum_up);
        assert_eq!(r.cumulative_bytes(), cum_down + cum_up);
    }
}

#[test]
fn bytes_are_the_encoded_message_lengths() {
    check_bytes(Method::Full, None);
    let mixed = vec![0.25, 0.5, 1.0];
    for s in Strategy::ALL {
        check_bytes(sharded(s, mixed.clone()), Some(mixed.clone()));
    }
    let mut factorwise =
        ShardingConfig::new(Strategy::Unbiased, Sampler::Systematic, mixed.clone());
    factorwise.aggregation = Aggregation::FactorWise;
    check_bytes(Method::Sharded(factorwise), Some(mixed));
}

#[test]
fn dense_output_layer_is_sent_dense() {
    let mut s = ShardingConfig::new(Strategy::TopN, Sampler::Systematic, vec![0.5; 3]);
    s.dense_output_layer = true;
    let report = run(config(Method::Sharded(s), 1, 1));
    // layer 0 as factors (n = 2 of rank 4), layer 1 dense [8, 3]
    let n = 2;
    let payload = 22
        + 4
        + name_len("layers.0.weight")
        + 1
        + 8
        + 4
        + 8 * n
        + 4 * n * (8 + 4)
        + 4
        + dense_len("layers.0.bias", &[8])
        + dense_len("layers.1.weight", &[8, 3])
        + dense_len("layers.1.bias", &[3]);
    assert_eq!(report.rounds[0].bytes_down, (16 + payload + 8) as u64);
    assert_eq!(report.rounds[0].bytes_up, (16 + payload + 2 + 8) as u64);
}

// ------------------------------------------------------------- learning

#[test]
fn full_fedavg_learns_a_separable_problem() {
    let report = run(config(Method::Full, 8, 3));
    let acc = report.final_accuracy().unwrap();
    assert!(acc > 0.9, "final accuracy {acc} (chance 1/3)");
    let first = report.rounds[0].train_loss;
    let last = report.rounds.last().unwrap().train_loss;
    assert!(last < first, "train loss {first} → {last}");
}

#[test]
fn sharded_fedavg_learns_too() {
    for s in [Strategy::TopN, Strategy::Unbiased, Strategy::Collective] {
        let report = run(config(sharded(s, vec![0.5; 3]), 8, 3));
        let acc = report.final_accuracy().unwrap();
        assert!(acc > 0.6, "{s}: final accuracy {acc} (chance 1/3)");
    }
}

// ------------------------------------------------------------ bad config

fn error_of(config: SimulationConfig, clients: Vec<ClientData>) -> ShardingError {
    Simulation::new(config, clients, Some(test_set()), &device()).unwrap_err()
}

fn assert_range(e: ShardingError, param: &str) {
    assert!(
        matches!(&e, ShardingError::Core(CoreError::OutOfRange { name, .. }) if name == param),
        "expected OutOfRange `{param}`, got {e:?}"
    );
}

#[test]
fn clients_per_round_outside_one_to_n() {
    for k in [0, 4, 100] {
        assert_range(
            error_of(config(Method::Full, 1, k), clients()),
            "clients_per_round",
        );
    }
}

#[test]
fn keep_ratio_outside_unit_interval() {
    for bad in [0.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
        let method = sharded(Strategy::Unbiased, vec![0.5, bad, 0.5]);
        assert_range(error_of(config(method, 1, 1), clients()), "keep_ratios[1]");
    }
    let method = sharded(Strategy::Unbiased, vec![0.5, 0.5]);
    let e = error_of(config(method, 1, 1), clients());
    assert!(
        matches!(&e, ShardingError::Core(CoreError::LengthMismatch { what, expected: 3, found: 2 }) if what == "keep_ratios"),
        "{e:?}"
    );
}

#[test]
fn empty_or_malformed_client() {
    let mut cs = clients();
    cs[1] = ClientData {
        features: vec![],
        labels: vec![],
    };
    let e = error_of(config(Method::Full, 1, 1), cs);
    assert!(
        matches!(&e, ShardingError::Core(CoreError::Empty { what, .. }) if what == "client 1 data"),
        "{e:?}"
    );

    let mut cs = clients();
    cs[2].features.pop();
    let e = error_of(config(Method::Full, 1, 1), cs);
    assert!(
        matches!(&e, ShardingError::Core(CoreError::LengthMismatch { what, .. }) if what == "client 2 data features"),
        "{e:?}"
    );

    let mut cs = clients();
    cs[0].labels[3] = 3;
    let e = error_of(config(Method::Full, 1, 1), cs);
    assert!(
        matches!(
            &e,
            ShardingError::Core(CoreError::IndexOutOfRange {
                index: 3,
                bound: 3,
                ..
            })
        ),
        "{e:?}"
    );

    let mut cs = clients();
    cs[0].features[5] = f32::NAN;
    let e = error_of(config(Method::Full, 1, 1), cs);
    assert!(
        matches!(
            &e,
            ShardingError::Core(CoreError::NonFinite { index: 5, .. })
        ),
        "{e:?}"
    );

    let e = error_of(config(Method::Full, 1, 1), Vec::new());
    assert!(
        matches!(&e, ShardingError::Core(CoreError::Empty { what, .. }) if what == "clients"),
        "{e:?}"
    );
}

#[test]
fn bad_training_settings() {
    type Edit = fn(&mut SimulationConfig);
    let cases: [(&str, Edit); 6] = [
        ("rounds", |c| c.rounds = 0),
        ("local_epochs", |c| c.local_epochs = 0),
        ("batch_size", |c| c.batch_size = 0),
        ("learning_rate", |c| c.learning_rate = 0.0),
        ("proximal_mu", |c| c.proximal_mu = -1.0),
        ("layer_sizes[1]", |c| c.layer_sizes[1] = 0),
    ];
    for (param, edit) in cases {
        let mut c = config(Method::Full, 1, 1);
        edit(&mut c);
        assert_range(error_of(c, clients()), param);
    }
    let mut c = config(Method::Full, 1, 1);
    c.layer_sizes = vec![4];
    assert!(matches!(
        error_of(c, clients()),
        ShardingError::Core(CoreError::Empty { min: 2, .. })
    ));
}

#[test]
fn mixed_ratios_are_fixed_per_client_and_checked() {
    let r = mixed_keep_ratios(20, &[(0.6, 0.2), (0.4, 0.4)], 3).unwrap();
    assert_eq!(r.len(), 20);
    assert_eq!(r.iter().filter(|&&x| x == 0.2).count(), 12);
    assert_eq!(
        r,
        mixed_keep_ratios(20, &[(0.6, 0.2), (0.4, 0.4)], 3).unwrap()
    );
    assert_range(
        mixed_keep_ratios(20, &[(0.6, 0.2), (0.5, 0.4)], 0).unwrap_err(),
        "shares",
    );
    assert_range(
        mixed_keep_ratios(20, &[(1.0, 1.2)], 0).unwrap_err(),
        "keep_ratio",
    );
    assert_range(
        mixed_keep_ratios(0, &[(1.0, 0.2)], 0).unwrap_err(),
        "n_clients",
    );
    assert!(matches!(
        mixed_keep_ratios(5, &[], 0).unwrap_err(),
        ShardingError::Core(CoreError::Empty { .. })
    ));
}

// ------------------------------------------- server and client, driven by hand

use lastmile_federated_sharding::message::{ShardMessage, UpdateMessage};
use lastmile_federated_sharding::simulation::{Client, Server, client_seed};

/// What a deployment does: the server and clients exchange encoded
/// messages, and updates arrive in reverse order. The global model must end
/// bit-identical to the in-process run's.
#[test]
fn server_and_clients_driven_by_hand_reproduce_the_simulation() {
    let cfg = config(sharded(Strategy::Collective, vec![0.5, 0.25, 0.5]), 3, 2);
    let data = clients();
    let expected = run(cfg.clone());
    let mut server = Server::new(cfg.clone(), data.len(), &device()).unwrap();
    let client = Client::new(cfg.clone(), &device()).unwrap();
    for round in 1..=cfg.rounds {
        let plan = server.begin_round().unwrap();
        assert_eq!(plan.round, round);
        assert_eq!(plan.clients, expected.rounds[round - 1].clients);
        let mut wire_up = Vec::new();
        for (&k, down) in plan.clients.iter().zip(&plan.messages) {
            let received = ShardMessage::decode(&down.encode().unwrap()).unwrap();
            let local = client
                .train(&received, &data[k], client_seed(cfg.seed, round, k))
                .unwrap();
            wire_up.push(local.message.encode().unwrap());
        }
        wire_up.reverse();
        let updates = wire_up
            .iter()
            .map(|b| UpdateMessage::decode(b).unwrap())
            .collect();
        server.finish_round(updates).unwrap();
        let acc = server.evaluate(&test_set()).unwrap();
        assert_eq!(Some(acc), expected.rounds[round - 1].test_accuracy);
    }
    assert_eq!(server.params().unwrap(), expected.final_params);
}

fn one_round(server: &mut Server, cfg: &SimulationConfig) -> Vec<UpdateMessage> {
    let plan = server.begin_round().unwrap();
    let client = Client::new(cfg.clone(), &device()).unwrap();
    plan.clients
        .iter()
        .zip(&plan.messages)
        .map(|(&k, m)| client.train(m, &clients()[k], 0).unwrap().message)
        .collect()
}

fn assert_mismatch(e: ShardingError, what: &str) {
    match e {
        ShardingError::Mismatch { what: w, .. } => assert!(w.contains(what), "{w}"),
        other => panic!("expected a Mismatch about {what}, got {other}"),
    }
}

#[test]
fn server_rejects_out_of_protocol_updates() {
    let cfg = config(sharded(Strategy::Unbiased, vec![0.5; 3]), 2, 2);
    let mut server = Server::new(cfg.clone(), 3, &device()).unwrap();
    assert_mismatch(server.finish_round(vec![]).unwrap_err(), "server state");
    let updates = one_round(&mut server, &cfg);
    assert_mismatch(server.begin_round().unwrap_err(), "server state");
    // a missing client
    assert_mismatch(
        server.finish_round(updates[..1].to_vec()).unwrap_err(),
        "clients that sent",
    );
    // a repeated client
    let twice = vec![updates[0].clone(), updates[0].clone()];
    assert_mismatch(server.finish_round(twice).unwrap_err(), "clients that sent");
    // an update of another round
    let mut stale = updates.clone();
    stale[1].round = 7;
    assert_mismatch(server.finish_round(stale).unwrap_err(), "round of client");
    // the round is still open after the failures and then closes
    server.finish_round(updates).unwrap();
    assert_eq!(server.rounds_done(), 1);
}

#[test]
fn client_rejects_a_sub_model_of_another_architecture() {
    let cfg = config(sharded(Strategy::TopN, vec![0.5; 3]), 1, 1);
    let mut server = Server::new(cfg.clone(), 3, &device()).unwrap();
    let plan = server.begin_round().unwrap();
    let mut other = cfg.clone();
    other.layer_sizes = vec![4, 6, 3];
    let client = Client::new(other, &device()).unwrap();
    let e = client
        .train(&plan.messages[0], &clients()[0], 0)
        .unwrap_err();
    assert_mismatch(e, "received factors of layers.0.weight");
    // full FedAvg sends dense weights: a wrong width is a shape error
    let full = config(Method::Full, 1, 1);
    let mut server = Server::new(full.clone(), 3, &device()).unwrap();
    let plan = server.begin_round().unwrap();
    let mut other = full;
    other.layer_sizes = vec![4, 6, 3];
    let e = Client::new(other, &device())
        .unwrap()
        .train(&plan.messages[0], &clients()[0], 0)
        .unwrap_err();
    assert!(
        matches!(e, ShardingError::Core(CoreError::ShapeMismatch { .. })),
        "{e}"
    );
}
