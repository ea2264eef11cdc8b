//! Chat templates: SmolLM2's ChatML template recognised exactly, and the
//! common families (ChatML, Llama 2, Llama 3, Phi-3, Zephyr, DeepSeek
//! Coder) recognised by their markers and rendered as llama.cpp's built-in
//! templates render them (the list is on [`ChatTemplate`]).

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
/// (`tokenizer.chat_template`). No Jinja engine is embedded here. Two
/// templates are recognised by their exact text (with the two-byte escape
/// `\n` and a real newline treated alike, as Jinja's string literals do)
/// and render exactly what Jinja renders:
/// - **ChatML** — every message as
///   `<|im_start|>{role}\n{content}<|im_end|>\n`, and with the generation
///   prompt a final `<|im_start|>assistant\n`;
/// - **ChatML with a default system prompt** (SmolLM2-Instruct) — the same,
///   preceded by `<|im_start|>system\n{default}<|im_end|>\n` when the first
///   message is not a system message; the default text is read from the
///   template.
///
/// Any other template is matched, as llama.cpp's
/// `llama_chat_apply_template` matches it, by the markers it contains (or
/// by llama.cpp's name for it: `chatml`, `llama2`, `llama2-sys`,
/// `llama2-sys-bos`, `llama2-sys-strip`, `llama3`, `phi3`, `zephyr`,
/// `deepseek`, `deepseek2`, `granite`, `granite-4.0`, `granite-4.1`), and
/// rendered as llama.cpp's built-in template of that family (checked
/// against llama.cpp on a fixture): ChatML (`<|im_start|>`), Llama 2
/// (`[INST]`; with `<<SYS>>` system blocks, a BOS inside the history, or
/// stripped messages as the template shows), Phi-3 (`<|assistant|>` and
/// `<|end|>`), Zephyr (`<|user|>` and `<|endoftext|>`), DeepSeek Coder
/// (`### Instruction:` and `<|EOT|>`), Llama 3 (`<|start_header_id|>`)
/// DeepSeek LLM / V2 (`'Assistant: ' + message['content'] +
/// eos_token`) and IBM Granite 3.x / 4.x (`<|start_of_role|>`). Like llama.cpp's, these renderings leave out
/// what a Jinja template adds beyond its family's layout (Qwen2.5's
/// default system prompt, Llama 3.1's date header). A template that
/// llama.cpp would match to another family (Mistral v3/v7, Gemma, Phi-4,
/// Falcon 3, Command-R, …) or to none is a clear
/// [`TokenizerError::UnsupportedChatTemplate`].
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
/// let llama3 = ChatTemplate::parse("{{ '<|start_header_id|>' + role + '<|end_header_id|>' }}")?;
/// assert_eq!(llama3, ChatTemplate::Llama3);
/// assert_eq!(
///     llama3.apply(&[ChatMessage::new("user", " Hi ")], true),
///     "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
///      <|start_header_id|>assistant<|end_header_id|>\n\n"
/// );
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
    /// Llama 2's `[INST] … [/INST]` turns, in llama.cpp's four variants.
    Llama2 {
        /// System messages as `<<SYS>>` blocks (else as plain lines).
        system_blocks: bool,
        /// `<s>` before each later `[INST]`.
        bos_inside_history: bool,
        /// Messages trimmed of surrounding white space.
        strip: bool,
    },
    /// Llama 3's `<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>`,
    /// the content trimmed.
    Llama3,
    /// Phi-3's `<|{role}|>\n{content}<|end|>\n`.
    Phi3,
    /// Zephyr's `<|{role}|>\n{content}<|endoftext|>\n`.
    Zephyr,
    /// DeepSeek Coder's instruction format: a system message as it is,
    /// `### Instruction:\n{content}\n` for the user,
    /// `### Response:\n{content}\n<|EOT|>\n` for the assistant (other
    /// roles left out, as llama.cpp does).
    Deepseek,
    /// DeepSeek LLM's and DeepSeek-V2's format (llama.cpp's `deepseek2`):
    /// a system message followed by a blank line, `User: {content}\n\n`,
    /// `Assistant: {content}<｜end▁of▁sentence｜>`, and `Assistant:` as the
    /// generation prompt.
    Deepseek2,
    /// IBM Granite's `<|start_of_role|>{role}<|end_of_role|>{content}<|end_of_text|>\n`,
    /// and `<|start_of_role|>assistant<|end_of_role|>` as the generation
    /// prompt. A message of role `assistant_tool_call` gets `<|tool_call|>`
    /// after its header, which Granite 4 (a template with `<tool_call>` or
    /// `<tools>`) writes as the assistant's.
    Granite {
        /// Granite 4's header for `assistant_tool_call` messages.
        tool_calls_as_assistant: bool,
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
        Self::parse_exact(template).or_else(|reason| {
            Self::detect(template).map_err(|family| TokenizerError::UnsupportedChatTemplate {
                reason: match family {
                    Some(family) => format!(
                        "llama.cpp would render it as its `{family}` template, which is not \
                         implemented here"
                    ),
                    None => format!("{reason}, and it has no marker of a known family"),
                } + "; supported: ChatML (SmolLM2's exactly), Llama 2, Llama 3, Phi-3, Zephyr, \
                     DeepSeek Coder, DeepSeek LLM / V2",
                excerpt: template.chars().take(80).collect(),
            })
        })
    }

    /// The two templates recognised by their exact text; the reason when
    /// the text is neither.
    fn parse_exact(template: &str) -> Result<Self, &'static str> {
        let text = template.trim().replace("\\n", "\n");
        let rest = text
            .strip_prefix(LOOP_OPEN)
            .ok_or("it does not start with a loop over the messages")?;
        if rest == CHATML_BODY {
            return Ok(Self::ChatMl {
                default_system: None,
            });
        }
        let system = rest
            .strip_prefix(DEFAULT_SYSTEM_OPEN)
            .and_then(|r| r.strip_suffix(CHATML_BODY))
            .and_then(|r| r.strip_suffix(DEFAULT_SYSTEM_CLOSE))
            .ok_or("its message layout is not exactly ChatML")?;
        if system.contains(['\'', '\\', '{', '}']) {
            return Err("its default system prompt is not a plain string literal");
        }
        Ok(Self::ChatMl {
            default_system: Some(system.to_owned()),
        })
    }

    /// llama.cpp's detection (`llm_chat_detect_template`): a template
    /// named by llama.cpp's name for it (`llama3`, …), else by markers in
    /// llama.cpp's order, up to DeepSeek-V2: the family, or `Err` with the name
    /// of a family llama.cpp knows but this crate does not render (`None`:
    /// no family).
    fn detect(t: &str) -> Result<Self, Option<&'static str>> {
        let llama2 = |system_blocks, bos_inside_history, strip| Self::Llama2 {
            system_blocks,
            bos_inside_history,
            strip,
        };
        match t {
            "chatml" => {
                return Ok(Self::ChatMl {
                    default_system: None,
                });
            }
            "llama2" => return Ok(llama2(false, false, false)),
            "llama2-sys" => return Ok(llama2(true, false, false)),
            "llama2-sys-bos" => return Ok(llama2(true, true, false)),
            "llama2-sys-strip" => return Ok(llama2(true, false, true)),
            "llama3" => return Ok(Self::Llama3),
            "phi3" => return Ok(Self::Phi3),
            "zephyr" => return Ok(Self::Zephyr),
            "deepseek" => return Ok(Self::Deepseek),
            "deepseek2" => return Ok(Self::Deepseek2),
            "granite" => {
                return Ok(Self::Granite {
                    tool_calls_as_assistant: false,
                });
            }
            "granite-4.0" | "granite-4.1" => {
                return Ok(Self::Granite {
                    tool_calls_as_assistant: true,
                });
            }
            _ => {}
        }
        let has = |m: &str| t.contains(m);
        if has("<|im_start|>") {
            return if has("<|im_sep|>") {
                Err(Some("phi4"))
            } else if has("<end_of_utterance>") {
                Err(Some("smolvlm"))
            } else {
                Ok(Self::ChatMl {
                    default_system: None,
                })
            };
        }
        if t.starts_with("mistral") || has("[INST]") {
            if has("[SYSTEM_PROMPT]") {
                return Err(Some("mistral-v7"));
            }
            if has("' [INST] ' + system_message") || has("[AVAILABLE_TOOLS]") {
                return Err(Some("mistral-v1/v3"));
            }
            let strip = has("content.strip()");
            let bos_inside_history = !strip && has("bos_token + '[INST]");
            let system_blocks = strip || bos_inside_history || has("<<SYS>>");
            return Ok(llama2(system_blocks, bos_inside_history, strip));
        }
        if has("<|assistant|>") && has("<|end|>") {
            return Ok(Self::Phi3);
        }
        // The rest of llama.cpp's chain, in its order: the first family
        // whose markers are all present.
        let others: &[(&[&str], Result<Self, &'static str>)] = &[
            (&["[gMASK]<sop>"], Err("chatglm4")),
            (
                &["<|assistant|>", "<|user|>"],
                Err("falcon3/glmedge/exaone"),
            ),
            (
                &["<|{{ item['role'] }}|>", "<|begin_of_image|>"],
                Err("glmedge"),
            ),
            (&["<|user|>", "<|endoftext|>"], Ok(Self::Zephyr)),
            (&["bos_token + message['role']"], Err("monarch")),
            (&["<start_of_turn>"], Err("gemma")),
            (&["'\\n\\nAssistant: ' + eos_token"], Err("orion")),
            (&["GPT4 Correct "], Err("openchat")),
            (&["USER: ", "ASSISTANT: "], Err("vicuna")),
            (&["### Instruction:", "<|EOT|>"], Ok(Self::Deepseek)),
            (
                &["<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>"],
                Err("command-r"),
            ),
            (
                &["<|start_header_id|>", "<|end_header_id|>"],
                Ok(Self::Llama3),
            ),
            (&["[gMASK]sop"], Err("chatglm3")),
            (&["<用户>"], Err("minicpm")),
            (
                &["'Assistant: ' + message['content'] + eos_token"],
                Ok(Self::Deepseek2),
            ),
            (
                &["<｜Assistant｜>", "<｜User｜>", "<｜end▁of▁sentence｜>"],
                Err("deepseek3"),
            ),
            (
                &["[|system|]", "[|assistant|]", "[|endofturn|]"],
                Err("exaone"),
            ),
            (&["rwkv-world"], Err("rwkv-world")),
            (
                &["{{- 'User: ' + message['content']|trim + '\\n\\n' -}}"],
                Err("rwkv-world"),
            ),
            (
                &["<|start_of_role|>"],
                Ok(Self::Granite {
                    tool_calls_as_assistant: has("<tool_call>") || has("<tools>"),
                }),
            ),
        ];
        for (markers, family) in others {
            if markers.iter().all(|m| has(m)) {
                return family.clone().map_err(Some);
            }
        }
        Err(None)
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends
    /// with the header of the assistant's reply (Llama 2 has none: its
    /// text ends after the last user turn's `[/INST]`).
    pub fn apply(&self, messages: &[ChatMessage<'_>], add_generation_prompt: bool) -> String {
        let mut out = String::new();
        match self {
            Self::ChatMl { default_system } => {
                let mut turn = |role: &str, content: &str| {
                    out.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
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
            }
            Self::Llama2 {
                system_blocks,
                bos_inside_history,
                strip,
            } => {
                out.push_str("[INST] ");
                let mut inside_turn = true;
                for m in messages {
                    let content = if *strip { trim(m.content) } else { m.content };
                    if !inside_turn {
                        inside_turn = true;
                        out.push_str(if *bos_inside_history {
                            "<s>[INST] "
                        } else {
                            "[INST] "
                        });
                    }
                    match m.role {
                        "system" if *system_blocks => {
                            out.push_str(&format!("<<SYS>>\n{content}\n<</SYS>>\n\n"));
                        }
                        "system" => out.push_str(&format!("{content}\n")),
                        "user" => out.push_str(&format!("{content} [/INST]")),
                        _ => {
                            out.push_str(&format!("{content}</s>"));
                            inside_turn = false;
                        }
                    }
                }
            }
            Self::Llama3 => {
                for m in messages {
                    out.push_str(&format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        m.role,
                        trim(m.content)
                    ));
                }
                if add_generation_prompt {
                    out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
                }
            }
            Self::Phi3 | Self::Zephyr => {
                let end = if *self == Self::Phi3 {
                    "<|end|>"
                } else {
                    "<|endoftext|>"
                };
                for m in messages {
                    out.push_str(&format!("<|{}|>\n{}{end}\n", m.role, m.content));
                }
                if add_generation_prompt {
                    out.push_str("<|assistant|>\n");
                }
            }
            Self::Deepseek => {
                for m in messages {
                    match m.role {
                        "system" => out.push_str(m.content),
                        "user" => out.push_str(&format!("### Instruction:\n{}\n", m.content)),
                        "assistant" => {
                            out.push_str(&format!("### Response:\n{}\n<|EOT|>\n", m.content));
                        }
                        _ => {}
                    }
                }
                if add_generation_prompt {
                    out.push_str("### Response:\n");
                }
            }
            Self::Deepseek2 => {
                for m in messages {
                    match m.role {
                        "system" => out.push_str(&format!("{}\n\n", m.content)),
                        "user" => out.push_str(&format!("User: {}\n\n", m.content)),
                        "assistant" => {
                            out.push_str(&format!("Assistant: {}<｜end▁of▁sentence｜>", m.content))
                        }
                        _ => {}
                    }
                }
                if add_generation_prompt {
                    out.push_str("Assistant:");
                }
            }
            Self::Granite {
                tool_calls_as_assistant,
            } => {
                for m in messages {
                    match m.role {
                        "assistant_tool_call" if *tool_calls_as_assistant => {
                            out.push_str("<|start_of_role|>assistant<|end_of_role|><|tool_call|>");
                        }
                        role => {
                            out.push_str(&format!("<|start_of_role|>{role}<|end_of_role|>"));
                            if role == "assistant_tool_call" {
                                out.push_str("<|tool_call|>");
                            }
                        }
                    }
                    out.push_str(&format!("{}<|end_of_text|>\n", m.content));
                }
                if add_generation_prompt {
                    out.push_str("<|start_of_role|>assistant<|end_of_role|>");
                }
            }
        }
        out
    }
}

/// `s` without leading and trailing ASCII white space (C's `isspace`, as
/// llama.cpp trims).
fn trim(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c'])
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
        let gemma = "{{ '<start_of_turn>' + role }}";
        let err = ChatTemplate::parse(gemma).unwrap_err().to_string();
        assert!(err.contains("`gemma`"), "{err}");
        // Not SmolLM2's text exactly: ChatML by its markers, as llama.cpp
        // renders it (without the default system prompt).
        let plain = ChatTemplate::ChatMl {
            default_system: None,
        };
        let tweaked = SMOL.replace("'<|im_end|>' + '\n'", "'<|im_end|>'");
        assert_eq!(ChatTemplate::parse(&tweaked).unwrap(), plain);
        let injected = SMOL.replace("Hugging Face", "{{ x }}");
        assert_eq!(ChatTemplate::parse(&injected).unwrap(), plain);
    }
}
