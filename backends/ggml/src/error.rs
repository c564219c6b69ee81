//! The crate's error type.

/// Errors from the ggml wrapper.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// ggml could not allocate (context, buffer or graph memory).
    #[error("ggml allocation failed: {0}")]
    Alloc(String),
    /// A shape or size does not fit the operation.
    #[error("shape error: {0}")]
    Shape(String),
    /// A backend this build has no device for.
    #[error("the {wanted} backend is not available in this build (available: {available}){note}")]
    BackendUnavailable {
        /// The backend asked for.
        wanted: String,
        /// The backends this build has, comma-separated.
        available: String,
        /// Why it is absent, starting with "; " (where graft looked for its library, or why
        /// the library did not load), or empty.
        note: String,
    },
    /// A backend library (a ggml backend module) that did not load.
    #[error("backend library {path} did not load: {reason}")]
    BackendLoad {
        /// The library's path.
        path: String,
        /// ggml's reason (the dynamic loader's message, an API version mismatch, ...).
        reason: String,
    },
    /// A capability the backend does not have.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A graph computation failed.
    #[error("ggml graph compute failed with status {0}")]
    Compute(i32),
    /// A graph computation failed on a device backend, which said why.
    #[error("graph compute failed on {backend}: {message}")]
    DeviceCompute {
        /// The backend (`wgpu`, ...).
        backend: &'static str,
        /// What the backend reported.
        message: String,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
