//! The one error type apps see: each variant becomes an exception (Python `GraftError.File`,
//! Kotlin `GraftException.File`, Swift `GraftError.File`) whose message says what is wrong.

/// Everything that can go wrong in a graft call.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum GraftError {
    /// A file could not be read or written (missing, a directory, no permission...).
    #[error("{0}")]
    File(String),
    /// The model file is not a model graft can run (truncated, not GGUF, unsupported...).
    #[error("{0}")]
    InvalidModel(String),
    /// The adapter file is malformed or does not fit this base; the message names the tensor
    /// or key.
    #[error("{0}")]
    InvalidAdapter(String),
    /// The adapter was made for another base model.
    #[error("{0}")]
    WrongBase(String),
    /// The session's context cannot hold the request; `reset()` starts over.
    #[error("{0}")]
    ContextFull(String),
    /// The operation was cancelled.
    #[error("{0}")]
    Cancelled(String),
    /// An argument is out of range or does not apply.
    #[error("{0}")]
    InvalidArgument(String),
    /// The object was closed.
    #[error("{0}")]
    Closed(String),
    /// The app's listener raised an error; the operation stopped.
    #[error("{0}")]
    Callback(String),
    /// A failure inside the runtime (ggml allocation or compute).
    #[error("{0}")]
    Runtime(String),
}

/// What a failure is about, for mapping the runtime's errors.
#[derive(Clone, Copy)]
pub(crate) enum Subject {
    Model,
    Adapter,
    Other,
}

impl GraftError {
    /// Maps a runtime error; `subject` says which kind of file a format error is about.
    pub(crate) fn from_runtime(e: graft::Error, subject: Subject) -> Self {
        use graft::Error as E;
        let msg = e.to_string();
        match e {
            E::Io { .. } => GraftError::File(msg),
            E::Format(f) if is_io(&f) => GraftError::File(msg),
            E::WrongBase { .. } => GraftError::WrongBase(msg),
            E::ContextFull { .. } => GraftError::ContextFull(msg),
            E::Cancelled => GraftError::Cancelled(msg),
            E::InvalidAdapter(_) | E::Registry(_) => GraftError::InvalidAdapter(msg),
            E::InvalidRequest(_) => GraftError::InvalidArgument(msg),
            E::Ggml(_) => GraftError::Runtime(msg),
            E::Format(_)
            | E::Tokenizer(_)
            | E::UnsupportedArchitecture(_)
            | E::MissingTensor(_)
            | E::ShapeMismatch { .. }
            | E::UnsupportedTensorType { .. }
            | E::InvalidHparams(_)
            | E::WrongFileKind { .. } => match subject {
                Subject::Adapter => GraftError::InvalidAdapter(msg),
                Subject::Model | Subject::Other => GraftError::InvalidModel(msg),
            },
        }
    }
}

/// An I/O failure (missing file, directory...), as opposed to bad file contents.
fn is_io(f: &graft::error::FormatError) -> bool {
    use graft::error::FormatError as F;
    match f {
        F::Io { .. } => true,
        F::InFile { error, .. } => is_io(error),
        _ => false,
    }
}

impl From<uniffi::UnexpectedUniFFICallbackError> for GraftError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        GraftError::Callback(format!("the listener failed: {}", e.reason))
    }
}

/// `Result` with [`GraftError`].
pub type Result<T> = std::result::Result<T, GraftError>;
