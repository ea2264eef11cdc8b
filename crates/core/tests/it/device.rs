//! Backend selection never panics.
#![allow(clippy::unwrap_used)]

use lastmile_core::{Backend, CoreError, default_device};

#[test]
fn compiled_backends_give_devices_and_others_give_errors() {
    for backend in Backend::ALL {
        match backend.device() {
            Ok(device) => {
                assert!(backend.is_compiled());
                assert_eq!(Backend::of(&device), Some(backend));
                assert_eq!(Backend::of(&device.autodiff()), Some(backend));
            }
            Err(CoreError::BackendUnavailable {
                backend: name,
                reason,
            }) => {
                assert_eq!(name, backend.name());
                assert!(!reason.is_empty());
                // a compiled CPU backend is always usable
                assert!(!(backend.is_compiled() && backend.is_cpu()));
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
}

#[test]
fn names_round_trip_and_unknown_names_are_errors() {
    for backend in Backend::ALL {
        assert_eq!(backend.name().parse::<Backend>().unwrap(), backend);
    }
    assert!("tpu".parse::<Backend>().is_err());
}

#[test]
fn default_device_is_the_first_compiled_backend() {
    // LASTMILE_BACKEND is not set by the test runner
    if std::env::var("LASTMILE_BACKEND").is_err() {
        let device = default_device().unwrap();
        assert_eq!(Backend::of(&device), lastmile_core::default_backend());
    }
}
