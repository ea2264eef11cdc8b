//! Chat templates: the ChatML layout that SmolLM2's GGUF template renders
//! (recognised templates are listed on [`ChatTemplate`]).

use super::Tokenizer;
use super::error::{TokenizerError, TokenizerResult};

/// One message of a conversation.
///
/// # Examples
/// ```
/// use lastmile_models::tokenizer::ChatMessage;
/// let m = ChatMessage::new("user", "Hi!");
/// assert_eq!((m.role, m.content), ("user", "Hi!"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatMessage<'a> {
    /// `system`, `user`, `assistant`, … (written as given).
    pub role: &'a str,
    /// The message text.
    pub content: &'a str,
}

impl<'a> ChatMessage<'a> {
    /// A message from `role` with `content`.
    pub fn new(role: &'a str, content: &'a str) -> Self {
        Self { role, content }
    }
}

/// A chat template this crate can apply.
///
/// GGUF files carry their chat template as Jinja source
/// (`tokenizer.chat_template`). No Jinja engine is embedded here: the
/// templates below are recognised by their exact text (with the two-byte
/// escape `\n` and a real newline treated alike, as Jinja's string literals
/// do), and anything else is a clear
/// [`TokenizerError::UnsupportedChatTemplate`].
///
/// Recognised:
/// - **ChatML** — every message as
///   `<|im_start|>{role}\n{content}<|im_end|>\n`, and with the generation
///   prompt a final `<|im_start|>assistant\n`;
/// - **ChatML with a default system prompt** (SmolLM2-Instruct) — the same,
///   preceded by `<|im_start|>system\n{default}<|im_end|>\n` when the first
///   message is not a system message; the default text is read from the
///   template.
///
/// # Examples
/// ```
/// use lastmile_models::tokenizer::{ChatMessage, ChatTemplate};
/// let t = ChatTemplate::parse(
///     "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] \
///      + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
/// )?;
/// let text = t.apply(&[ChatMessage::new("user", "Hi")], true);
/// assert_eq!(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
/// assert!(ChatTemplate::parse("{{ messages }}").is_err());
/// # Ok::<(), lastmile_models::tokenizer::TokenizerError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChatTemplate {
    /// ChatML, optionally inserting a system message first when the
    /// conversation does not start with one.
    ChatMl {
        /// The system message inserted before a conversation whose first
        /// message is not from `system`.
        default_system: Option<String>,
    },
}

/// The loop body and generation prompt shared by both recognised templates.
const CHATML_BODY: &str = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}\
{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const LOOP_OPEN: &str = "{% for message in messages %}";
const DEFAULT_SYSTEM_OPEN: &str =
    "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n";
const DEFAULT_SYSTEM_CLOSE: &str = "<|im_end|>\n' }}{% endif %}";

impl ChatTemplate {
    /// Recognises a Jinja chat template.
    ///
    /// # Errors
    /// [`TokenizerError::UnsupportedChatTemplate`] when the text is not one
    /// of the templates listed on [`ChatTemplate`].
    pub fn parse(template: &str) -> TokenizerResult<Self> {
        let text = template.trim().replace("\\n", "\n");
        let unsupported = |reason: &str| TokenizerError::UnsupportedChatTemplate {
            reason: format!("{reason}; supported: ChatML, ChatML with a default system prompt"),
            excerpt: template.chars().take(80).collect(),
        };
        let rest = text
            .strip_prefix(LOOP_OPEN)
            .ok_or_else(|| unsupported("it does not start with a loop over the messages"))?;
        if rest == CHATML_BODY {
            return Ok(Self::ChatMl {
                default_system: None,
            });
        }
        let system = rest
            .strip_prefix(DEFAULT_SYSTEM_OPEN)
            .and_then(|r| r.strip_suffix(CHATML_BODY))
            .and_then(|r| r.strip_suffix(DEFAULT_SYSTEM_CLOSE))
            .ok_or_else(|| unsupported("its message layout is not ChatML"))?;
        if system.contains(['\'', '\\', '{', '}']) {
            return Err(unsupported(
                "its default system prompt is not a plain string literal",
            ));
        }
        Ok(Self::ChatMl {
            default_system: Some(system.to_owned()),
        })
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends
    /// with the header of the assistant's reply.
    pub fn apply(&self, messages: &[ChatMessage<'_>], add_generation_prompt: bool) -> String {
        let Self::ChatMl { default_system } = self;
        let mut out = String::new();
        let mut turn = |role: &str, content: &str| {
            out.push_str("<|im_start|>");
            out.push_str(role);
            out.push('\n');
            out.push_str(content);
            out.push_str("<|im_end|>\n");
        };
        if let (Some(system), Some(first)) = (default_system, messages.first())
            && first.role != "system"
        {
            turn("system", system);
        }
        for m in messages {
            turn(m.role, m.content);
        }
        if add_generation_prompt {
            out.push_str("<|im_start|>assistant\n");
        }
        out
    }
}

impl Tokenizer {
    /// The Jinja chat template from the metadata, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders a conversation with the model's own chat template (read from
    /// `tokenizer.chat_template`), ending with the assistant header when
    /// `add_generation_prompt`. Encode the result with `parse_special`.
    ///
    /// # Errors
    /// [`TokenizerError::MissingChatTemplate`] when the metadata has none;
    /// [`TokenizerError::UnsupportedChatTemplate`] when it is not one of the
    /// templates [`ChatTemplate::parse`] recognises.
    ///
    /// # Examples
    /// ```
    /// # use lastmile_models::tokenizer::{ChatMessage, Tokenizer, TokenizerError, Vocabulary};
    /// let mut v = Vocabulary::byte_level(&[], &["<|im_start|>", "<|im_end|>"]);
    /// let tok = Tokenizer::from_vocabulary(v.clone())?;
    /// let chat = [ChatMessage::new("user", "Hi")];
    /// assert!(matches!(tok.apply_chat_template(&chat, true), Err(TokenizerError::MissingChatTemplate)));
    /// v.chat_template = Some("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' \
    ///     + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}\
    ///     {{ '<|im_start|>assistant\n' }}{% endif %}".into());
    /// let tok = Tokenizer::from_vocabulary(v)?;
    /// assert_eq!(tok.apply_chat_template(&chat, true)?, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    /// # Ok::<(), TokenizerError>(())
    /// ```
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage<'_>],
        add_generation_prompt: bool,
    ) -> TokenizerResult<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or(TokenizerError::MissingChatTemplate)?;
        Ok(ChatTemplate::parse(template)?.apply(messages, add_generation_prompt))
    }

    /// The ids of a conversation: [`apply_chat_template`](Self::apply_chat_template)
    /// encoded with `add_special` and `parse_special`, so the turn markers
    /// become their control tokens.
    ///
    /// # Errors
    /// As [`apply_chat_template`](Self::apply_chat_template).
    ///
    /// # Examples
    /// ```
    /// # use lastmile_models::tokenizer::{ChatMessage, Tokenizer, Vocabulary};
    /// let mut v = Vocabulary::byte_level(&[], &["<|im_start|>", "<|im_end|>"]);
    /// v.chat_template = Some("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' \
    ///     + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}\
    ///     {{ '<|im_start|>assistant\n' }}{% endif %}".into());
    /// let tok = Tokenizer::from_vocabulary(v)?;
    /// let ids = tok.encode_chat(&[ChatMessage::new("user", "Hi")], true)?;
    /// let start = tok.token_id("<|im_start|>").unwrap();
    /// assert_eq!(ids.iter().filter(|&&id| id == start).count(), 2);
    /// # Ok::<(), lastmile_models::tokenizer::TokenizerError>(())
    /// ```
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage<'_>],
        add_generation_prompt: bool,
    ) -> TokenizerResult<Vec<usize>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        Ok(self.encode(&text, true, true))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SMOL: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm_template_inserts_the_default_system_prompt() {
        let t = ChatTemplate::parse(SMOL).unwrap();
        let user = [ChatMessage::new("user", "Hi")];
        assert_eq!(
            t.apply(&user, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let with_system = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
        ];
        assert_eq!(
            t.apply(&with_system, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
        assert_eq!(t.apply(&[], true), "<|im_start|>assistant\n");
    }

    #[test]
    fn escaped_newlines_are_the_same_template() {
        let escaped = SMOL.replace('\n', "\\n");
        assert_eq!(
            ChatTemplate::parse(&escaped).unwrap(),
            ChatTemplate::parse(SMOL).unwrap()
        );
    }

    #[test]
    fn other_templates_are_rejected_with_a_reason() {
        let llama3 = "{% set loop_messages = messages %}{% for message in loop_messages %}<|start_header_id|>";
        let err = ChatTemplate::parse(llama3).unwrap_err().to_string();
        assert!(err.contains("unsupported chat template"), "{err}");
        let tweaked = SMOL.replace("'<|im_end|>' + '\n'", "'<|im_end|>'");
        assert!(ChatTemplate::parse(&tweaked).is_err());
        let injected = SMOL.replace("Hugging Face", "{{ x }}");
        assert!(ChatTemplate::parse(&injected).is_err());
    }
}
