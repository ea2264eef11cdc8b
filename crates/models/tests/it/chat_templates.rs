//! Chat templates against llama.cpp's built-in renderings.
//!
//! `fixtures/chat_templates.json` was written by
//! `fixtures/make_chat_fixture.py` with llama-cpp-python 0.3.36
//! (`llama_chat_apply_template`, llama.cpp's non-Jinja path): template
//! sources carrying each family's markers, and the Jinja templates of
//! Phi-3's and Qwen2's vocabulary files, each rendering four conversations
//! (system messages, padded and non-ASCII content, several turns; Granite's
//! templates a tool call too) with and without the generation prompt. Every family lastmile renders must
//! give llama.cpp's text byte for byte, except a template lastmile
//! recognises exactly (Qwen2's is SmolLM2's ChatML with another default
//! system prompt), which must give what Jinja renders (jinja2 3.1.6, also
//! in the fixture; llama.cpp leaves the default system prompt out); the
//! others must be refused.
#![allow(clippy::unwrap_used)]

use lastmile_models::tokenizer::{ChatMessage, ChatTemplate};
use serde::Deserialize;

const FIXTURE: &str = include_str!("../fixtures/chat_templates.json");
/// Families llama.cpp renders and lastmile does not.
const REFUSED: &[&str] = &["mistral-v7", "gemma", "falcon3"];

#[derive(Deserialize)]
struct Fixture {
    templates: Vec<Template>,
}

#[derive(Deserialize)]
struct Template {
    name: String,
    source: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    messages: Vec<Message>,
    add_generation_prompt: bool,
    rendered: Option<String>,
    /// jinja2's rendering, for the real Jinja templates.
    jinja: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

#[test]
fn families_render_as_llama_cpp() {
    let fixture: Fixture = serde_json::from_str(FIXTURE).unwrap();
    let mut checked = 0;
    for t in &fixture.templates {
        let parsed = ChatTemplate::parse(&t.source);
        if REFUSED.contains(&t.name.as_str()) {
            assert!(parsed.is_err(), "{}: accepted as {parsed:?}", t.name);
            continue;
        }
        let template = parsed.unwrap_or_else(|e| panic!("{}: {e}", t.name));
        for case in &t.cases {
            let messages: Vec<ChatMessage<'_>> = case
                .messages
                .iter()
                .map(|m| ChatMessage::new(&m.role, &m.content))
                .collect();
            let exact = matches!(
                template,
                ChatTemplate::ChatMl {
                    default_system: Some(_)
                }
            );
            let expected = if exact {
                case.jinja.as_deref().unwrap()
            } else {
                case.rendered.as_deref().unwrap()
            };
            assert_eq!(
                template.apply(&messages, case.add_generation_prompt),
                expected,
                "{} ({template:?}), generation prompt {}",
                t.name,
                case.add_generation_prompt
            );
            checked += 1;
        }
    }
    assert!(checked >= 80, "only {checked} renderings checked");
}

#[test]
fn llama_cpp_names_select_a_family() {
    for (name, family) in [
        ("llama3", ChatTemplate::Llama3),
        ("phi3", ChatTemplate::Phi3),
        ("zephyr", ChatTemplate::Zephyr),
        (
            "granite",
            ChatTemplate::Granite {
                tool_calls_as_assistant: false,
            },
        ),
        (
            "granite-4.1",
            ChatTemplate::Granite {
                tool_calls_as_assistant: true,
            },
        ),
    ] {
        assert_eq!(ChatTemplate::parse(name).unwrap(), family);
    }
    assert!(ChatTemplate::parse("llama4").is_err());
}
