//! Saving and loading trained weights (burn's native burnpack format).

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;

use crate::error::{ModelError, Result};
use crate::transformer::{Transformer, TransformerConfig};

/// Largest checkpoint accepted by [`Transformer::load`] (1 GiB): a guard
/// against hostile or mistaken paths, far above any model of this crate.
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 30;

fn fail(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Writes `module`'s weights to `path` in burn's burnpack format, creating
/// parent directories. The error is the reason, for the caller's type.
pub(crate) fn save_module<M: Module>(module: &M, path: &Path) -> std::result::Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    module.clone().save_file(path).map_err(|e| e.to_string())
}

/// Loads burnpack weights from `path` into `skeleton`, reading at most
/// `max` bytes, **all of them before anything is applied**: burn's file
/// reader fetches tensor data lazily, so a truncated (or since changed)
/// file would fail later inside a device's worker thread (a panic on wgpu)
/// instead of here. The error is the reason, for the caller's type.
pub(crate) fn load_module<M: Module>(
    skeleton: M,
    path: &Path,
    max: u64,
) -> std::result::Result<M, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len > max {
        return Err(format!("{len} bytes; expected at most {max}"));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("grew past {max} bytes while being read"));
    }
    let record = burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| e.to_string())?;
    skeleton.try_load_record(record).map_err(|e| e.to_string())
}

impl Transformer {
    /// Writes the weights to `path` (creating parent directories).
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] on I/O failure.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        save_module(self, path).map_err(|e| fail(path, e))
    }

    /// Builds a model of shape `config` on `device` and loads weights saved by
    /// [`save`](Transformer::save).
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] for a missing, oversized, malformed or
    /// truncated file, or weights whose shapes do not match `config`.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_models::{Transformer, TransformerConfig};
    /// let d = Device::flex();
    /// let c = TransformerConfig::byte_level(16, 1, 2, 8);
    /// let path = std::env::temp_dir().join("lastmile-models-doc.bpk");
    /// c.init(&d).unwrap().save(&path).unwrap();
    /// assert!(Transformer::load(c, &path, &d).is_ok());
    /// assert!(Transformer::load(TransformerConfig::byte_level(32, 1, 2, 8), &path, &d).is_err());
    /// # }
    /// ```
    pub fn load(
        config: TransformerConfig,
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<Self> {
        let path = path.as_ref();
        load_module(config.init(device)?, path, MAX_CHECKPOINT_BYTES).map_err(|e| fail(path, e))
    }
}
