//! `graft bench`: prompt-processing and generation speed, load time and peak memory, in the
//! shape of llama-bench (pp N = one batch of N tokens from an empty cache; tg N = N
//! single-token steps from an empty cache), so `scripts/bench.py` can put it beside llama.cpp.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result};
use graft::adapter::registry::{AdapterRegistry, LoadPolicy};
use graft::{ActiveAdapters, LogitsFor, Model, Session, SessionConfig};
use serde_json::{json, Value};

pub struct BenchArgs<'a> {
    pub model: &'a Path,
    pub threads: usize,
    pub pp: &'a [usize],
    pub tg: &'a [usize],
    pub reps: usize,
    pub flash_attn: bool,
    /// Adapters active during the runs, with scales.
    pub adapters: Vec<(std::path::PathBuf, f32)>,
}

/// Deterministic token ids spread over the vocabulary (llama-bench uses random ones).
fn bench_tokens(n: usize, n_vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % n_vocab) as u32).collect()
}

pub fn run(a: &BenchArgs<'_>) -> Result<Value> {
    let t = Instant::now();
    let model = Arc::new(Model::load(a.model)?);
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let n_vocab = model.config().n_vocab;
    let n_ctx = a.pp.iter().chain(a.tg).copied().max().unwrap_or(1).max(1);
    let mut session = Session::new(
        model.clone(),
        SessionConfig {
            n_ctx,
            n_batch: n_ctx.min(512),
            n_threads: a.threads,
            flash_attn: a.flash_attn,
            kv_f32: false,
        },
    )?;
    let registry = AdapterRegistry::new(model.clone());
    let mut active = ActiveAdapters::none();
    let mut adapter_load_ms = Vec::new();
    for (i, (path, scale)) in a.adapters.iter().enumerate() {
        let t = Instant::now();
        let ad = registry
            .load(&format!("a{i}"), path, LoadPolicy::Create)
            .with_context(|| format!("loading adapter {}", path.display()))?;
        adapter_load_ms.push(json!({
            "file": path.display().to_string(),
            "bytes": ad.n_bytes(),
            "load_ms": t.elapsed().as_secs_f64() * 1e3,
        }));
        active.set(ad, *scale);
    }
    // Switching between two loaded adapter sets (the swap itself; the cache recompute it
    // implies is a prefill, measured by ppN).
    let switch_us = if registry.list().len() >= 2 {
        let one = registry.active(&[("a0", 1.0)])?;
        let two = registry.active(&[("a1", 1.0)])?;
        session.set_adapters(one.clone())?;
        let n = 1000;
        let t = Instant::now();
        for i in 0..n {
            session.set_adapters(if i % 2 == 0 { two.clone() } else { one.clone() })?;
        }
        Some(t.elapsed().as_secs_f64() * 1e6 / n as f64)
    } else {
        None
    };
    session.set_adapters(active)?;
    // Warm-up (page in the weights, size the compute buffer).
    session.decode(&bench_tokens(n_ctx.min(512), n_vocab), LogitsFor::Last)?;
    session.clear();
    session.decode(&bench_tokens(1, n_vocab), LogitsFor::Last)?;

    let mut results = Vec::new();
    for &n in a.pp {
        let toks = bench_tokens(n, n_vocab);
        let mut rates = Vec::new();
        for _ in 0..a.reps {
            session.clear();
            let t = Instant::now();
            session.decode(&toks, LogitsFor::Last)?;
            rates.push(n as f64 / t.elapsed().as_secs_f64());
        }
        results.push(json!({"test": format!("pp{n}"), "tokens_per_s": rates}));
    }
    for &n in a.tg {
        let toks = bench_tokens(n, n_vocab);
        let mut rates = Vec::new();
        for _ in 0..a.reps {
            session.clear();
            let t = Instant::now();
            for &tok in &toks {
                session.decode(&[tok], LogitsFor::Last)?;
            }
            rates.push(n as f64 / t.elapsed().as_secs_f64());
        }
        results.push(json!({"test": format!("tg{n}"), "tokens_per_s": rates}));
    }
    Ok(json!({
        "engine": "graft",
        "model": a.model.display().to_string(),
        "threads": a.threads,
        "flash_attn": a.flash_attn,
        "load_ms": load_ms,
        "adapters": adapter_load_ms,
        "adapter_switch_us": switch_us,
        "peak_rss_mb": peak_rss_mb(),
        "results": results,
    }))
}

/// Peak resident set size of this process in MiB (Linux: VmHWM), if known.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
