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

impl Transformer {
    /// Writes the weights to `path` (creating parent directories).
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] on I/O failure.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(path, e.to_string()))?;
        }
        self.clone()
            .save_file(path)
            .map_err(|e| fail(path, e.to_string()))
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
        let meta = std::fs::metadata(path).map_err(|e| fail(path, e.to_string()))?;
        if meta.len() > MAX_CHECKPOINT_BYTES {
            return Err(fail(
                path,
                format!(
                    "{} bytes; expected at most {MAX_CHECKPOINT_BYTES}",
                    meta.len()
                ),
            ));
        }
        config
            .init(device)?
            .try_load_file(path)
            .map_err(|e| fail(path, e.to_string()))
    }
}
