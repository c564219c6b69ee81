//! Built-in chat templates: ChatML, Llama-2 and Llama-3 prompt formats.
//!
//! Like llama.cpp's `llm_chat_apply_template`, this does not run the Jinja template stored in
//! `tokenizer.chat_template`; it recognises the format by markers in it and renders that format
//! in code. In particular the ChatML renderer adds no default system prompt even when the file's
//! Jinja template would (SmolLM2, Qwen2 do).

use super::{Result, Tokenizer, TokenizerError};

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// "system", "user", "assistant", ...
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A recognised prompt format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\ncontent<|im_end|>\n` (Qwen2, SmolLM2, ...).
    ChatMl,
    /// `[INST] ... [/INST]` Llama-2 family.
    Llama2 {
        /// System messages are wrapped in `<<SYS>>`.
        system: bool,
        /// `<s>` before each later `[INST]`.
        bos_inside: bool,
        /// Message content is trimmed.
        strip: bool,
    },
    /// `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>` (Llama-3).
    Llama3,
}

impl ChatTemplate {
    /// Recognise a template from its name ("chatml", "llama2", "llama2-sys", "llama2-sys-bos",
    /// "llama2-sys-strip", "llama3") or from markers in its Jinja source.
    pub fn detect(tmpl: &str) -> Result<ChatTemplate> {
        let llama2 = |system, bos_inside, strip| ChatTemplate::Llama2 {
            system,
            bos_inside,
            strip,
        };
        match tmpl {
            "chatml" => return Ok(ChatTemplate::ChatMl),
            "llama2" => return Ok(llama2(false, false, false)),
            "llama2-sys" => return Ok(llama2(true, false, false)),
            "llama2-sys-bos" => return Ok(llama2(true, true, false)),
            "llama2-sys-strip" => return Ok(llama2(true, false, true)),
            "llama3" => return Ok(ChatTemplate::Llama3),
            _ => {}
        }
        let has = |s: &str| tmpl.contains(s);
        let unsupported = || Err(TokenizerError::UnsupportedChatTemplate(tmpl.to_string()));
        if has("<|im_start|>") {
            // Phi-4 and SmolVLM use the marker with a different layout
            if has("<|im_sep|>") || has("<end_of_utterance>") {
                return unsupported();
            }
            Ok(ChatTemplate::ChatMl)
        } else if tmpl.starts_with("mistral") || has("[INST]") {
            if has("[SYSTEM_PROMPT]")
                || has("' [INST] ' + system_message")
                || has("[AVAILABLE_TOOLS]")
            {
                return unsupported(); // Mistral v1/v3/v7 formats
            }
            let strip = has("content.strip()");
            let bos_inside = has("bos_token + '[INST]");
            Ok(llama2(
                strip || bos_inside || has("<<SYS>>"),
                bos_inside && !strip,
                strip,
            ))
        } else if has("<|start_header_id|>") && has("<|end_header_id|>") {
            Ok(ChatTemplate::Llama3)
        } else {
            unsupported()
        }
    }

    /// Render `messages`; with `add_assistant`, end with the opening of an assistant turn.
    pub fn apply(self, messages: &[ChatMessage], add_assistant: bool) -> String {
        let mut s = String::new();
        match self {
            ChatTemplate::ChatMl => {
                for m in messages {
                    s.push_str(&format!(
                        "<|im_start|>{}\n{}<|im_end|>\n",
                        m.role, m.content
                    ));
                }
                if add_assistant {
                    s.push_str("<|im_start|>assistant\n");
                }
            }
            ChatTemplate::Llama2 {
                system,
                bos_inside,
                strip,
            } => {
                let mut inside_turn = true;
                s.push_str("[INST] ");
                for m in messages {
                    let content = if strip { trim(&m.content) } else { &m.content };
                    if !inside_turn {
                        inside_turn = true;
                        s.push_str(if bos_inside { "<s>[INST] " } else { "[INST] " });
                    }
                    match m.role.as_str() {
                        "system" if system => {
                            s.push_str(&format!("<<SYS>>\n{content}\n<</SYS>>\n\n"))
                        }
                        "system" => s.push_str(&format!("{content}\n")),
                        "user" => s.push_str(&format!("{content} [/INST]")),
                        _ => {
                            s.push_str(&format!("{content}</s>"));
                            inside_turn = false;
                        }
                    }
                }
            }
            ChatTemplate::Llama3 => {
                for m in messages {
                    s.push_str(&format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        m.role,
                        trim(&m.content)
                    ));
                }
                if add_assistant {
                    s.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
                }
            }
        }
        s
    }
}

/// Trim C-locale whitespace (llama.cpp's `trim`).
fn trim(s: &str) -> &str {
    s.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r'))
}

impl Tokenizer {
    /// The model's prompt format: detected from `tokenizer.chat_template`, ChatML when the
    /// file has none (llama.cpp's default).
    pub fn chat_format(&self) -> Result<ChatTemplate> {
        ChatTemplate::detect(self.chat_template.as_deref().unwrap_or("chatml"))
    }

    /// Render a conversation with the model's template (see [`ChatTemplate`]). The result
    /// contains control tokens as text: encode it with `parse_special = true`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_assistant: bool,
    ) -> Result<String> {
        Ok(self.chat_format()?.apply(messages, add_assistant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_without_default_system_prompt() {
        let smol = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        let t = ChatTemplate::detect(smol).unwrap();
        assert_eq!(t, ChatTemplate::ChatMl);
        let out = t.apply(&[ChatMessage::new("user", "Hi")], true);
        assert_eq!(
            out,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn llama3_and_llama2() {
        let msgs = [
            ChatMessage::new("system", "S"),
            ChatMessage::new("user", " U "),
            ChatMessage::new("assistant", "A"),
        ];
        assert_eq!(
            ChatTemplate::Llama3.apply(&msgs[1..2], true),
            "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let l2 = ChatTemplate::detect("llama2-sys").unwrap();
        assert_eq!(
            l2.apply(&msgs, false),
            "[INST] <<SYS>>\nS\n<</SYS>>\n\n U  [/INST]A</s>"
        );
    }

    #[test]
    fn unknown_template_is_an_error() {
        assert!(matches!(
            ChatTemplate::detect("{{ foo }}"),
            Err(TokenizerError::UnsupportedChatTemplate(_))
        ));
    }
}
