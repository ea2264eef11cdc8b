//! Where the sweep's draft methods get their drafter: a draft language
//! model fed tokens ([`TokenDraft`]), or a feature-level draft reading the
//! target's features through a [`FeatureTap`] ([`FeatureDraft`]).

use anyhow::Result;
use lastmile_core::lm::{FeatureDraftModel, HiddenFeatures, LanguageModel};
use lastmile_spec_decode::{Drafter, FeatureDrafter, FeatureTap, ModelDrafter};

/// Makes a fresh drafter for each run against the target `T`.
pub trait MakeDrafter<T: LanguageModel> {
    /// The drafter type.
    type Drafter<'s>: Drafter
    where
        Self: 's;

    /// A drafter with no state.
    ///
    /// # Errors
    /// When the draft does not fit the target.
    fn drafter(&self) -> Result<Self::Drafter<'_>>;
}

/// A draft language model, one token per forward ([`ModelDrafter`]).
#[derive(Debug)]
pub struct TokenDraft<'a, D>(pub &'a D);

impl<T: LanguageModel, D: LanguageModel> MakeDrafter<T> for TokenDraft<'_, D> {
    type Drafter<'s>
        = ModelDrafter<'s, D>
    where
        Self: 's;

    fn drafter(&self) -> Result<ModelDrafter<'_, D>> {
        Ok(ModelDrafter::new(self.0))
    }
}

/// A feature-level draft ([`FeatureDrafter`]) reading `tap`, which must be
/// the target the decoder verifies with.
#[derive(Debug)]
pub struct FeatureDraft<'a, 'm, T: HiddenFeatures, D> {
    /// The target, recording its features.
    pub tap: &'a FeatureTap<'m, T>,
    /// The draft.
    pub draft: &'a D,
}

impl<'m, T: HiddenFeatures, D: FeatureDraftModel> MakeDrafter<FeatureTap<'m, T>>
    for FeatureDraft<'_, 'm, T, D>
{
    type Drafter<'s>
        = FeatureDrafter<'s, 'm, T, D>
    where
        Self: 's;

    fn drafter(&self) -> Result<FeatureDrafter<'_, 'm, T, D>> {
        Ok(FeatureDrafter::new(self.tap, self.draft)?)
    }
}

/// File name, in [`MODEL_DIR`](crate::llm::MODEL_DIR), of a `distill_llm` draft: `layers` blocks, a head over `vocab` tokens (0: tied).
/// `draft_file_name(2, 8192)` is `"draft-L2-v8192.bpk"`.
pub fn draft_file_name(layers: usize, vocab: usize) -> String {
    match vocab {
        0 => format!("draft-L{layers}.bpk"),
        v => format!("draft-L{layers}-v{v}.bpk"),
    }
}

/// File name, in [`MODEL_DIR`](crate::llm::MODEL_DIR), of a `feature_draft_llm` draft:
/// `feature_draft_file_name(1, 8192)` is `"feature-L1-v8192.bpk"`.
pub fn feature_draft_file_name(layers: usize, vocab: usize) -> String {
    format!("feature-L{layers}-v{vocab}.bpk")
}
