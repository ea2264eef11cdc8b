//! Backend selection: which compute backends this build has, and devices for them.
//!
//! lastmile code is written against burn's runtime-dispatched [`Tensor`](burn::tensor::Tensor)
//! and [`Device`]; the backend is a *value* chosen at run time, not a type
//! parameter. Cargo features decide which backends are compiled in:
//!
//! | feature | backend | device |
//! |---|---|---|
//! | `flex` (default) | burn-flex, pure-Rust CPU | [`Backend::Flex`] |
//! | `ndarray` | burn-ndarray, CPU | [`Backend::NdArray`] |
//! | `wgpu` | burn-wgpu, GPU (Vulkan/Metal/DX12/GL) | [`Backend::Wgpu`] |

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::error::{CoreError, Result};

/// A compute backend lastmile can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Backend {
    /// burn-flex: the maintained pure-Rust CPU backend (lastmile's default).
    Flex,
    /// burn-ndarray: the older CPU backend (deprecated upstream in burn 0.22).
    NdArray,
    /// burn-wgpu: GPUs through wgpu (Vulkan, Metal, DX12, OpenGL).
    Wgpu,
}

impl Backend {
    /// Every backend lastmile knows, compiled in or not.
    pub const ALL: [Backend; 3] = [Backend::Flex, Backend::NdArray, Backend::Wgpu];

    /// The lower-case name used by features, CLI flags and reports.
    ///
    /// ```
    /// assert_eq!(lastmile_core::Backend::Flex.name(), "flex");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::NdArray => "ndarray",
            Backend::Wgpu => "wgpu",
        }
    }

    /// Whether this backend's cargo feature is enabled in this build.
    ///
    /// ```
    /// use lastmile_core::Backend;
    /// // the default feature set compiles the flex CPU backend
    /// # #[cfg(feature = "flex")]
    /// assert!(Backend::Flex.is_compiled());
    /// ```
    pub fn is_compiled(self) -> bool {
        match self {
            Backend::Flex => cfg!(feature = "flex"),
            Backend::NdArray => cfg!(feature = "ndarray"),
            Backend::Wgpu => cfg!(feature = "wgpu"),
        }
    }

    /// The backends compiled into this build, CPU backends first.
    ///
    /// ```
    /// let compiled = lastmile_core::Backend::compiled();
    /// assert!(compiled.iter().all(|b| b.is_compiled()));
    /// ```
    pub fn compiled() -> Vec<Backend> {
        Self::ALL.into_iter().filter(|b| b.is_compiled()).collect()
    }

    /// The backends that are compiled in *and* usable on this machine
    /// (for wgpu: an adapter exists).
    ///
    /// ```
    /// for backend in lastmile_core::Backend::available() {
    ///     assert!(backend.device().is_ok());
    /// }
    /// ```
    pub fn available() -> Vec<Backend> {
        Self::compiled()
            .into_iter()
            .filter(|b| b.device().is_ok())
            .collect()
    }

    /// A device of this backend.
    ///
    /// # Errors
    /// [`CoreError::BackendUnavailable`] when the backend's feature is not
    /// compiled in, or (wgpu) when no graphics adapter can be found. Never panics.
    ///
    /// ```
    /// use lastmile_core::Backend;
    /// let device = Backend::Flex.device();
    /// # #[cfg(feature = "flex")]
    /// assert!(device.is_ok());
    /// ```
    pub fn device(self) -> Result<Device> {
        if !self.is_compiled() {
            return Err(CoreError::BackendUnavailable {
                backend: self.name().to_owned(),
                reason: format!(
                    "this build was compiled without the `{}` cargo feature",
                    self.name()
                ),
            });
        }
        match self {
            #[cfg(feature = "flex")]
            Backend::Flex => Ok(Device::flex()),
            // burn 0.22 deprecates ndarray in favour of flex; we keep offering it because
            // users asked for it and it is faster on large matmuls (docs/benchmarks.md).
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Backend::NdArray => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => wgpu_device(),
            #[allow(unreachable_patterns)]
            _ => Err(CoreError::BackendUnavailable {
                backend: self.name().to_owned(),
                reason: "not compiled in".to_owned(),
            }),
        }
    }

    /// Whether this backend computes on the host CPU.
    pub fn is_cpu(self) -> bool {
        matches!(self, Backend::Flex | Backend::NdArray)
    }

    /// The backend a device belongs to, if it is one lastmile knows.
    /// Autodiff devices answer for the device they wrap.
    ///
    /// ```
    /// use lastmile_core::Backend;
    /// # #[cfg(feature = "flex")] {
    /// let device = Backend::Flex.device().unwrap().autodiff();
    /// assert_eq!(Backend::of(&device), Some(Backend::Flex));
    /// # }
    /// ```
    pub fn of(device: &Device) -> Option<Backend> {
        // The CPU backends have one device each: an equality test (which
        // ignores autodiff), not the formatting below, for the decoding
        // loops that ask every round.
        #[cfg(feature = "flex")]
        if *device == Device::flex() {
            return Some(Backend::Flex);
        }
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        if *device == Device::ndarray() {
            return Some(Backend::NdArray);
        }
        // burn's dispatch enum is cfg-dependent; its Debug form names the variant
        // ("Device<Flex(..)>", "Device<NdArray(..)>", "Device<Cube(Wgpu(..))>").
        let text = format!("{device:?}");
        if text.contains("Flex") {
            Some(Backend::Flex)
        } else if text.contains("NdArray") {
            Some(Backend::NdArray)
        } else if text.contains("Wgpu") || text.contains("Cube") {
            Some(Backend::Wgpu)
        } else {
            None
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = CoreError;

    /// Parses `"flex"`, `"ndarray"` or `"wgpu"` (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "flex" => Ok(Backend::Flex),
            "ndarray" => Ok(Backend::NdArray),
            "wgpu" | "gpu" => Ok(Backend::Wgpu),
            other => Err(CoreError::BackendUnavailable {
                backend: other.to_owned(),
                reason: "unknown backend name; expected one of flex, ndarray, wgpu".to_owned(),
            }),
        }
    }
}

/// The backend [`default_device`] uses: the first compiled of flex, ndarray, wgpu.
///
/// ```
/// let b = lastmile_core::default_backend();
/// assert!(b.map_or(true, |b| b.is_compiled()));
/// ```
pub fn default_backend() -> Option<Backend> {
    Backend::compiled().into_iter().next()
}

/// The default device: flex (CPU) when compiled, else ndarray, else wgpu.
///
/// The `LASTMILE_BACKEND` environment variable (`flex`, `ndarray`, `wgpu`)
/// overrides the choice, so examples can switch backend without recompiling
/// code.
///
/// # Errors
/// [`CoreError::BackendUnavailable`] if no backend is compiled in, or the one
/// named by `LASTMILE_BACKEND` is not usable.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// let device = lastmile_core::default_device().unwrap();
/// let t = burn::tensor::Tensor::<1>::from_floats([1.0, 2.0], &device);
/// assert_eq!(t.dims(), [2]);
/// # }
/// ```
pub fn default_device() -> Result<Device> {
    if let Ok(name) = std::env::var("LASTMILE_BACKEND")
        && !name.is_empty()
    {
        return name.parse::<Backend>()?.device();
    }
    default_backend()
        .ok_or_else(|| CoreError::BackendUnavailable {
            backend: "any".to_owned(),
            reason: "no backend feature (flex, ndarray, wgpu) is enabled in this build".to_owned(),
        })?
        .device()
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device> {
    use burn::tensor::{DeviceKind, DeviceType};
    use std::sync::OnceLock;
    // Enumerating adapters is slow-ish (it opens the graphics API) and the
    // answer does not change while the process runs: ask once.
    static ADAPTERS: OnceLock<usize> = OnceLock::new();
    let count = *ADAPTERS.get_or_init(|| Device::enumerate(DeviceType::Wgpu).len());
    if count == 0 {
        return Err(CoreError::BackendUnavailable {
            backend: "wgpu".to_owned(),
            reason: "no graphics adapter was found (install a GPU driver, or Mesa's lavapipe \
                     `mesa-vulkan-drivers` for software Vulkan)"
                .to_owned(),
        });
    }
    Ok(Device::wgpu(DeviceKind::DefaultDevice))
}
