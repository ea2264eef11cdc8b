//! The multipliers some Llama-family architectures add to Llama's graph
//! ([`Scales`]).

/// The four multipliers of llama.cpp's `granite` graph (IBM Granite 3.x,
/// trained with μP-style scaling), each a no-op at its default.
///
/// ```
/// use lastmile_models::llama::{LlamaConfig, Scales};
/// let c = LlamaConfig::tiny();
/// assert_eq!(c.scales, Scales::default());
/// assert_eq!(c.attention_scale(), 1.0 / (c.head_dim() as f32).sqrt());
/// let granite = LlamaConfig { scales: Scales { attention: Some(0.125), ..Scales::default() }, ..c };
/// assert_eq!(granite.attention_scale(), 0.125);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scales {
    /// Factor on the token embeddings before the first block
    /// (`granite.embedding_scale`; 1).
    pub embedding: f32,
    /// Factor on each attention and feed-forward output before it is added
    /// to the residual stream (`granite.residual_scale`; 1).
    pub residual: f32,
    /// Factor on the attention's scores `q·k` (`<arch>.attention.scale`,
    /// read for every architecture as llama.cpp's `llama` graph reads it);
    /// `None`: `1/√d_head`.
    pub attention: Option<f32>,
    /// Divisor of the logits (`granite.logit_scale`; 1).
    pub logit: f32,
}

impl Default for Scales {
    fn default() -> Self {
        Self {
            embedding: 1.0,
            residual: 1.0,
            attention: None,
            logit: 1.0,
        }
    }
}
