//! Integration tests: shira.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::Tensor;
use lastmile_adapters::shira::{restore_into, weight_gradient};
use lastmile_adapters::{
    AdaptedLinear, Adapter, AdapterError, Shira, ShiraBudget, ShiraConfig, ShiraMask, WeightLayout,
};
use lastmile_core::backend_test;
use lastmile_core::testing::assert_close;

backend_test!(
    masks_have_the_exact_budget_and_pick_what_they_should,
    |device| {
        let ad = device.clone().autodiff();
        let w0 = randn([12, 20], &ad);
        let x = randn([16, 20], &ad);
        let target = randn([16, 12], &ad);
        let grad = weight_gradient(w0.clone(), |w| {
            (x.clone().matmul(w.transpose()) - target.clone())
                .powf_scalar(2.0)
                .sum()
        })
        .unwrap();
        let k = 50;
        let wv = vec2(w0.clone());
        let gv = vec2(grad.clone());
        for mask in ShiraMask::ALL {
            let cfg = ShiraConfig::new(mask, ShiraBudget::Count(k)).with_seed(5);
            let idx = cfg.select(&w0, Some(&grad)).unwrap();
            assert!(idx.windows(2).all(|w| w[0] < w[1]));
            let score: Option<Vec<f32>> = match mask {
                ShiraMask::WeightMagnitude => Some(wv.iter().map(|v| v.abs()).collect()),
                ShiraMask::Gradient => Some(gv.iter().map(|v| v.abs()).collect()),
                ShiraMask::Snip => Some(wv.iter().zip(&gv).map(|(a, b)| (a * b).abs()).collect()),
                _ => None,
            };
            if let Some(score) = score {
                assert_eq!(idx.len(), k);
                // every chosen entry scores at least as high as every other entry
                let min_in = idx.iter().map(|&i| score[i]).fold(f32::INFINITY, f32::min);
                let max_out = (0..score.len())
                    .filter(|i| !idx.contains(i))
                    .map(|i| score[i])
                    .fold(0.0, f32::max);
                assert!(min_in >= max_out, "{mask:?}: {min_in} < {max_out}");
            }
            let shira = cfg.init(&w0, Some(&grad)).unwrap();
            assert_eq!(shira.trainable_params(), idx.len());
            assert_eq!(shira.mask_kind(), Some(mask));
        }
        // Random: exact count, reproducible, seed-dependent.
        let r = |seed| {
            ShiraConfig::new(ShiraMask::Random, ShiraBudget::Count(k))
                .with_seed(seed)
                .select(&w0, None)
                .unwrap()
        };
        assert_eq!(r(1).len(), k);
        assert_eq!(r(1), r(1));
        assert_ne!(r(1), r(2));
        // Struct: row 0, column 0 and the diagonal; never over budget.
        let s = ShiraConfig::new(ShiraMask::Struct, ShiraBudget::Count(60))
            .select(&w0, None)
            .unwrap();
        assert!(s.len() <= 60);
        assert!((0..20).all(|c| s.contains(&c)));
        assert!((0..12).all(|r| s.contains(&(r * 20)) && s.contains(&(r * 20 + r))));
        // PEFT budget r(m+n); gradient masks need a gradient.
        assert_eq!(
            ShiraConfig::new(ShiraMask::Random, ShiraBudget::LoraRank(1))
                .select(&w0, None)
                .unwrap()
                .len(),
            32
        );
        assert_err!(
            ShiraConfig::new(ShiraMask::Snip, ShiraBudget::Count(3)).select(&w0, None),
            AdapterError::InvalidConfig { .. }
        );
        assert_err!(
            ShiraConfig::new(ShiraMask::Random, ShiraBudget::Density(1.5)).select(&w0, None),
            AdapterError::InvalidConfig { .. }
        );
        assert_err!(
            ShiraConfig::new(ShiraMask::Struct, ShiraBudget::Count(3)).select(&w0, None),
            AdapterError::InvalidConfig { .. }
        );
    }
);

backend_test!(sparse_forward_equals_dense_delta, |device| {
    let w0 = randn([9, 13], device);
    let s = ShiraConfig::new(ShiraMask::Random, ShiraBudget::Count(30))
        .with_seed(2)
        .init(&w0, None)
        .unwrap();
    let n = s.nnz();
    let s = Shira::from_parts(
        s.indices().to_vec(),
        Tensor::from_floats(vec1(randn([1, n], device).reshape([n])).as_slice(), device),
        9,
        13,
    )
    .unwrap();
    let dense = vec2(s.delta_weight());
    assert_eq!(dense.iter().filter(|v| **v != 0.0).count(), n);
    let x = randn([5, 13], device);
    let expected = matmul(&vec2(x.clone()), &transpose(&dense, 9, 13), 5, 13, 9);
    assert_close(&vec2(s.forward_delta(x)), &expected, 1e-5, 1e-5);
});

backend_test!(zero_values_reproduce_base_exactly, |device| {
    let base = LinearConfig::new(13, 9).init(device);
    let w0 = base.weight.val().transpose();
    let s = ShiraConfig::new(ShiraMask::WeightMagnitude, ShiraBudget::Density(0.1))
        .init(&w0, None)
        .unwrap();
    let layer = AdaptedLinear::new(base.clone(), s.into()).unwrap();
    let x = randn([4, 13], device);
    assert_eq!(vec2(layer.forward(x.clone())), vec2(base.forward(x)));
});

#[derive(Module, Debug)]
struct Net {
    fc: AdaptedLinear,
    head: Linear,
}

backend_test!(
    training_leaves_every_weight_outside_the_mask_bit_identical,
    |device| {
        let ad = device.clone().autodiff();
        let base = LinearConfig::new(16, 12).init(&ad);
        let w0_inout = vec2(base.weight.val());
        let w0 = base.weight.val().transpose();
        let shira = ShiraConfig::new(ShiraMask::Random, ShiraBudget::Count(19))
            .with_seed(9)
            .init(&w0, None)
            .unwrap();
        let mask = shira.indices().to_vec();
        let mut net = Net {
            fc: AdaptedLinear::new(base, shira.into()).unwrap(),
            head: LinearConfig::new(12, 3).init(&ad).no_grad(),
        };
        assert_eq!(net.fc.trainable_params(), 19);
        // Weight decay would touch every trainable value: it must not reach the base.
        let mut optim = AdamWConfig::new().with_weight_decay(0.1).init();
        let x = randn([32, 16], &ad);
        let y = randn([32, 3], &ad);
        let mut losses = Vec::new();
        for _ in 0..20 {
            let loss = (net.head.forward(net.fc.forward(x.clone())) - y.clone())
                .powf_scalar(2.0)
                .mean();
            losses.push(loss.clone().into_scalar::<f32>());
            let grads = loss.backward();
            assert!(net.fc.base.weight.grad(&grads).is_none());
            let gp = GradientsParams::from_grads(grads, &net);
            net = optim.step(1e-2, net, gp);
        }
        assert!(
            losses[19] < losses[0],
            "training did not reduce the loss: {losses:?}"
        );
        // The frozen base is untouched, bit for bit.
        assert_eq!(vec2(net.fc.base.weight.val()), w0_inout);
        // Deploy: scatter into W0 (out, in) and compare every entry.
        let Adapter::Shira(trained) = &net.fc.adapter else {
            panic!()
        };
        let mut w = vec2(w0.clone());
        let original = w.clone();
        let saved = trained
            .scatter_host(&mut w, WeightLayout::OutIn, 1.0)
            .unwrap();
        let values = trained.values_vec().unwrap();
        let mut changed = 0;
        for i in 0..w.len() {
            match mask.binary_search(&i) {
                Ok(p) => {
                    assert_eq!(w[i], original[i] + values[p]);
                    changed += usize::from(w[i] != original[i]);
                }
                Err(_) => assert_eq!(
                    w[i].to_bits(),
                    original[i].to_bits(),
                    "entry {i} outside the mask changed"
                ),
            }
        }
        assert!(changed > 0, "no masked entry was trained");
        trained
            .restore_host(&mut w, WeightLayout::OutIn, &saved)
            .unwrap();
        assert!(
            w.iter()
                .zip(&original)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }
);

backend_test!(tensor_switch_touches_only_masked_entries, |device| {
    let w0 = randn([10, 14], device);
    for layout in [WeightLayout::OutIn, WeightLayout::InOut] {
        let s = ShiraConfig::new(ShiraMask::Random, ShiraBudget::Count(12))
            .with_seed(4)
            .init(&w0, None)
            .unwrap();
        let s = Shira::from_parts(
            s.indices().to_vec(),
            Tensor::from_floats([0.5; 12], device),
            10,
            14,
        )
        .unwrap();
        let stored = match layout {
            WeightLayout::OutIn => w0.clone(),
            _ => w0.clone().transpose(),
        };
        let flat = stored.clone().reshape([140]).mul_scalar(1.0);
        let before = vec1(flat.clone());
        let pos = s.positions_tensor(layout, device).unwrap();
        let (after, saved) = s.scatter_into(flat, pos.clone(), 2.0).unwrap();
        let after_v = vec1(after.clone());
        let positions: Vec<usize> = s
            .indices()
            .iter()
            .map(|&i| layout.flat(i / 14, i % 14, 10, 14))
            .collect();
        for i in 0..140 {
            if positions.contains(&i) {
                assert_eq!(after_v[i], before[i] + 1.0);
            } else {
                assert_eq!(after_v[i].to_bits(), before[i].to_bits());
            }
        }
        // equals the dense merge
        let dense = vec2(
            stored
                + s.delta_weight()
                    .mul_scalar(2.0)
                    .reshape([10, 14])
                    .pipe(layout),
        );
        assert!(max_abs_diff(&after_v, &dense) < 1e-6);
        let restored = restore_into(after, pos, saved).unwrap();
        assert!(
            vec1(restored)
                .iter()
                .zip(&before)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }
});

trait Pipe {
    fn pipe(self, layout: WeightLayout) -> Tensor<2>;
}

impl Pipe for Tensor<2> {
    fn pipe(self, layout: WeightLayout) -> Tensor<2> {
        match layout {
            WeightLayout::OutIn => self,
            _ => self.transpose(),
        }
    }
}

backend_test!(bad_parts_are_rejected, |device| {
    let v = Tensor::<1>::from_floats([1.0, 2.0], device);
    // Unsorted, repeated, out of range.
    for idx in [vec![3, 1], vec![1, 1], vec![1, 4]] {
        assert_err!(
            Shira::from_parts(idx, v.clone(), 2, 2),
            AdapterError::InvalidConfig { .. }
        );
    }
    assert_err!(
        Shira::from_parts(vec![1], v.clone(), 2, 2),
        AdapterError::Shape { .. }
    );
    assert_err!(
        Shira::from_parts(
            vec![0, 1],
            Tensor::from_floats([1.0, f32::NAN], device),
            2,
            2
        ),
        AdapterError::Core(lastmile_core::CoreError::NonFinite { .. })
    );
    assert_err!(
        Shira::from_coo(&[0, 2], &[0, 0], &[1.0, 1.0], 2, 2, device),
        AdapterError::InvalidConfig { .. }
    );
    let s = Shira::from_coo(&[1, 0], &[0, 1], &[1.0, 2.0], 2, 2, device).unwrap();
    assert_eq!(s.indices(), &[1, 2]);
    assert_eq!(s.values_vec().unwrap(), vec![2.0, 1.0]);
    let mut short = vec![0.0; 3];
    assert_err!(
        s.scatter_host(&mut short, WeightLayout::OutIn, 1.0),
        AdapterError::Shape { .. }
    );
    if !device.is_autodiff() {
        assert_err!(
            weight_gradient(Tensor::<2>::zeros([2, 2], device), |w| w.sum()),
            AdapterError::Unsupported { .. }
        );
    }
});
