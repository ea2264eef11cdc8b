#![allow(clippy::unwrap_used)]
//! Distillation minimises the forward KL to the teacher: zero for a copy of
//! the teacher, falling for a fresh student, and raising the speculative
//! acceptance probability `1 − TV(p, q)` measured by a naive host loop.

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::lm::LmError;
use lastmile_models::{ModelError, TrainConfig, Transformer, TransformerConfig, distill};

fn config(d_model: usize) -> TransformerConfig {
    TransformerConfig {
        vocab: 256,
        d_model,
        n_layers: 1,
        n_heads: 2,
        d_ff: 2 * d_model,
        max_len: 16,
    }
}

/// Text with structure a tiny model can learn in a few steps.
fn text() -> Vec<u8> {
    b"the cat sat on the mat; the dog sat on the log. ".repeat(8)
}

/// Mean over the positions of `seq` of `1 − TV(p_teacher, q_student)`, on the host.
fn acceptance(teacher: &Transformer, student: &Transformer, seq: &[u8], device: &Device) -> f64 {
    let ids: Vec<i64> = seq.iter().map(|b| i64::from(*b)).collect();
    let probs = |m: &Transformer| {
        let x = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, seq.len()]), device);
        tensor_to_vec(softmax(m.forward(x).unwrap(), 2)).unwrap()
    };
    let (p, q) = (probs(teacher), probs(student));
    let mut total = 0.0;
    for pos in 0..seq.len() {
        let row = pos * 256..(pos + 1) * 256;
        let tv: f64 = p[row.clone()]
            .iter()
            .zip(&q[row])
            .map(|(a, b)| f64::from((a - b).abs()))
            .sum::<f64>()
            / 2.0;
        total += 1.0 - tv;
    }
    total / seq.len() as f64
}

backend_test!(distilling_a_copy_of_the_teacher_reports_zero_kl, |device| {
    device.seed(3);
    let copy = config(16).init(&device.clone().autodiff()).unwrap();
    // The same weights off the autodiff device.
    let teacher = copy.valid();
    let mut kl = Vec::new();
    let mut cfg = TrainConfig::new(1, 4, 16);
    cfg.lr = 1e-9;
    distill(copy, &teacher, &text(), &cfg, |_, l| kl.push(l)).unwrap();
    // Cross-entropy to the teacher would report the teacher's entropy (≈ ln 256 here).
    assert!(kl[0].abs() < 1e-4, "KL of a copy = {}", kl[0]);
});

backend_test!(
    distillation_raises_acceptance_towards_the_teacher,
    |device| {
        device.seed(5);
        // A peaked teacher: trained briefly on the text first.
        let ad = device.clone().autodiff();
        let teacher = lastmile_models::train(
            config(32).init(&ad).unwrap(),
            &text(),
            &TrainConfig::new(40, 4, 16),
            |_, _| {},
        )
        .unwrap();
        let before = config(16).init(device).unwrap();
        let seq = &text()[3..19];
        let acc_before = acceptance(&teacher, &before, seq, device);
        let mut kl = Vec::new();
        let trained = distill(
            config(16).init(&ad).unwrap(),
            &teacher,
            &text(),
            &TrainConfig::new(60, 4, 16),
            |_, l| kl.push(l),
        )
        .unwrap();
        let acc_after = acceptance(&teacher, &trained, seq, device);
        let head: f32 = kl[..5].iter().sum::<f32>() / 5.0;
        let tail: f32 = kl[kl.len() - 5..].iter().sum::<f32>() / 5.0;
        assert!(tail < 0.5 * head, "KL {head} -> {tail}");
        assert!(
            acc_after > acc_before + 0.2,
            "acceptance {acc_before} -> {acc_after}"
        );
    }
);

backend_test!(distill_rejects_bad_input, |device| {
    let teacher = config(16).init(device).unwrap();
    let ad = device.clone().autodiff();
    let student = TransformerConfig {
        vocab: 300,
        ..config(16)
    }
    .init(&ad)
    .unwrap();
    let cfg = TrainConfig::new(2, 2, 8);
    assert!(matches!(
        distill(student, &teacher, &text(), &cfg, |_, _| {}),
        Err(ModelError::Config(_))
    ));
    let student = config(16).init(&ad).unwrap();
    assert!(matches!(
        distill(student, &teacher, b"too short", &cfg, |_, _| {}),
        Err(ModelError::Data(_))
    ));
    // Parameters outside autodiff: a typed error, not backward's panic.
    let plain = config(16).init(device).unwrap();
    assert!(matches!(
        distill(plain, &teacher, &text(), &cfg, |_, _| {}),
        Err(ModelError::Config(_))
    ));
    let plain = config(16).init(device).unwrap();
    assert!(matches!(
        lastmile_models::train(plain, &text(), &cfg, |_, _| {}),
        Err(ModelError::Config(_))
    ));
    let student = config(16).init(&ad).unwrap();
    let long = TrainConfig::new(2, 2, 64);
    assert!(matches!(
        distill(student, &teacher, &text(), &long, |_, _| {}),
        Err(ModelError::Lm(LmError::ContextOverflow { .. }))
    ));
});
