//! Integration tests: PEFT-layout save/load, a hand-made PEFT fixture, hostile files.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::common::*;
use burn::tensor::Tensor;
use lastmile_adapters::peft::{self, LayerShapes};
use lastmile_adapters::{
    Adapter, AdapterError, FouraConfig, GateMode, LoraConfig, Shira, ShiraBudget, ShiraConfig,
    ShiraMask, SpectralTransform,
};
use lastmile_core::backend_test;
use lastmile_core::tensor_file::TensorFile;

fn tmp(name: &str) -> PathBuf {
    // Backend variants of one test run in parallel threads: keep their directories apart.
    let thread = format!("{:?}", std::thread::current().id())
        .replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let d = std::env::temp_dir().join(format!(
        "lastmile_adapters_{name}_{}_{thread}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft_lora_tiny")
}

/// Writes safetensors bytes by hand (independently of our writer): 8-byte
/// little-endian header length, JSON header padded with spaces, raw f32 data.
fn hand_made_safetensors() -> Vec<u8> {
    let a: [f32; 3] = [1.0, 2.0, 3.0]; // lora_A.weight [r=1, in=3]
    let b: [f32; 2] = [0.5, -1.0]; // lora_B.weight [out=2, r=1]
    let mut header = String::from(
        "{\"__metadata__\":{\"format\":\"pt\"},\
         \"base_model.model.fc.lora_A.weight\":{\"dtype\":\"F32\",\"shape\":[1,3],\"data_offsets\":[0,12]},\
         \"base_model.model.fc.lora_B.weight\":{\"dtype\":\"F32\",\"shape\":[2,1],\"data_offsets\":[12,20]}}",
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for v in a.iter().chain(&b) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

const HAND_MADE_CONFIG: &str = r#"{
  "peft_type": "LORA",
  "task_type": null,
  "base_model_name_or_path": null,
  "r": 1,
  "lora_alpha": 2,
  "lora_dropout": 0.0,
  "target_modules": ["fc"],
  "bias": "none",
  "use_rslora": false,
  "fan_in_fan_out": false,
  "init_lora_weights": true,
  "rank_pattern": {},
  "alpha_pattern": {},
  "inference_mode": true
}
"#;

#[test]
fn committed_fixture_is_the_hand_made_one() {
    // Regenerate with: LASTMILE_WRITE_FIXTURES=1 cargo test -p lastmile-adapters --test it peft::
    let dir = fixture_dir();
    if std::env::var("LASTMILE_WRITE_FIXTURES").is_ok() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(peft::WEIGHTS_FILE), hand_made_safetensors()).unwrap();
        std::fs::write(dir.join(peft::CONFIG_FILE), HAND_MADE_CONFIG).unwrap();
    }
    assert_eq!(
        std::fs::read(dir.join(peft::WEIGHTS_FILE)).unwrap(),
        hand_made_safetensors()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(peft::CONFIG_FILE)).unwrap(),
        HAND_MADE_CONFIG
    );
}

backend_test!(peft_fixture_loads_with_the_hand_computed_delta, |device| {
    let layers = peft::load(fixture_dir(), device, &LayerShapes::new()).unwrap();
    let Adapter::Lora(l) = &layers["fc"] else {
        panic!("expected LoRA")
    };
    assert_eq!((l.rank(), l.d_out(), l.d_in()), (1, 2, 3));
    assert_eq!(l.scaling(), 2.0);
    // ΔW = (α/r)·B·A = 2 · [0.5, −1]ᵀ · [1, 2, 3]
    assert_eq!(
        vec2(l.delta_weight()),
        vec![1.0, 2.0, 3.0, -2.0, -4.0, -6.0]
    );
    let x = Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], device);
    assert_eq!(vec2(l.forward_delta(x)), vec![-2.0, 4.0]);
});

fn outputs(layers: &BTreeMap<String, Adapter>, x: &Tensor<2>) -> Vec<Vec<f32>> {
    layers
        .values()
        .map(|a| vec2(a.forward_delta(x.clone())))
        .collect()
}

backend_test!(save_load_round_trip_gives_identical_outputs, |device| {
    let w1 = randn([8, 12], device);
    let w2 = randn([8, 12], device);
    let x = randn([3, 12], device);
    let lora = |d| {
        let mut l = LoraConfig::new(3, 6.0)
            .with_rslora(true)
            .init(12, 8, device)
            .unwrap();
        l.b = l.b.map(|_| randn([8, 3], device).mul_scalar(d));
        Adapter::Lora(l)
    };
    let shira = |w: &Tensor<2>| {
        let s = ShiraConfig::new(ShiraMask::WeightMagnitude, ShiraBudget::Count(10))
            .init(w, None)
            .unwrap();
        let vals = Tensor::<1>::from_floats(
            [0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8, 0.9, -1.0],
            device,
        );
        Adapter::Shira(
            Shira::from_parts(s.indices().to_vec(), vals, 8, 12)
                .unwrap()
                .with_mask_kind(ShiraMask::WeightMagnitude),
        )
    };
    let foura = |gate| {
        let cfg = FouraConfig::new(2, 4.0)
            .with_transform(SpectralTransform::Rfft)
            .with_gate(gate);
        let mut f = cfg.init(12, 8, device).unwrap();
        f.b = f.b.map(|_| randn([8, 2], device));
        Adapter::Foura(f)
    };
    let cases: Vec<BTreeMap<String, Adapter>> = vec![
        BTreeMap::from([
            ("layers.0.q".to_string(), lora(0.5)),
            ("layers.0.v".to_string(), lora(1.0)),
        ]),
        BTreeMap::from([
            ("fc1".to_string(), shira(&w1)),
            ("fc2".to_string(), shira(&w2)),
        ]),
        BTreeMap::from([("fc1".to_string(), foura(GateMode::Adaptive))]),
        BTreeMap::from([("fc1".to_string(), foura(GateMode::Off))]),
    ];
    for (i, layers) in cases.iter().enumerate() {
        let dir = tmp(&format!("rt{i}"));
        peft::save(&dir, layers).unwrap();
        let back = peft::load(&dir, device, &LayerShapes::new()).unwrap();
        assert_eq!(
            back.keys().collect::<Vec<_>>(),
            layers.keys().collect::<Vec<_>>()
        );
        assert_eq!(outputs(&back, &x), outputs(layers, &x), "case {i}");
        let _ = std::fs::remove_dir_all(dir);
    }
    // The config is PEFT's.
    let (_, cfg) = peft::to_peft(&cases[0]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(v["peft_type"], "LORA");
    assert_eq!(v["r"], 3);
    assert_eq!(v["use_rslora"], true);
    let (file, cfg) = peft::to_peft(&cases[1]).unwrap();
    assert!(cfg.contains("\"SHIRA\"") && cfg.contains("weight_magnitude"));
    assert_eq!(
        file.get("base_model.model.fc1.shira_indices")
            .unwrap()
            .shape,
        vec![2, 10]
    );
});

fn lora_file(device: &burn::tensor::Device) -> (TensorFile, String) {
    let l = LoraConfig::new(2, 4.0).init(5, 4, device).unwrap();
    peft::to_peft(&BTreeMap::from([("fc".to_string(), Adapter::Lora(l))])).unwrap()
}

fn invalid(r: Result<BTreeMap<String, Adapter>, AdapterError>) -> String {
    match r {
        Err(AdapterError::InvalidFile { reason, .. }) => reason,
        Err(e) => panic!("expected InvalidFile, got {e}"),
        Ok(_) => panic!("hostile input was accepted"),
    }
}

backend_test!(hostile_or_mismatched_inputs_are_typed_errors, |device| {
    let none = LayerShapes::new();
    let (file, cfg) = lora_file(device);
    assert!(peft::from_peft(&file, &cfg, device, &none).is_ok());
    // Config problems.
    for bad in [
        "not json",
        "[1, 2]",
        r#"{"peft_type": "IA3", "r": 2}"#,
        r#"{"peft_type": "LORA", "r": 0, "lora_alpha": 4}"#,
        r#"{"peft_type": "LORA", "r": 2.5, "lora_alpha": 4}"#,
        r#"{"peft_type": "LORA", "r": 99999999999, "lora_alpha": 4}"#,
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": -1}"#,
        r#"{"peft_type": "LORA", "r": 2}"#,
        r#"{"peft_type": "LORA", "r": 3, "lora_alpha": 4}"#,
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["other"]}"#,
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_rslora": "yes"}"#,
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "rank_pattern": {"fc": 0}}"#,
    ] {
        invalid(peft::from_peft(&file, bad, device, &none));
    }
    // Tensor problems.
    let mut missing_b = TensorFile::new();
    missing_b
        .insert_float("base_model.model.fc.lora_A.weight", randn([2, 5], device))
        .unwrap();
    assert!(invalid(peft::from_peft(&missing_b, &cfg, device, &none)).contains("lora_B"));
    let mut wrong_rank = missing_b.clone();
    wrong_rank
        .insert_float("base_model.model.fc.lora_B.weight", randn([4, 3], device))
        .unwrap();
    invalid(peft::from_peft(&wrong_rank, &cfg, device, &none));
    let mut nan = missing_b.clone();
    nan.insert_float(
        "base_model.model.fc.lora_B.weight",
        Tensor::<2>::full([4, 2], f32::NAN, device),
    )
    .unwrap();
    invalid(peft::from_peft(&nan, &cfg, device, &none));
    let mut stray = file.clone();
    stray
        .insert_float("base_model.model.fc.lora_C.weight", randn([1, 1], device))
        .unwrap();
    invalid(peft::from_peft(&stray, &cfg, device, &none));
    let mut ints = TensorFile::new();
    ints.insert_indices("base_model.model.fc.lora_A.weight", vec![2, 5], vec![0; 10])
        .unwrap();
    ints.insert_float("base_model.model.fc.lora_B.weight", randn([4, 2], device))
        .unwrap();
    invalid(peft::from_peft(&ints, &cfg, device, &none));
    assert_err!(
        peft::from_peft(
            &file,
            &cfg,
            device,
            &LayerShapes::from([("fc".to_string(), (5, 4))])
        ),
        AdapterError::InvalidFile { .. }
    );
    // SHiRA indices out of range, wrong layout, missing shapes.
    let s = Shira::from_coo(&[0, 3], &[1, 4], &[1.0, 2.0], 4, 5, device).unwrap();
    let (sfile, scfg) =
        peft::to_peft(&BTreeMap::from([("fc".to_string(), Adapter::Shira(s))])).unwrap();
    assert!(peft::from_peft(&sfile, &scfg, device, &none).is_ok());
    let mut oob = sfile.clone();
    oob.insert_indices(
        "base_model.model.fc.shira_indices",
        vec![2, 2],
        vec![0, 4, 1, 4],
    )
    .unwrap();
    assert!(invalid(peft::from_peft(&oob, &scfg, device, &none)).contains("outside"));
    let mut neg = sfile.clone();
    neg.insert_indices(
        "base_model.model.fc.shira_indices",
        vec![2, 2],
        vec![0, -1, 1, 4],
    )
    .unwrap();
    invalid(peft::from_peft(&neg, &scfg, device, &none));
    let mut dup = sfile.clone();
    dup.insert_indices(
        "base_model.model.fc.shira_indices",
        vec![2, 2],
        vec![3, 3, 4, 4],
    )
    .unwrap();
    invalid(peft::from_peft(&dup, &scfg, device, &none));
    let mut flat = sfile.clone();
    flat.insert_indices(
        "base_model.model.fc.shira_indices",
        vec![4],
        vec![0, 3, 1, 4],
    )
    .unwrap();
    invalid(peft::from_peft(&flat, &scfg, device, &none));
    let mut no_shape = TensorFile::new();
    for n in sfile.names() {
        let t = sfile.get(n).unwrap().clone();
        no_shape.insert(n, t.shape, t.values).unwrap();
    }
    assert!(invalid(peft::from_peft(&no_shape, &scfg, device, &none)).contains("shapes"));
    assert!(
        peft::from_peft(
            &no_shape,
            &scfg,
            device,
            &LayerShapes::from([("fc".to_string(), (4, 5))])
        )
        .is_ok()
    );
    // Files on disk: garbage, truncated, oversized config, missing files.
    let dir = tmp("hostile");
    peft::save(&dir, &peft::load(fixture_dir(), device, &none).unwrap()).unwrap();
    let weights = dir.join(peft::WEIGHTS_FILE);
    let good = std::fs::read(&weights).unwrap();
    for bytes in [vec![], vec![0xff; 16], good[..good.len() - 3].to_vec(), {
        let mut b = good.clone();
        b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        b
    }] {
        std::fs::write(&weights, &bytes).unwrap();
        invalid(peft::load(&dir, device, &none));
    }
    std::fs::write(&weights, &good).unwrap();
    assert!(peft::load(&dir, device, &none).is_ok());
    std::fs::write(
        dir.join(peft::CONFIG_FILE),
        vec![b' '; (peft::MAX_CONFIG_BYTES + 1) as usize],
    )
    .unwrap();
    assert!(invalid(peft::load(&dir, device, &none)).contains("limit"));
    std::fs::remove_file(dir.join(peft::CONFIG_FILE)).unwrap();
    assert!(matches!(
        peft::load(&dir, device, &none),
        Err(AdapterError::Core(_))
    ));
    let _ = std::fs::remove_dir_all(dir);
});

// ------------------------------------------- PEFT conventions (numpy fixtures)

fn numpy_fixture(name: &str) -> PathBuf {
    // Written by tests/fixtures/make_peft_fixtures.py (numpy only).
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Every module of a numpy fixture: rank, alpha, dropout and ΔW as PEFT's
/// rules give them (`expected.json`), within f32 rounding.
fn check_against_numpy(name: &str, device: &burn::tensor::Device) -> BTreeMap<String, Adapter> {
    let dir = numpy_fixture(name);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let layers = peft::load(&dir, device, &LayerShapes::new()).unwrap();
    let expected = expected.as_object().unwrap();
    assert_eq!(
        layers.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (m, e) in expected {
        let Adapter::Lora(l) = &layers[m] else {
            panic!("{m}: expected LoRA")
        };
        assert_eq!(l.rank() as u64, e["rank"].as_u64().unwrap(), "{m} rank");
        assert_eq!(l.alpha(), e["alpha"].as_f64().unwrap(), "{m} alpha");
        assert!(
            (l.scaling() - e["scaling"].as_f64().unwrap()).abs() < 1e-12,
            "{m}"
        );
        assert_eq!(l.dropout_prob(), 0.1, "{m} dropout");
        let got = vec2(l.delta_weight());
        let want: Vec<f64> = e["delta"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), want.len(), "{m}");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{m}: {g} vs {w}"
            );
        }
    }
    layers
}

backend_test!(nested_modules_take_their_pattern_rank_and_alpha, |device| {
    // rank_pattern {"fc1": 3} reaches model.mlp.fc1; alpha_pattern keys are
    // a regex (attn q/k → 8) and a suffix (fc2 → 1); the rest take r = 2, α = 4.
    let layers = check_against_numpy("peft_lora_patterns", device);
    let Adapter::Lora(fc1) = &layers["model.mlp.fc1"] else {
        panic!()
    };
    assert_eq!((fc1.rank(), fc1.alpha()), (3, 4.0));
    let Adapter::Lora(q) = &layers["model.attn.q_proj"] else {
        panic!()
    };
    assert_eq!((q.rank(), q.alpha()), (2, 8.0));
});

backend_test!(rslora_and_regex_target_modules_follow_peft, |device| {
    check_against_numpy("peft_lora_rslora_regex_targets", device);
});

backend_test!(our_writer_writes_what_peft_writes, |device| {
    // Load the numpy-written fixture, save it with our writer, and compare
    // the tensors (names, shapes, values) with the fixture's bit for bit,
    // and the reloaded adapters' ΔW, rank, alpha and dropout.
    let src = numpy_fixture("peft_lora_patterns");
    let layers = peft::load(&src, device, &LayerShapes::new()).unwrap();
    let dir = tmp("writer_vs_numpy");
    peft::save(&dir, &layers).unwrap();
    let theirs = TensorFile::load(src.join(peft::WEIGHTS_FILE)).unwrap();
    let ours = TensorFile::load(dir.join(peft::WEIGHTS_FILE)).unwrap();
    let mut a: Vec<&str> = theirs.names();
    let mut b: Vec<&str> = ours.names();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
    for name in a {
        let (t, o) = (theirs.get(name).unwrap(), ours.get(name).unwrap());
        assert_eq!(t, o, "{name}");
    }
    let again = peft::load(&dir, device, &LayerShapes::new()).unwrap();
    for (m, l) in &layers {
        let (Adapter::Lora(x), Adapter::Lora(y)) = (l, &again[m]) else {
            panic!()
        };
        assert_eq!(
            (x.rank(), x.alpha(), x.dropout_prob()),
            (y.rank(), y.alpha(), y.dropout_prob())
        );
        assert_eq!(vec2(x.delta_weight()), vec2(y.delta_weight()), "{m}");
    }
    let _ = std::fs::remove_dir_all(&dir);
});

/// The numpy fixture's config with `edit` applied, loaded.
fn load_edited(
    device: &burn::tensor::Device,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<BTreeMap<String, Adapter>, AdapterError> {
    let src = numpy_fixture("peft_lora_patterns");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join(peft::CONFIG_FILE)).unwrap())
            .unwrap();
    edit(cfg.as_object_mut().unwrap());
    let dir = tmp(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join(peft::WEIGHTS_FILE), dir.join(peft::WEIGHTS_FILE)).unwrap();
    std::fs::write(dir.join(peft::CONFIG_FILE), cfg.to_string()).unwrap();
    let out = peft::load(&dir, device, &LayerShapes::new());
    let _ = std::fs::remove_dir_all(&dir);
    out
}

backend_test!(unimplemented_peft_fields_are_refused, |device| {
    use serde_json::json;
    for (key, value) in [
        ("use_dora", json!(true)),
        ("lora_bias", json!(true)),
        ("bias", json!("all")),
        ("bias", json!("lora_only")),
        ("modules_to_save", json!(["classifier"])),
        ("layer_replication", json!([[0, 2]])),
    ] {
        let err = load_edited(device, "refused", |c| {
            c.insert(key.into(), value.clone());
        })
        .unwrap_err();
        assert!(
            matches!(err, AdapterError::Unsupported { op: "load", .. }),
            "{key} = {value}: {err}"
        );
    }
    // fan_in_fan_out only says how the base layer stores its weight: the
    // factors, hence ΔW in [out, in], are the same.
    let plain = load_edited(device, "fifo_false", |_| {}).unwrap();
    let fifo = load_edited(device, "fifo_true", |c| {
        c.insert("fan_in_fan_out".into(), json!(true));
    })
    .unwrap();
    for (m, l) in &plain {
        assert_eq!(
            vec2(l.delta_weight().unwrap()),
            vec2(fifo[m].delta_weight().unwrap()),
            "{m}"
        );
    }
});

backend_test!(bad_patterns_and_targets_are_typed_errors, |device| {
    use serde_json::json;
    let invalid = |name: &str, key: &str, value: serde_json::Value, needle: &str| {
        let err = load_edited(device, name, |c| {
            c.insert(key.into(), value);
        })
        .unwrap_err();
        match err {
            AdapterError::InvalidFile { reason, .. } => {
                assert!(reason.contains(needle), "{key}: {reason}")
            }
            other => panic!("{key}: expected InvalidFile, got {other}"),
        }
    };
    // two keys matching model.mlp.fc1 with different ranks: refused, not guessed
    invalid(
        "ambiguous",
        "rank_pattern",
        json!({"fc1": 3, r"mlp\.fc\d": 5}),
        "agree",
    );
    // a key that is not a regular expression
    invalid(
        "not_a_regex",
        "alpha_pattern",
        json!({"fc(1": 2}),
        "regular expression",
    );
    // a target regex that leaves a module out
    invalid(
        "regex_target",
        "target_modules",
        json!(r"model\.attn\..*"),
        "target_modules",
    );
    // a list of targets that leaves a module out
    invalid(
        "list_target",
        "target_modules",
        json!(["q_proj", "k_proj"]),
        "target_modules",
    );
    invalid("dropout", "lora_dropout", json!(1.5), "lora_dropout");
});
