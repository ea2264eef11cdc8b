//! Test harness: run one test body on every enabled backend, and compare
//! results against naive `f64` references with explicit tolerances.
//!
//! These helpers panic on failure, like `assert!`: they are meant for tests,
//! never for library code paths. The module exists only with the `testing`
//! feature, which lastmile's crates enable in their `[dev-dependencies]`:
//!
//! ```toml
//! [dev-dependencies]
//! lastmile-core = { version = "0.1", features = ["testing"] }
//! ```

use burn::tensor::Device;

use crate::device::Backend;

/// Runs `body` on a device of `backend`, seeded with 0.
///
/// Only for backends compiled into this build: [`backend_test!`](crate::backend_test)
/// generates a test per compiled backend, so a backend that is not built in
/// never shows up as a passed test. A backend that is compiled in but unusable
/// (wgpu with no adapter) **fails**: a build that asked for the GPU path must
/// be able to exercise it.
///
/// # Panics
/// When `backend` is not compiled in, when no device can be created, or when
/// `body` panics.
///
/// ```
/// use lastmile_core::{Backend, testing::run_on};
/// # #[cfg(feature = "flex")]
/// run_on(Backend::Flex, |device| {
///     let t = burn::tensor::Tensor::<1>::ones([3], device);
///     assert_eq!(t.sum().into_scalar::<f32>(), 3.0);
/// });
/// ```
pub fn run_on(backend: Backend, body: impl FnOnce(&Device)) {
    let device = match backend.device() {
        Ok(device) => device,
        Err(e) => panic!("backend {backend} cannot run this test: {e}"),
    };
    device.seed(0);
    body(&device);
}

/// Defines one `#[test]` per backend compiled into `lastmile-core` (`flex`,
/// `ndarray`, `wgpu`), each running the same body, in a module named after
/// the test.
///
/// The body receives `&Device`. Variants exist only for compiled backends
/// (the choice is made where lastmile-core is compiled, so it follows the
/// features the build actually unified), which keeps the count `cargo test`
/// prints equal to the count that ran.
///
/// ```
/// use lastmile_core::backend_test;
/// backend_test!(ones_sum_to_len, |device| {
///     let t = burn::tensor::Tensor::<1>::ones([4], device);
///     assert_eq!(t.sum().into_scalar::<f32>(), 4.0);
/// });
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! backend_test {
    ($name:ident, |$device:ident| $body:block) => {
        #[allow(clippy::unwrap_used, clippy::expect_used)]
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[allow(dead_code)]
            fn body($device: &$crate::burn::tensor::Device) $body

            $crate::__if_flex! {
                #[test]
                fn flex() {
                    $crate::testing::run_on($crate::Backend::Flex, body);
                }
            }

            $crate::__if_ndarray! {
                #[test]
                fn ndarray() {
                    $crate::testing::run_on($crate::Backend::NdArray, body);
                }
            }

            $crate::__if_wgpu! {
                #[test]
                fn wgpu() {
                    $crate::testing::run_on($crate::Backend::Wgpu, body);
                }
            }
        }
    };
}

// `cfg` inside a `macro_rules!` expansion is evaluated in the *calling* crate,
// whose features say nothing about which backends lastmile-core was built
// with. These helpers are defined per core feature, so the choice is made here.

/// Expands its input when lastmile-core has the `flex` backend.
#[cfg(feature = "flex")]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_flex { ($($t:tt)*) => { $($t)* }; }
/// Expands its input when lastmile-core has the `flex` backend.
#[cfg(not(feature = "flex"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_flex {
    ($($t:tt)*) => {};
}

/// Expands its input when lastmile-core has the `ndarray` backend.
#[cfg(feature = "ndarray")]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_ndarray { ($($t:tt)*) => { $($t)* }; }
/// Expands its input when lastmile-core has the `ndarray` backend.
#[cfg(not(feature = "ndarray"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_ndarray {
    ($($t:tt)*) => {};
}

/// Expands its input when lastmile-core has the `wgpu` backend.
#[cfg(feature = "wgpu")]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_wgpu { ($($t:tt)*) => { $($t)* }; }
/// Expands its input when lastmile-core has the `wgpu` backend.
#[cfg(not(feature = "wgpu"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_wgpu {
    ($($t:tt)*) => {};
}

/// Asserts that `actual` matches `expected` elementwise within
/// `|a − e| ≤ atol + rtol·|e|`; infinities must match exactly.
///
/// # Panics
/// On a length mismatch or the first element out of tolerance, naming it.
///
/// ```
/// lastmile_core::testing::assert_close(&[1.0, 2.0001], &[1.0, 2.0], 1e-4, 0.0);
/// ```
pub fn assert_close(actual: &[f32], expected: &[f64], rtol: f64, atol: f64) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "length mismatch: actual {} vs expected {}",
        actual.len(),
        expected.len()
    );
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let a = f64::from(a);
        if e.is_infinite() || a.is_infinite() {
            assert!(a == e, "element {i}: actual {a}, expected {e}");
            continue;
        }
        assert!(
            (a - e).abs() <= atol + rtol * e.abs(),
            "element {i}: actual {a}, expected {e} (rtol {rtol}, atol {atol})"
        );
    }
}

/// Relative Frobenius error `‖a − b‖ / max(‖b‖, tiny)` of two equal-length slices.
///
/// ```
/// let e = lastmile_core::testing::relative_error(&[1.0, 2.0], &[1.0, 2.0]);
/// assert_eq!(e, 0.0);
/// ```
pub fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    let den: f64 = b.iter().map(|&y| f64::from(y).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}
