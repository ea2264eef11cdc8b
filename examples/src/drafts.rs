//! Where the sweep's draft methods get their drafter: a draft language
//! model fed tokens ([`TokenDraft`]), or a feature-level draft reading the
//! target's features through a [`FeatureTap`] ([`FeatureDraft`]).

use anyhow::Result;
use lastmile_core::lm::{FeatureDraftModel, HiddenFeatures, LanguageModel};
use lastmile_spec_decode::{Drafter, FeatureDrafter, FeatureTap, ModelDrafter};

/// Makes a fresh drafter for each run against the target `T`.
pub trait DraftSource<T: LanguageModel> {
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

impl<T: LanguageModel, D: LanguageModel> DraftSource<T> for TokenDraft<'_, D> {
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

impl<'m, T: HiddenFeatures, D: FeatureDraftModel> DraftSource<FeatureTap<'m, T>>
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
