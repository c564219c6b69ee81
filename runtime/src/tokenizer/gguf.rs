//! Reading [`TokenizerConfig`] from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).

use graft_formats::Gguf;

use super::{Result, Tokenizer, TokenizerConfig, TokenizerError};

/// Read an optional key; absent is `None`, present with the wrong type is an error.
fn opt<T>(key: &'static str, r: graft_formats::Result<Option<T>>) -> Result<Option<T>> {
    r.map_err(|e| TokenizerError::BadKey {
        key,
        reason: e.to_string(),
    })
}

impl TokenizerConfig {
    /// Extract the tokenizer metadata of a GGUF file.
    pub fn from_gguf(g: &Gguf) -> Result<TokenizerConfig> {
        const MODEL: &str = "tokenizer.ggml.model";
        const TOKENS: &str = "tokenizer.ggml.tokens";
        let model = opt(MODEL, g.get_opt_str(MODEL))?.ok_or(TokenizerError::MissingKey(MODEL))?;
        let tokens =
            opt(TOKENS, g.get_opt_str_array(TOKENS))?.ok_or(TokenizerError::MissingKey(TOKENS))?;
        let string = |key: &'static str| -> Result<Option<String>> {
            Ok(opt(key, g.get_opt_str(key))?.map(str::to_string))
        };
        let id = |key: &'static str| opt(key, g.get_opt_u32(key));
        let flag = |key: &'static str| opt(key, g.get_opt_bool(key));
        Ok(TokenizerConfig {
            model: model.to_string(),
            pre: string("tokenizer.ggml.pre")?,
            tokens: tokens.to_vec(),
            scores: opt(
                "tokenizer.ggml.scores",
                g.get_opt_f32_array("tokenizer.ggml.scores"),
            )?
            .map(|c| c.into_owned()),
            token_types: opt(
                "tokenizer.ggml.token_type",
                g.get_opt_i32_array("tokenizer.ggml.token_type"),
            )?
            .map(|c| c.into_owned()),
            merges: opt(
                "tokenizer.ggml.merges",
                g.get_opt_str_array("tokenizer.ggml.merges"),
            )?
            .map(|m| m.to_vec()),
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            eot_id: id("tokenizer.ggml.eot_token_id")?,
            eom_id: id("tokenizer.ggml.eom_token_id")?,
            unk_id: id("tokenizer.ggml.unknown_token_id")?,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos: flag("tokenizer.ggml.add_bos_token")?,
            add_eos: flag("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix")?,
            chat_template: string("tokenizer.chat_template")?,
            model_name: string("general.name")?,
        })
    }
}

impl Tokenizer {
    /// Build the tokenizer described by a GGUF file's metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        Tokenizer::from_config(TokenizerConfig::from_gguf(g)?)
    }
}
