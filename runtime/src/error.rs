//! The runtime's error type.

pub use graft_formats::FormatError;

use crate::tokenizer::TokenizerError;

/// Errors from the graft runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model or adapter file is malformed.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A ggml failure (allocation, compute).
    #[error(transparent)]
    Ggml(#[from] graft_ggml::Error),
    /// The tokenizer metadata is unusable.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The file's architecture is not one graft runs.
    #[error("unsupported architecture {0:?} (graft runs: llama, qwen2)")]
    UnsupportedArchitecture(String),
    /// A required tensor is missing from the model file.
    #[error("model tensor {0} is missing")]
    MissingTensor(String),
    /// A tensor has the wrong shape for the hyper-parameters.
    #[error("tensor {tensor} has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor name.
        tensor: String,
        /// Expected ggml dims.
        expected: Vec<u64>,
        /// Dims in the file.
        got: Vec<u64>,
    },
    /// A tensor type ggml cannot compute with.
    #[error("tensor {tensor} has type {ty}, which this build of ggml cannot compute with")]
    UnsupportedTensorType {
        /// The tensor name.
        tensor: String,
        /// Its type.
        ty: String,
    },
    /// Hyper-parameters that do not make sense.
    #[error("invalid model hyper-parameter: {0}")]
    InvalidHparams(String),
    /// The adapter does not fit the base model or is malformed; the message names the tensor
    /// or key.
    #[error("invalid adapter: {0}")]
    InvalidAdapter(String),
    /// The adapter was made for another base model (its recorded fingerprint differs).
    #[error("invalid adapter: the adapter was made for another base model ({}; adapter's base {adapter}, this base {base})", wrong_base_reason(adapter, base))]
    WrongBase {
        /// The fingerprint the adapter records.
        adapter: String,
        /// This base model's fingerprint.
        base: String,
    },
    /// The file is a GGUF of another kind than the operation needs (an adapter given as the
    /// model, a model given as an adapter to resume).
    #[error("the file is {found}, not {expected}")]
    WrongFileKind {
        /// What the file is, in words ("a lora adapter", "a base model (llama)").
        found: String,
        /// What was expected ("a base model", "an adapter").
        expected: &'static str,
    },
    /// The session's context cannot hold the new tokens.
    #[error("context full: {cached} positions cached + {new} new > n_ctx {n_ctx}")]
    ContextFull {
        /// Positions already cached.
        cached: usize,
        /// Positions the request adds.
        new: usize,
        /// The session's context length.
        n_ctx: usize,
    },
    /// The adapter registry refused the operation (limits, duplicate name, unknown name).
    #[error("adapter registry: {0}")]
    Registry(String),
    /// The request does not fit (context full, empty prompt, bad token id...).
    #[error("{0}")]
    InvalidRequest(String),
    /// The operation was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
    /// An I/O error with the path it concerns.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// The cause (printed in the message, so not also returned by `source()`).
        cause: std::io::Error,
    },
}

/// Result alias for the runtime.
pub type Result<T> = std::result::Result<T, Error>;

/// Why two fingerprints (`[v2:]arch:n_layer:n_embd:n_vocab:hash`) differ, in words.
fn wrong_base_reason(adapter: &str, base: &str) -> String {
    let fields = |f: &str| -> Vec<String> {
        f.strip_prefix("v2:")
            .unwrap_or(f)
            .split(':')
            .map(str::to_string)
            .collect()
    };
    let (a, b) = (fields(adapter), fields(base));
    if a.len() != 5 || b.len() != 5 {
        return "an unrecognised fingerprint".into();
    }
    let names = ["architecture", "layers", "width", "vocabulary"];
    let diff: Vec<String> = (0..4)
        .filter(|&i| a[i] != b[i])
        .map(|i| format!("{} {} vs {}", names[i], a[i], b[i]))
        .collect();
    if !diff.is_empty() {
        diff.join(", ")
    } else if adapter.starts_with("v2:") {
        "same architecture and shapes, other weights: another model or fine-tune".into()
    } else {
        "same shapes; it records an older fingerprint, which matches only the exact file it was made over".into()
    }
}
