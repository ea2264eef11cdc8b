//! An injectable I/O cost model: how long reading `bytes` from flash takes,
//! for simulations (replay) that do not touch a disk.
//!
//! [`LinearIoCost`] is `t = latency + bytes / bandwidth`. Its
//! [`phone_ufs31`](LinearIoCost::phone_ufs31) default models a phone's UFS
//! 3.1 flash:
//!
//! - **bandwidth 1.5 GB/s** — *assumption*, set below the ~2.1 GB/s
//!   sequential read that vendors quote for UFS 3.1 parts (e.g. Samsung's
//!   UFS 3.1 announcement of 2020; the JEDEC UFS 3.1 standard JESD220E runs
//!   two HS-Gear4 lanes of 11.6 Gb/s, ≈2.9 GB/s raw), because expert reads are
//!   a few MB each and rarely reach the peak;
//! - **latency 100 µs** per read request — *assumption* (order of magnitude
//!   of a single queued flash read on phone storage), not a measurement.
//!
//! Measure your own device with [`crate::store::ExpertStore`]'s load records
//! and [`LinearIoCost::fit`].

use std::fmt;

use lastmile_core::validate::{check_interval, check_positive};

use crate::error::{MoeCacheError, Result};

/// Time to read a contiguous region of flash.
///
/// ```
/// use lastmile_moe_cache::cost::{IoCostModel, LinearIoCost};
/// let model: &dyn IoCostModel = &LinearIoCost::phone_ufs31();
/// let t = model.read_seconds(3 << 20); // one 3 MiB expert
/// assert!(t > 0.002 && t < 0.003);
/// ```
pub trait IoCostModel: fmt::Debug + Send + Sync {
    /// Seconds to read `bytes` in one request.
    fn read_seconds(&self, bytes: u64) -> f64;
}

/// `t = latency + bytes / bandwidth`.
///
/// ```
/// use lastmile_moe_cache::cost::{IoCostModel, LinearIoCost};
/// let m = LinearIoCost::new(1e-4, 1e9)?;
/// assert!((m.read_seconds(1_000_000) - 1.1e-3).abs() < 1e-12);
/// assert!(LinearIoCost::new(-1.0, 1e9).is_err());
/// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearIoCost {
    latency_s: f64,
    bandwidth_bytes_per_s: f64,
}

impl LinearIoCost {
    /// A model with `latency_s ≥ 0` seconds per request and
    /// `bandwidth_bytes_per_s > 0`.
    ///
    /// # Errors
    /// [`lastmile_core::CoreError::OutOfRange`] for a negative or non-finite
    /// latency or a non-positive bandwidth.
    pub fn new(latency_s: f64, bandwidth_bytes_per_s: f64) -> Result<Self> {
        use std::ops::Bound::{Included, Unbounded};
        let latency_s = check_interval("latency_s", latency_s, Included(0.0), Unbounded)?;
        let bandwidth_bytes_per_s = check_positive("bandwidth_bytes_per_s", bandwidth_bytes_per_s)?;
        Ok(Self {
            latency_s,
            bandwidth_bytes_per_s,
        })
    }

    /// The phone-flash default: 100 µs latency, 1.5 GB/s (both assumptions;
    /// see the [module docs](self)).
    pub fn phone_ufs31() -> Self {
        Self {
            latency_s: 100e-6,
            bandwidth_bytes_per_s: 1.5e9,
        }
    }

    /// Latency per request, seconds.
    pub fn latency_s(&self) -> f64 {
        self.latency_s
    }

    /// Bandwidth, bytes per second.
    pub fn bandwidth_bytes_per_s(&self) -> f64 {
        self.bandwidth_bytes_per_s
    }

    /// Least-squares fit of `seconds = latency + bytes / bandwidth` to
    /// measured `(bytes, seconds)` reads (at least two distinct sizes).
    ///
    /// # Errors
    /// [`lastmile_core::CoreError::Empty`] with fewer than two samples;
    /// [`MoeCacheError::Core`] out of range when all sizes are equal, a time
    /// is negative or non-finite, or the fit gives a non-positive bandwidth
    /// or a negative latency.
    ///
    /// ```
    /// use lastmile_moe_cache::cost::LinearIoCost;
    /// let m = LinearIoCost::fit(&[(1_000_000, 1.1e-3), (2_000_000, 2.1e-3)])?;
    /// assert!((m.latency_s() - 1e-4).abs() < 1e-9);
    /// assert!((m.bandwidth_bytes_per_s() - 1e9).abs() < 1e3);
    /// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
    /// ```
    pub fn fit(samples: &[(u64, f64)]) -> Result<Self> {
        if samples.len() < 2 {
            return Err(lastmile_core::CoreError::Empty {
                what: "cost samples".to_owned(),
                min: 2,
            }
            .into());
        }
        let n = samples.len() as f64;
        let mut sx = 0.0;
        let mut sy = 0.0;
        for &(b, t) in samples {
            check_interval(
                "seconds",
                t,
                std::ops::Bound::Included(0.0),
                std::ops::Bound::Unbounded,
            )?;
            sx += b as f64;
            sy += t;
        }
        let (mx, my) = (sx / n, sy / n);
        let (mut sxx, mut sxy) = (0.0, 0.0);
        for &(b, t) in samples {
            let dx = b as f64 - mx;
            sxx += dx * dx;
            sxy += dx * (t - my);
        }
        if sxx <= 0.0 {
            return Err(MoeCacheError::param(
                "cost sample sizes",
                mx,
                "at least two distinct byte counts",
            ));
        }
        let slope = sxy / sxx;
        if slope <= 0.0 {
            return Err(MoeCacheError::param(
                "fitted seconds per byte",
                slope,
                "a positive slope (larger reads take longer)",
            ));
        }
        let intercept = my - slope * mx;
        if intercept < 0.0 {
            return Err(MoeCacheError::param(
                "fitted latency_s",
                intercept,
                "a non-negative latency",
            ));
        }
        Self::new(intercept, 1.0 / slope)
    }
}

impl Default for LinearIoCost {
    fn default() -> Self {
        Self::phone_ufs31()
    }
}

impl IoCostModel for LinearIoCost {
    fn read_seconds(&self, bytes: u64) -> f64 {
        self.latency_s + bytes as f64 / self.bandwidth_bytes_per_s
    }
}
