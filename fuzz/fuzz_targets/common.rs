//! Shared by the fuzz targets that need a base model: the model (loaded once) and a session on
//! it that every input decodes a few tokens with.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use graft::{ActiveAdapters, Adapter, LogitsFor, Model, Session, SessionConfig};

/// The base model: `$GRAFT_FUZZ_MODEL`, else the small qwen2 test model that
/// `scripts/setup_test_data.sh` writes to `.cache/models/`.
fn model_path() -> PathBuf {
    std::env::var_os("GRAFT_FUZZ_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/qwen2-tiny.gguf")
        })
}

pub struct Base {
    pub model: Arc<Model>,
    session: Mutex<Session>,
}

pub fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let path = model_path();
        let model = Model::load(&path).unwrap_or_else(|e| {
            panic!(
                "fuzz base model {}: {e} (run scripts/setup_test_data.sh or set GRAFT_FUZZ_MODEL)",
                path.display()
            )
        });
        let model = Arc::new(model);
        // The CPU backend by name: `auto` would load ggml's device libraries from
        // GRAFT_BACKEND_DIR (scripts/test.sh points it at BLAS and Vulkan), whose one-time
        // allocations LeakSanitizer reports at exit.
        let cfg = SessionConfig {
            n_ctx: 64,
            n_batch: 64,
            n_threads: 1,
            backend: graft::BackendChoice::Cpu,
            ..SessionConfig::default()
        };
        let session = Session::new(model.clone(), cfg).expect("a session on the fuzz base model");
        Base {
            model,
            session: Mutex::new(session),
        }
    })
}

impl Base {
    /// An adapter that loaded must also run: a few tokens of prompt and one decode step with
    /// it active. Errors are bugs here (the loader let through what the graph cannot use), and
    /// so is any ggml abort.
    pub fn run_with(&self, adapter: Adapter) {
        let adapter = Arc::new(adapter);
        // Everything an app or `graft inspect` reads of a loaded adapter.
        std::hint::black_box((
            adapter.n_bytes(),
            adapter.rank(),
            adapter.targets().len(),
            adapter.kind().name(),
            adapter.description(),
        ));
        let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        s.clear();
        s.set_adapters(ActiveAdapters::none().with(adapter.clone(), 0.5))
            .expect("activate a loaded adapter");
        let logits = s
            .decode(&[1, 2, 3, 4], LogitsFor::Last)
            .unwrap_or_else(|e| {
                panic!(
                    "prompt with a loaded {} adapter: {e}",
                    adapter.kind().name()
                )
            });
        assert_eq!(logits.len(), self.model.config().n_vocab);
        s.decode(&[5], LogitsFor::Last).unwrap_or_else(|e| {
            panic!(
                "decode with a loaded {} adapter: {e}",
                adapter.kind().name()
            )
        });
        s.set_adapters(ActiveAdapters::none())
            .expect("back to the base");
    }
}
