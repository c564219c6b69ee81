//! Shared helpers of the integration tests: where the cached models live.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `.cache/models/` (or `GRAFT_MODELS_DIR`).
pub fn models_dir() -> PathBuf {
    std::env::var_os("GRAFT_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/models"))
}

/// The path of a cached model, or a panic that says how to fetch it (unless
/// `GRAFT_SKIP_MODEL_TESTS=1`, in which case `None`).
pub fn model(name: &str) -> Option<PathBuf> {
    let p = models_dir().join(name);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("GRAFT_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
        eprintln!(
            "skipping: {} is missing (GRAFT_SKIP_MODEL_TESTS=1)",
            p.display()
        );
        return None;
    }
    panic!(
        "{} is missing: run scripts/fetch_model.sh and scripts/make_variants.py / make_qwen2_tiny.py \
         (or set GRAFT_SKIP_MODEL_TESTS=1)",
        p.display()
    );
}

/// `.cache/data/sotu/`.
pub fn sotu_dir() -> PathBuf {
    repo_root().join(".cache/data/sotu")
}
