//! Integration tests: one forward over a batch whose rows use different adapters.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use burn::tensor::Tensor;
use lastmile_adapters::mixed_batch::forward_delta_mixed;
use lastmile_adapters::{
    Adapter, AdapterError, FouraConfig, Lora, ShiraBudget, ShiraConfig, ShiraMask,
};
use lastmile_core::backend_test;

const OUT: usize = 6;
const IN: usize = 10;

fn adapters(device: &burn::tensor::Device) -> Vec<Adapter> {
    let lora = |r, scale: f32| {
        Adapter::Lora(
            Lora::from_factors(
                randn([r, IN], device),
                randn([OUT, r], device).mul_scalar(scale),
                2.0 * r as f64,
                false,
            )
            .unwrap(),
        )
    };
    let w0 = randn([OUT, IN], device);
    let mut shira = ShiraConfig::new(ShiraMask::Random, ShiraBudget::Count(12))
        .with_seed(5)
        .init(&w0, None)
        .unwrap();
    shira.values = shira.values.map(|v| v.add_scalar(0.5));
    let mut foura = FouraConfig::new(3, 6.0).init(IN, OUT, device).unwrap();
    foura.b = foura.b.map(|_| randn([OUT, 3], device));
    vec![
        lora(2, 0.5),
        lora(4, 1.0),
        Adapter::Shira(shira),
        Adapter::Foura(foura),
    ]
}

backend_test!(mixed_batch_equals_per_row_forwards, |device| {
    let adapters = adapters(device);
    let refs: Vec<&Adapter> = adapters.iter().collect();
    let n = 11;
    let x = randn([n, IN], device);
    // every adapter, some rows on the base model alone, rows out of order
    let rows = [
        Some(1),
        None,
        Some(0),
        Some(3),
        Some(1),
        Some(2),
        None,
        Some(0),
        Some(3),
        Some(2),
        Some(1),
    ];
    let mixed = vec2(forward_delta_mixed(&refs, x.clone(), &rows).unwrap());
    for (i, choice) in rows.iter().enumerate() {
        let xi = x.clone().slice([i..i + 1, 0..IN]);
        let want = match choice {
            Some(k) => vec2(adapters[*k].forward_delta(xi)),
            None => vec![0.0; OUT],
        };
        let got = &mixed[i * OUT..(i + 1) * OUT];
        assert!(max_abs_diff(got, &want) < 1e-5, "row {i} ({choice:?})");
    }
});

backend_test!(one_adapter_for_all_rows_is_its_own_forward, |device| {
    let adapters = adapters(device);
    let x = randn([7, IN], device);
    let mixed = forward_delta_mixed(&[&adapters[1]], x.clone(), &[Some(0); 7]).unwrap();
    assert!(max_abs_diff(&vec2(mixed), &vec2(adapters[1].forward_delta(x))) < 1e-5);
});

backend_test!(bad_mixed_batches_are_typed_errors, |device| {
    let adapters = adapters(device);
    let refs: Vec<&Adapter> = adapters.iter().collect();
    let x = randn([3, IN], device);
    let field = |e: AdapterError| match e {
        AdapterError::InvalidConfig { field, .. } => field,
        other => panic!("expected InvalidConfig, got {other}"),
    };
    assert_eq!(
        field(forward_delta_mixed(&[], x.clone(), &[None; 3]).unwrap_err()),
        "adapters"
    );
    assert_eq!(
        field(forward_delta_mixed(&refs, x.clone(), &[None; 2]).unwrap_err()),
        "rows"
    );
    assert_eq!(
        field(forward_delta_mixed(&refs, x.clone(), &[Some(4), None, None]).unwrap_err()),
        "rows"
    );
    let other = Lora::from_factors(
        randn([2, IN], device),
        randn([OUT + 1, 2], device),
        2.0,
        false,
    )
    .unwrap()
    .into();
    assert!(matches!(
        forward_delta_mixed(&[&adapters[0], &other], x.clone(), &[None; 3]),
        Err(AdapterError::Shape { .. })
    ));
    let wide = Tensor::<2>::zeros([3, IN + 1], device);
    assert!(matches!(
        forward_delta_mixed(&refs, wide, &[None; 3]),
        Err(AdapterError::Shape { .. })
    ));
});
