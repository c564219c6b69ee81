//! Training data: plain text (tokenized and cut into `ctx`-token chunks), or JSONL lines of
//! `{"text"}`, `{"prompt", "completion"}` (loss on the completion only) or `{"messages"}`
//! (rendered with the model's chat template; loss on assistant turns only). Bad lines are
//! reported with their line number and skipped, or fail the load (`strict`).

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::tokenizer::{ChatMessage, Tokenizer};

/// One training sequence: tokens and, per position, whether that token is a scored target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Token ids (at most `ctx`).
    pub tokens: Vec<u32>,
    /// `mask[t]`: token `t` is predicted and scored (prompt tokens are not).
    pub mask: Vec<bool>,
}

/// A loaded data set.
#[derive(Clone, Debug, Default)]
pub struct TrainData {
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// `(line, reason)` of every skipped JSONL line.
    pub skipped: Vec<(usize, String)>,
}

impl TrainData {
    /// Loads `path` (`.jsonl` by extension, else plain text) for sequences of `ctx` tokens.
    pub fn load(path: &Path, tok: &Tokenizer, ctx: usize, strict: bool) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            cause: e,
        })?;
        if path.extension().is_some_and(|e| e == "jsonl") {
            Self::from_jsonl(&text, tok, ctx, strict, &path.display().to_string())
        } else {
            Ok(Self::from_text(&text, tok, ctx))
        }
    }

    /// Plain text: the whole text tokenized (BOS per the file's flag), cut into `ctx` chunks;
    /// every token but each chunk's first is a target.
    pub fn from_text(text: &str, tok: &Tokenizer, ctx: usize) -> Self {
        let tokens = tok.encode(text, true, false);
        let examples = tokens
            .chunks(ctx)
            .filter(|c| c.len() >= 2)
            .map(|c| Example {
                tokens: c.to_vec(),
                mask: vec![true; c.len()],
            })
            .collect();
        Self {
            examples,
            skipped: Vec::new(),
        }
    }

    /// JSONL as described in the module docs.
    pub fn from_jsonl(
        text: &str,
        tok: &Tokenizer,
        ctx: usize,
        strict: bool,
        name: &str,
    ) -> Result<Self> {
        let mut out = Self::default();
        for (i, line) in text.lines().enumerate() {
            let lineno = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(line, tok, ctx) {
                Ok(ex) => out.examples.push(ex),
                Err(why) if strict => {
                    return Err(Error::InvalidRequest(format!("{name}:{lineno}: {why}")));
                }
                Err(why) => out.skipped.push((lineno, why)),
            }
        }
        Ok(out)
    }
}

fn parse_line(line: &str, tok: &Tokenizer, ctx: usize) -> std::result::Result<Example, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    let (mut tokens, mut mask) = (Vec::new(), Vec::new());
    let mut push = |text: &str, scored: bool, first: bool| {
        let t = tok.encode(text, first, true);
        mask.extend(std::iter::repeat_n(scored, t.len()));
        tokens.extend(t);
    };
    if let Some(t) = s("text") {
        push(t, true, true);
    } else if let (Some(p), Some(c)) = (s("prompt"), s("completion")) {
        push(p, false, true);
        push(c, true, false);
    } else if let Some(msgs) = v.get("messages").and_then(Value::as_array) {
        let mut hist: Vec<ChatMessage> = Vec::new();
        let mut rendered = String::new();
        for m in msgs {
            let (Some(role), Some(content)) = (
                m.get("role").and_then(Value::as_str),
                m.get("content").and_then(Value::as_str),
            ) else {
                return Err("each message needs string \"role\" and \"content\"".into());
            };
            hist.push(ChatMessage::new(role, content));
            let full = tok
                .apply_chat_template(&hist, false)
                .map_err(|e| e.to_string())?;
            let new = full
                .strip_prefix(rendered.as_str())
                .unwrap_or(&full)
                .to_string();
            push(&new, role == "assistant", rendered.is_empty());
            rendered = full;
        }
    } else {
        return Err("expected {\"text\"}, {\"prompt\",\"completion\"} or {\"messages\"}".into());
    }
    if tokens.len() < 2 || !mask.iter().skip(1).any(|&m| m) {
        return Err("nothing to learn: fewer than 2 tokens or no scored token".into());
    }
    tokens.truncate(ctx);
    mask.truncate(ctx);
    Ok(Example { tokens, mask })
}
