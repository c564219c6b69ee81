//! graft: an on-device adapter runtime for large language models.
//!
//! One quantized GGUF base model is memory-mapped once ([`Model`]); [`Session`]s own a KV
//! cache each and evaluate tokens through ggml; [`Engine`] adds tokenization, sampling and
//! streaming generation on top.
//!
//! ```no_run
//! use graft::{Engine, GenerateRequest};
//! let engine = Engine::load("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let out = engine.generate(&GenerateRequest::new("Once upon a time").max_tokens(16), |piece| {
//!     print!("{piece}");
//!     true // keep going
//! })?;
//! println!("\n{} tokens", out.tokens.len());
//! # Ok::<(), graft::Error>(())
//! ```
#![warn(missing_docs)]

pub mod adapter;
pub mod batch;
mod compute;
pub mod engine;
pub mod error;
pub mod kv_cache;
pub mod model;
pub mod perplexity;
pub mod sampler;
pub mod scheduler;
pub mod session;
pub mod tokenizer;
pub mod train;

pub use adapter::{ActiveAdapters, Adapter, AdapterKind};
pub use batch::{BatchConfig, BatchDecoder, SeqId};
pub use compute::BackendReport;
pub use engine::{Engine, GenerateRequest, Generation, Timings};
pub use error::{Error, Result};
pub use graft_ggml::{
    devices, load_backend, load_backend_modules, module_search_dirs, select_device, BackendChoice,
    Device, DeviceType, ModuleLoad,
};

/// Checks that inference graphs can run on `choice`: `auto` and `cpu` always can; a GPU backend
/// needs a device of it in this build (the error names the backends this build has).
pub fn check_backend(choice: BackendChoice) -> std::result::Result<(), graft_ggml::Error> {
    select_device(choice).map(|_| ())
}
pub use model::{Arch, Model, ModelConfig};
pub use sampler::{Sampler, SamplerConfig};
pub use session::{LogitsFor, Session, SessionConfig};
