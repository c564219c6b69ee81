//! graft for apps: the API that Kotlin, Swift and Python see (uniffi, library mode).
//!
//! One heavy [`Engine`] per base model (memory-mapped once), light [`Session`]s that each hold a
//! conversation's KV cache, adapters loaded by name and swapped inside a session between
//! messages, streaming with cancellation from any thread, and adapter training ([`Trainer`])
//! behind the same objects. Every object is thread-safe: a session used from two threads at once
//! makes the second call wait. Errors are one [`GraftError`] type; a panic never crosses the
//! boundary (uniffi turns it into an internal error).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use graft::adapter::registry::{AdapterRegistry, LoadPolicy};
use graft::SessionConfig;

mod error;
mod session;
mod train;

pub use error::{GraftError, Result};
pub use session::{
    AdapterUse, ChatMessage, GenerateOptions, GenerationResult, GenerationTimings, Session,
    StopReason, SwitchResult, TokenListener,
};
pub use train::{TrainExample, TrainListener, TrainOptions, TrainProgress, TrainReport, Trainer};

use error::Subject;

uniffi::setup_scaffolding!("graft");

/// How an [`Engine`] runs its sessions.
#[derive(Clone, Debug, uniffi::Record)]
pub struct EngineOptions {
    /// CPU threads per session (default: the available cores, at most 8).
    #[uniffi(default = None)]
    pub threads: Option<u32>,
    /// Context length of each session in tokens.
    #[uniffi(default = 2048)]
    pub context_length: u32,
    /// Keep the KV cache in f32 instead of f16 (exact, twice the memory).
    #[uniffi(default = false)]
    pub kv_f32: bool,
    /// Backend graphs run on: `auto`, `cpu`, `wgpu`, `cuda`, `metal` or `vulkan` (`auto` takes
    /// a GPU of ggml's CUDA, Metal or Vulkan backends, else the CPU; `wgpu` only when named; one this build lacks is an `InvalidArgument` naming
    /// those it has).
    #[uniffi(default = "auto")]
    pub backend: String,
    /// On the CPU, run the weights ggml has repacked kernels for (Q4_0 on AVX2 and Arm with
    /// dot-product instructions, Q4_K, IQ4_NL) from a repacked copy, as llama.cpp does by
    /// default: faster prompts and decoding; logits differ from the plain kernels' as they do
    /// between CPUs.
    #[uniffi(default = false)]
    pub cpu_repack: bool,
    /// On a GPU backend, put only the last N layers' weights on the device (llama.cpp's
    /// `-ngl`); the rest run on the CPU. Unset: every weight.
    #[uniffi(default = None)]
    pub gpu_layers: Option<u32>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            threads: None,
            context_length: 2048,
            kv_f32: false,
            backend: "auto".into(),
            cpu_repack: false,
            gpu_layers: None,
        }
    }
}

/// What a loaded base model is.
#[derive(Clone, Debug, uniffi::Record)]
pub struct EngineInfo {
    /// `llama`, `qwen2`...
    pub architecture: String,
    /// The model's display name, if the file has one.
    pub name: Option<String>,
    /// Number of weights.
    pub parameters: u64,
    /// The tensor type holding most of the weight bytes (`q4_1`, `q8_0`, `f32`...).
    pub quant_type: String,
    /// Vocabulary size.
    pub vocab_size: u32,
    /// Context length the model was trained for.
    pub trained_context_length: u32,
    /// Context length of this engine's sessions.
    pub context_length: u32,
    /// Whether the file carries a chat template that `Session.chat` can apply.
    pub chat_template: bool,
    /// The base model's fingerprint (adapters made for another base are refused).
    pub fingerprint: String,
}

/// The four adapter kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum AdapterKind {
    /// Low-rank update `y += s·α/r·B(Ax)`.
    Lora,
    /// Trainable diagonal blocks of the weight matrices.
    Diablo,
    /// Fine-tuning weights generated from the pretrained weights.
    Wegeft,
    /// Instance-dependent soft prompt.
    Lopa,
}

impl From<graft::AdapterKind> for AdapterKind {
    fn from(k: graft::AdapterKind) -> Self {
        match k {
            graft::AdapterKind::Lora => AdapterKind::Lora,
            graft::AdapterKind::Diablo => AdapterKind::Diablo,
            graft::AdapterKind::Wegeft => AdapterKind::Wegeft,
            graft::AdapterKind::Lopa => AdapterKind::Lopa,
        }
    }
}

/// A summary of one loaded adapter.
#[derive(Clone, Debug, uniffi::Record)]
pub struct AdapterInfo {
    /// The name it is registered under.
    pub name: String,
    /// Its kind.
    pub kind: AdapterKind,
    /// Bytes of its tensors.
    pub bytes: u64,
    /// LoRA / WeGeFT rank, DiaBlo blocks, LoPA virtual tokens.
    pub rank: u32,
    /// The weight matrices it changes (`blk.0.attn_q`, ...; empty for LoPA).
    pub targets: Vec<String>,
    /// The file it came from (none when loaded from bytes).
    pub path: Option<String>,
}

/// Whether an adapter file fits this engine's base model.
#[derive(Clone, Debug, uniffi::Record)]
pub struct AdapterCheck {
    /// It loads on this base.
    pub fits: bool,
    /// Its kind, when the file could be read that far.
    pub kind: Option<AdapterKind>,
    /// Why not, when it does not fit.
    pub reason: Option<String>,
}

/// A loaded adapter, to be given to [`Session::set_adapters`] with a scale.
#[derive(uniffi::Object)]
pub struct Adapter {
    pub(crate) inner: Arc<graft::Adapter>,
}

#[uniffi::export]
impl Adapter {
    /// The name it is registered under.
    pub fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// Its kind.
    pub fn kind(&self) -> AdapterKind {
        self.inner.kind().into()
    }

    /// A summary.
    pub fn info(&self) -> AdapterInfo {
        adapter_info(&self.inner)
    }
}

fn adapter_info(a: &graft::Adapter) -> AdapterInfo {
    AdapterInfo {
        name: a.name().to_string(),
        kind: a.kind().into(),
        bytes: a.n_bytes() as u64,
        rank: a.rank() as u32,
        targets: a.targets().iter().map(|t| t.tensor_name()).collect(),
        path: a.path().map(|p| p.display().to_string()),
    }
}

/// The engine's state while open.
pub(crate) struct Open {
    pub(crate) engine: graft::Engine,
    pub(crate) registry: AdapterRegistry,
}

/// One base model, memory-mapped once, and the adapters loaded for it.
#[derive(uniffi::Object)]
pub struct Engine {
    open: RwLock<Option<Arc<Open>>>,
}

#[uniffi::export]
impl Engine {
    /// Loads (memory-maps) the model at `model_path` with the default options.
    #[uniffi::constructor]
    pub fn new(model_path: String) -> Result<Arc<Self>> {
        Self::open(model_path, EngineOptions::default())
    }

    /// Loads the model at `model_path` with `options`.
    #[uniffi::constructor]
    pub fn open(model_path: String, options: EngineOptions) -> Result<Arc<Self>> {
        let threads = match options.threads {
            Some(0) => return Err(arg("threads must be at least 1")),
            Some(n) => n as usize,
            None => graft::session::default_threads(),
        };
        if options.context_length < 2 {
            return Err(arg("context_length must be at least 2"));
        }
        let backend: graft::BackendChoice = options.backend.parse().map_err(arg)?;
        graft::check_backend(backend).map_err(|e| arg(e.to_string()))?;
        let path = PathBuf::from(&model_path);
        if path.is_dir() {
            return Err(GraftError::File(format!(
                "{model_path} is a directory, not a GGUF model file"
            )));
        }
        let cfg = SessionConfig {
            n_ctx: options.context_length as usize,
            n_threads: threads,
            kv_f32: options.kv_f32,
            backend,
            cpu_repack: options.cpu_repack,
            gpu_layers: options.gpu_layers.map(|n| n as usize),
            ..SessionConfig::default()
        };
        let engine = graft::Engine::load_with(&path, cfg)
            .map_err(|e| GraftError::from_runtime(e, Subject::Model))?;
        let registry = AdapterRegistry::new(engine.model().clone());
        Ok(Arc::new(Self {
            open: RwLock::new(Some(Arc::new(Open { engine, registry }))),
        }))
    }

    /// What the model is.
    pub fn info(&self) -> Result<EngineInfo> {
        let open = self.get()?;
        let model = open.engine.model();
        let g = model.gguf();
        let mut bytes_by_type: std::collections::BTreeMap<&str, u64> = Default::default();
        for t in g.tensors() {
            *bytes_by_type.entry(t.dtype.name()).or_default() += t.n_bytes;
        }
        let quant_type = bytes_by_type
            .iter()
            .max_by_key(|(_, b)| **b)
            .map(|(t, _)| t.to_lowercase())
            .unwrap_or_default();
        let cfg = model.config();
        Ok(EngineInfo {
            architecture: cfg.arch.name().to_string(),
            name: g
                .get_opt_str("general.name")
                .ok()
                .flatten()
                .map(str::to_string),
            parameters: g.tensors().iter().map(|t| t.n_elements()).sum(),
            quant_type,
            vocab_size: cfg.n_vocab as u32,
            trained_context_length: cfg.n_ctx_train as u32,
            context_length: open.engine.session_config().n_ctx as u32,
            chat_template: model.tokenizer().chat_format().is_ok(),
            fingerprint: model.fingerprint().to_string(),
        })
    }

    /// Loads the adapter at `path` (GGUF file or PEFT directory) under its file stem; a loaded
    /// adapter of that name is replaced (sessions using the old one keep it until they switch).
    pub fn load_adapter(&self, path: String) -> Result<Arc<Adapter>> {
        let name = Path::new(&path)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .ok_or_else(|| arg(format!("{path}: no file name to name the adapter by")))?;
        self.load_adapter_named(path, name)
    }

    /// Loads the adapter at `path` under `name`.
    pub fn load_adapter_named(&self, path: String, name: String) -> Result<Arc<Adapter>> {
        let open = self.get()?;
        if name.is_empty() {
            return Err(arg("the adapter name is empty"));
        }
        let a = open
            .registry
            .load(&name, &path, LoadPolicy::Replace)
            .map_err(|e| adapter_error(e, &path))?;
        Ok(Arc::new(Adapter { inner: a }))
    }

    /// Loads an adapter from the bytes of a GGUF adapter file (e.g. an app asset).
    pub fn load_adapter_bytes(&self, bytes: Vec<u8>, name: String) -> Result<Arc<Adapter>> {
        let open = self.get()?;
        if name.is_empty() {
            return Err(arg("the adapter name is empty"));
        }
        let model = open.engine.model();
        let gguf = graft_formats::Gguf::from_bytes(bytes)
            .map_err(|e| GraftError::InvalidAdapter(format!("adapter {name}: {e}")))?;
        let a = graft::Adapter::from_gguf(model, Arc::new(gguf), name.clone())
            .map_err(|e| adapter_error(e, &name))?;
        let a = open
            .registry
            .insert(Arc::new(a), LoadPolicy::Replace)
            .map_err(|e| adapter_error(e, &name))?;
        Ok(Arc::new(Adapter { inner: a }))
    }

    /// Forgets the adapter `name` (sessions using it keep it until they switch).
    pub fn unload_adapter(&self, name: String) -> Result<()> {
        let open = self.get()?;
        open.registry
            .unload(&name)
            .map(|_| ())
            .map_err(|e| GraftError::InvalidArgument(e.to_string()))
    }

    /// The loaded adapters.
    pub fn adapters(&self) -> Result<Vec<AdapterInfo>> {
        let open = self.get()?;
        let mut names: Vec<String> = open.registry.list().into_iter().map(|i| i.name).collect();
        names.sort();
        Ok(names
            .iter()
            .filter_map(|n| open.registry.get(n))
            .map(|a| adapter_info(&a))
            .collect())
    }

    /// The loaded adapter `name`, if any.
    pub fn adapter(&self, name: String) -> Result<Option<Arc<Adapter>>> {
        let open = self.get()?;
        Ok(open
            .registry
            .get(&name)
            .map(|inner| Arc::new(Adapter { inner })))
    }

    /// Whether the adapter at `path` fits this base model, and why not (without loading it).
    pub fn check_adapter(&self, path: String) -> Result<AdapterCheck> {
        let open = self.get()?;
        Ok(match graft::Adapter::load(open.engine.model(), &path) {
            Ok(a) => AdapterCheck {
                fits: true,
                kind: Some(a.kind().into()),
                reason: None,
            },
            Err(e) => AdapterCheck {
                fits: false,
                kind: None,
                reason: Some(adapter_error(e, &path).to_string()),
            },
        })
    }

    /// A new session (its own KV cache) with no adapter.
    pub fn session(&self) -> Result<Arc<Session>> {
        let open = self.get()?;
        Session::create(open)
    }

    /// A trainer for a new (or resumed) adapter; nothing runs until `Trainer.run`.
    pub fn trainer(&self, options: TrainOptions) -> Result<Arc<Trainer>> {
        let open = self.get()?;
        Trainer::create(&open, options)
    }

    /// Releases the engine: later calls fail with `Closed`. Sessions and adapters already made
    /// keep the mapped model alive until they are released too.
    pub fn release(&self) {
        *self.open.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Engine {
    fn get(&self) -> Result<Arc<Open>> {
        self.open
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| GraftError::Closed("the engine is closed".into()))
    }
}

/// An invalid-argument error.
pub(crate) fn arg(msg: impl Into<String>) -> GraftError {
    GraftError::InvalidArgument(msg.into())
}

/// An adapter-loading error, prefixed with what was loaded.
fn adapter_error(e: graft::Error, what: &str) -> GraftError {
    match GraftError::from_runtime(e, Subject::Adapter) {
        GraftError::File(m) => GraftError::File(m),
        GraftError::WrongBase(m) => GraftError::WrongBase(format!("adapter {what}: {m}")),
        GraftError::InvalidAdapter(m) => GraftError::InvalidAdapter(format!("adapter {what}: {m}")),
        other => other,
    }
}

/// The library's version.
#[uniffi::export]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Test hook (feature `test-hooks`, never in a shipped library): panics inside Rust, so the
/// tests can check that a panic comes out as an error and not as a crash.
#[cfg(feature = "test-hooks")]
#[uniffi::export]
pub fn debug_panic() {
    panic!("debug_panic: a deliberate panic (test-hooks feature)")
}
