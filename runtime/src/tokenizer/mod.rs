//! Tokenizer: text <-> token ids for GGUF models, matching llama.cpp token for token.
//!
//! This module owns the vocabulary read from GGUF metadata (`tokenizer.ggml.*`, see the GGUF spec
//! <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md#tokenizer>), encoding
//! (special-token splitting, pre-tokenization, BPE merging), decoding (pieces, a streaming UTF-8
//! [`Decoder`]) and the simple built-in chat templates ([`ChatTemplate`]).
//!
//! Two vocabulary models are supported:
//! - `gpt2`: byte-level BPE with merges and a pre-tokenizer chosen by `tokenizer.ggml.pre`
//!   (Llama-3, Qwen2, SmolLM/StarCoder, GPT-2, Falcon, DeepSeek, ... see `pretokenize.rs`);
//! - `llama`: SentencePiece BPE with scores and `<0xXX>` byte fallback.
//!
//! Behaviour follows llama.cpp's `llama-vocab.cpp` (checked against its `ggml-vocab-*.gguf` test
//! vectors in `tests/tokenizer_vocab.rs`); the code is our own.

mod bpe;
mod chat;
mod decode;
mod encode;
mod gguf;
mod pretokenize;
mod spm;
mod unicode;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub use chat::{ChatMessage, ChatTemplate};
pub use decode::Decoder;

use bpe::BpeModel;
use pretokenize::PreTokenizer;

/// Errors from building a tokenizer or applying a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required metadata key is absent.
    #[error("tokenizer metadata key `{0}` is missing")]
    MissingKey(&'static str),
    /// A metadata key has the wrong type or could not be read.
    #[error("tokenizer metadata key `{key}` is invalid: {reason}")]
    BadKey {
        /// The GGUF key.
        key: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// `tokenizer.ggml.model` names a vocabulary type this runtime does not implement.
    #[error("unsupported tokenizer model `{0}` (supported: gpt2, llama)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this runtime does not implement.
    #[error("unsupported pre-tokenizer `{0}`")]
    UnsupportedPreTokenizer(String),
    /// The chat template is not one of the built-in formats.
    #[error("unsupported chat template (not ChatML, Llama-2 or Llama-3 style): {0:.80}")]
    UnsupportedChatTemplate(String),
    /// A per-token array does not have one entry per token.
    #[error("`{key}` has {got} entries but the vocabulary has {expected} tokens")]
    LengthMismatch {
        /// The GGUF key of the array.
        key: &'static str,
        /// Number of tokens.
        expected: usize,
        /// Number of entries found.
        got: usize,
    },
    /// A special-token id in the metadata is outside the vocabulary.
    #[error("`{key}` = {id} is not a token id (vocabulary has {n_vocab} tokens)")]
    BadTokenId {
        /// The GGUF key.
        key: &'static str,
        /// The id found.
        id: u32,
        /// Vocabulary size.
        n_vocab: usize,
    },
    /// The vocabulary is empty or too large for 32-bit ids.
    #[error("`{what}` has an unusable length {len}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A pre-tokenizer regex failed to compile (a bug, reported instead of panicking).
    #[error("pre-tokenizer regex: {0}")]
    Regex(String),
}

/// Result alias for this module.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// Everything the tokenizer reads from GGUF metadata, already extracted.
///
/// [`Tokenizer::from_gguf`] fills this from a file; tests and other sources can build it
/// directly and call [`Tokenizer::from_config`].
#[derive(Debug, Clone, Default)]
pub struct TokenizerConfig {
    /// `tokenizer.ggml.model`: "gpt2" or "llama".
    pub model: String,
    /// `tokenizer.ggml.pre` (BPE only; `None` means "default").
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece merge priority).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges` ("left right", rank = index).
    pub merges: Option<Vec<String>>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot_id: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`.
    pub eom_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// `general.name` (llama.cpp adjusts special-token attributes for Phi-3 by name).
    pub model_name: Option<String>,
}

/// A fast non-cryptographic hasher (FxHash-style) for the vocabulary and merge tables. Their
/// keys come from the model file and lookups only read them, so flooding is not a concern.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Token attribute bits (llama.cpp's `llama_token_attr`).
pub(crate) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const RSTRIP: u16 = 1 << 8;
}

/// The token table shared by the encoders.
pub(crate) struct Vocab {
    pub tokens: Vec<String>,
    pub token_to_id: FastMap<String, u32>,
    pub scores: Vec<f32>,
    pub attrs: Vec<u16>,
    /// Token of each byte: `<0xXX>` (SentencePiece) or the byte-level character (BPE).
    pub byte_ids: [Option<u32>; 256],
    /// Token whose text is exactly this ASCII character.
    pub ascii_ids: [Option<u32>; 128],
    pub unk: Option<u32>,
}

/// Which encoder a vocabulary uses.
pub(crate) enum Model {
    /// Byte-level BPE with a pre-tokenizer.
    Bpe {
        merges: Box<BpeModel>,
        pre: PreTokenizer,
        ignore_merges: bool,
    },
    /// SentencePiece BPE.
    Spm,
}

/// A tokenizer built from GGUF metadata. Immutable and `Sync`: share it between sessions.
pub struct Tokenizer {
    pub(crate) vocab: Vocab,
    pub(crate) model: Model,
    pub(crate) pre_name: Option<String>,
    /// Control / user-defined / unknown tokens, longest text first.
    pub(crate) special: Vec<u32>,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) eot: Option<u32>,
    pub(crate) eom: Option<u32>,
    pub(crate) pad: Option<u32>,
    /// End-of-generation tokens, sorted.
    pub(crate) eog: Vec<u32>,
    pub(crate) add_bos: bool,
    pub(crate) add_eos: bool,
    pub(crate) add_space_prefix: bool,
    pub(crate) clean_spaces: bool,
    pub(crate) chat_template: Option<String>,
}

/// Token texts llama.cpp treats as end-of-turn, in order of preference for [`Tokenizer::eot`].
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
/// Token texts llama.cpp treats as end-of-generation.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// Fill-in-the-middle token texts (marked control; pad/repo/sep also end generation).
const FIM_TEXTS: &[&[&str]] = &[
    &[
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<｜fim▁begin｜>",
        "<PRE>",
        "▁<PRE>",
        "<|code_prefix|>",
        "<|prefix|>",
    ],
    &[
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<｜fim▁hole｜>",
        "<SUF>",
        "▁<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
    ],
    &[
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<｜fim▁end｜>",
        "<MID>",
        "▁<MID>",
        "<|code_middle|>",
        "<|middle|>",
    ],
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    &[
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
    ],
    &["<|file_sep|>"],
];

impl Tokenizer {
    /// Build a tokenizer from already-extracted metadata.
    pub fn from_config(cfg: TokenizerConfig) -> Result<Tokenizer> {
        let n = cfg.tokens.len();
        if n == 0 || n >= u32::MAX as usize / 2 {
            return Err(TokenizerError::TooLarge {
                what: "tokenizer.ggml.tokens",
                len: n,
            });
        }
        let is_bpe = match cfg.model.as_str() {
            "gpt2" => true,
            "llama" => false,
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        if let Some(s) = &cfg.scores {
            check_len("tokenizer.ggml.scores", n, s.len())?;
        }
        if let Some(t) = &cfg.token_types {
            check_len("tokenizer.ggml.token_type", n, t.len())?;
        }

        let mut tokens = cfg.tokens;
        let mut token_to_id = FastMap::with_capacity_and_hasher(n, Default::default());
        for (i, t) in tokens.iter_mut().enumerate() {
            if t.is_empty() {
                *t = format!("[EMPTY_{i}]");
            }
            token_to_id.insert(t.clone(), i as u32); // last duplicate wins, like llama.cpp
        }
        let mut attrs: Vec<u16> = match &cfg.token_types {
            None => vec![attr::NORMAL; n],
            Some(types) => types
                .iter()
                .map(|t| match t {
                    1 => attr::NORMAL,
                    2 => attr::UNKNOWN,
                    3 => attr::CONTROL,
                    4 => attr::USER_DEFINED,
                    5 => attr::UNUSED,
                    6 => attr::BYTE,
                    _ => 0,
                })
                .collect(),
        };
        let scores = cfg.scores.unwrap_or_else(|| vec![0.0; n]);

        // model-specific defaults, then metadata
        let (model, mut add_bos, mut clean_spaces, add_space_prefix_default, defaults) = if is_bpe {
            let (pre, flags) = PreTokenizer::new(cfg.pre.as_deref())?;
            let merges_list = cfg
                .merges
                .as_deref()
                .ok_or(TokenizerError::MissingKey("tokenizer.ggml.merges"))?;
            let merges = BpeModel::new(n, &token_to_id, merges_list)?;
            let model = Model::Bpe {
                merges: Box::new(merges),
                pre,
                ignore_merges: flags.ignore_merges,
            };
            (
                model,
                flags.add_bos,
                flags.clean_spaces,
                false,
                [Some(11), Some(11), None],
            )
        } else {
            (Model::Spm, true, false, true, [Some(1), Some(2), Some(0)])
        };
        let add_space_prefix = cfg.add_space_prefix.unwrap_or(add_space_prefix_default);
        if let Some(b) = cfg.add_bos {
            add_bos = b;
        }
        let add_eos = cfg.add_eos.unwrap_or(false);
        if !is_bpe {
            clean_spaces = false;
        }

        let in_range = |d: Option<u32>| d.filter(|&id| (id as usize) < n);
        let check = |key: &'static str, v: Option<u32>, d: Option<u32>| -> Result<Option<u32>> {
            match v {
                Some(id) if id as usize >= n => Err(TokenizerError::BadTokenId {
                    key,
                    id,
                    n_vocab: n,
                }),
                Some(id) => Ok(Some(id)),
                None => Ok(in_range(d)),
            }
        };
        let bos = check("tokenizer.ggml.bos_token_id", cfg.bos_id, defaults[0])?;
        let eos = check("tokenizer.ggml.eos_token_id", cfg.eos_id, defaults[1])?;
        let unk = check("tokenizer.ggml.unknown_token_id", cfg.unk_id, defaults[2])?;
        let mut eot = check("tokenizer.ggml.eot_token_id", cfg.eot_id, None)?;
        let mut eom = check("tokenizer.ggml.eom_token_id", cfg.eom_id, None)?;
        let pad = check("tokenizer.ggml.padding_token_id", cfg.pad_id, None)?;

        // text-based detection of end-of-turn, FIM and end-of-generation tokens
        let find = |t: &str| token_to_id.get(t).copied();
        if eot.is_none() {
            eot = EOT_TEXTS.iter().find_map(|t| find(t));
        }
        if eom.is_none() {
            eom = find("<|eom_id|>");
        }
        for id in [eot, eom].into_iter().flatten() {
            attrs[id as usize] |= attr::CONTROL;
        }
        let mut eog: Vec<u32> = Vec::new();
        for (k, group) in FIM_TEXTS.iter().enumerate() {
            if let Some(id) = group.iter().find_map(|t| find(t)) {
                attrs[id as usize] |= attr::CONTROL;
                if k >= 3 {
                    eog.push(id);
                }
            }
        }
        for (i, a) in attrs.iter_mut().enumerate() {
            if *a & attr::CONTROL != 0 && tokens[i].contains("unused") {
                *a |= attr::UNUSED;
            }
        }
        for t in EOG_TEXTS {
            if let Some(id) = find(t) {
                eog.push(id);
                attrs[id as usize] |= attr::CONTROL;
            }
        }
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(id) = find(t) {
                attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        let has = |eog: &[u32], t: &str| find(t).is_some_and(|id| eog.contains(&id));
        if let Some(end) = find("<|end|>").filter(|id| eog.contains(id)) {
            let (ret, call) = (
                has(&eog, "<|return|>"),
                has(&eog, "<|call|>") || has(&eog, "<|calls|>"),
            );
            if call && (ret || has(&eog, "<|flush|>")) {
                eog.retain(|&x| x != end);
                attrs[end as usize] = attr::USER_DEFINED;
            }
        }
        if let Some(s) = find("</s>").filter(|id| eog.contains(id)) {
            if has(&eog, "<|tool_response>") || has(&eog, "<|plamo:eos|>") {
                eog.retain(|&x| x != s);
                attrs[s as usize] = attr::NORMAL;
            }
        }
        eog.sort_unstable();
        eog.dedup();

        let mut special: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        special.sort_by(|&a, &b| {
            tokens[b as usize]
                .len()
                .cmp(&tokens[a as usize].len())
                .then(a.cmp(&b))
        });

        // Phi-3: special tokens swallow following whitespace (llama.cpp sets this by model name)
        let name = cfg.model_name.as_deref().unwrap_or("").to_lowercase();
        if name.contains("phi-3") || name.contains("phi3") {
            for &id in &special {
                attrs[id as usize] |= attr::RSTRIP;
            }
            if let Some(id) = find("</s>") {
                attrs[id as usize] |= attr::RSTRIP;
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(id) = find(t) {
                    attrs[id as usize] &= !attr::RSTRIP;
                }
            }
        }

        let mut byte_ids = [None; 256];
        let mut ascii_ids = [None; 128];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = if is_bpe {
                find(unicode::byte_to_char(b as u8).encode_utf8(&mut [0u8; 4]))
            } else {
                find(&format!("<0x{b:02X}>")).or_else(|| {
                    (b < 0x80)
                        .then(|| find((b as u8 as char).encode_utf8(&mut [0u8; 4])))
                        .flatten()
                })
            };
        }
        for (b, slot) in ascii_ids.iter_mut().enumerate() {
            *slot = find((b as u8 as char).encode_utf8(&mut [0u8; 4]));
        }

        Ok(Tokenizer {
            vocab: Vocab {
                tokens,
                token_to_id,
                scores,
                attrs,
                byte_ids,
                ascii_ids,
                unk,
            },
            model,
            pre_name: if is_bpe {
                Some(cfg.pre.unwrap_or_else(|| "default".into()))
            } else {
                None
            },
            special,
            bos,
            eos,
            eot,
            eom,
            pad,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            chat_template: cfg.chat_template,
        })
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.vocab.tokens.len()
    }
    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    /// End-of-turn token (from metadata, else detected by text, e.g. `<|im_end|>`).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }
    /// End-of-message token (`<|eom_id|>`).
    pub fn eom(&self) -> Option<u32> {
        self.eom
    }
    /// Padding token.
    pub fn pad(&self) -> Option<u32> {
        self.pad
    }
    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    /// Whether `encode(.., add_special = true, ..)` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }
    /// Whether generation should stop at `id` (EOS, EOT, EOM and tokens such as `<|im_end|>`).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }
    /// All end-of-generation tokens, sorted.
    pub fn eog_tokens(&self) -> &[u32] {
        &self.eog
    }
    /// Whether `id` is a control token (rendered only when asked for, never produced by
    /// `encode` unless `parse_special`).
    pub fn is_control(&self, id: u32) -> bool {
        self.attr(id) & attr::CONTROL != 0
    }
    /// The token's text as stored in the vocabulary (byte-level / `▁`-escaped form).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.tokens.get(id as usize).map(String::as_str)
    }
    /// Id of a token by its exact vocabulary text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.token_to_id.get(text).copied()
    }
    /// `tokenizer.chat_template`, if the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
    /// The pre-tokenizer name (`tokenizer.ggml.pre`) for BPE vocabularies.
    pub fn pre_tokenizer(&self) -> Option<&str> {
        self.pre_name.as_deref()
    }

    pub(crate) fn attr(&self, id: u32) -> u16 {
        self.vocab.attrs.get(id as usize).copied().unwrap_or(0)
    }
}

fn check_len(key: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected != got {
        return Err(TokenizerError::LengthMismatch { key, expected, got });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bpe_config() -> TokenizerConfig {
        // byte-level: "Ġ" is the space byte
        let tokens = ["a", "b", "Ġ", "ab", "Ġab", "<|im_end|>"];
        TokenizerConfig {
            model: "gpt2".into(),
            pre: Some("gpt-2".into()),
            tokens: tokens.iter().map(|s| s.to_string()).collect(),
            token_types: Some(vec![1, 1, 1, 1, 1, 3]),
            merges: Some(vec!["a b".into(), "Ġ ab".into()]),
            ..Default::default()
        }
    }

    #[test]
    fn tiny_bpe_merges_and_specials() {
        let tok = Tokenizer::from_config(bpe_config()).unwrap();
        assert_eq!(tok.encode("ab ab", false, false), vec![3, 4]);
        assert_eq!(tok.encode("ab<|im_end|>", false, true), vec![3, 5]);
        assert_eq!(tok.eot(), Some(5));
        assert!(tok.is_eog(5));
        assert_eq!(tok.decode(&[3, 4, 5]), "ab ab<|im_end|>");
    }

    #[test]
    fn bad_metadata_is_an_error() {
        let mut c = bpe_config();
        c.token_types = Some(vec![1; 3]);
        assert!(matches!(
            Tokenizer::from_config(c),
            Err(TokenizerError::LengthMismatch {
                key: "tokenizer.ggml.token_type",
                expected: 6,
                got: 3
            })
        ));
        let mut c = bpe_config();
        c.eos_id = Some(99);
        assert!(matches!(
            Tokenizer::from_config(c),
            Err(TokenizerError::BadTokenId { id: 99, .. })
        ));
        let mut c = bpe_config();
        c.model = "t5".into();
        assert!(
            matches!(Tokenizer::from_config(c), Err(TokenizerError::UnsupportedModel(m)) if m == "t5")
        );
        let mut c = bpe_config();
        c.merges = None;
        assert!(matches!(
            Tokenizer::from_config(c),
            Err(TokenizerError::MissingKey("tokenizer.ggml.merges"))
        ));
        let mut c = bpe_config();
        c.tokens.clear();
        c.token_types = None;
        assert!(Tokenizer::from_config(c).is_err());
    }

    #[test]
    fn tiny_spm_with_byte_fallback() {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        tokens.extend((0..256).map(|b| format!("<0x{b:02X}>")));
        tokens.extend(["▁", "h", "i", "hi", "▁hi"].iter().map(|s| s.to_string()));
        let n = tokens.len();
        let mut types = vec![2, 3, 3];
        types.extend(std::iter::repeat_n(6, 256));
        types.extend([1; 5]);
        let mut scores = vec![0.0; n];
        scores[n - 2] = -1.0; // "hi"
        scores[n - 1] = -2.0; // "▁hi"
        let tok = Tokenizer::from_config(TokenizerConfig {
            model: "llama".into(),
            tokens,
            scores: Some(scores),
            token_types: Some(types),
            ..Default::default()
        })
        .unwrap();
        let hi_sp = (n - 1) as u32;
        assert_eq!(tok.encode("hi", true, false), vec![1, hi_sp]);
        // 'é' is not a token: its two UTF-8 bytes come out as byte tokens
        assert_eq!(
            tok.encode("é", false, false),
            vec![(n - 5) as u32, 3 + 0xC3, 3 + 0xA9]
        );
        assert_eq!(tok.decode(&[hi_sp, 3 + 0xC3, 3 + 0xA9]), "hié");
        let mut d = Decoder::new(&tok);
        assert_eq!(d.push(hi_sp), "hi");
        assert_eq!(d.push(3 + 0xC3), "");
        assert_eq!(d.push(3 + 0xA9), "é");
    }
}
