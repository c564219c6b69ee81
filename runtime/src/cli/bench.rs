//! `graft bench`: prompt-processing and generation speed, load time and peak memory, in the
//! shape of llama-bench (pp N = one batch of N tokens from an empty cache; tg N = N
//! single-token steps from an empty cache), so `scripts/bench.py` can put it beside llama.cpp.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result};
use graft::adapter::registry::{AdapterRegistry, LoadPolicy};
use graft::{ActiveAdapters, BackendChoice, LogitsFor, Model, Session, SessionConfig};
use serde_json::{json, Value};

pub struct BenchArgs<'a> {
    pub model: &'a Path,
    pub threads: usize,
    pub pp: &'a [usize],
    pub tg: &'a [usize],
    pub reps: usize,
    pub flash_attn: bool,
    pub backend: BackendChoice,
    pub cpu_repack: bool,
    pub gpu_layers: Option<usize>,
    /// Adapter sets compared rep by rep in this one process (label, files); empty: none.
    pub variants: Vec<(String, Vec<std::path::PathBuf>)>,
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
            backend: a.backend,
            cpu_repack: a.cpu_repack,
            gpu_layers: a.gpu_layers,
            ..SessionConfig::default()
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

    // Compared adapter sets: each rep of each test runs every set in turn, so the sets see
    // the same machine state (a slow second on a shared machine hits all of them).
    let mut sets = vec![(String::new(), session.adapters().clone())];
    if !a.variants.is_empty() {
        sets.clear();
        for (label, files) in &a.variants {
            let mut set = ActiveAdapters::none();
            for path in files {
                let name = format!("v{}", registry.list().len());
                let ad = registry
                    .load(&name, path, LoadPolicy::Create)
                    .with_context(|| format!("loading adapter {}", path.display()))?;
                set.set(ad, 1.0);
            }
            session.set_adapters(set.clone())?;
            session.clear();
            session.decode(&bench_tokens(n_ctx.min(64), n_vocab), LogitsFor::Last)?;
            sets.push((label.clone(), set));
        }
    }
    // rates[set][test][rep]
    let mut rates: Vec<Vec<Vec<f64>>> = vec![Vec::new(); sets.len()];
    let mut tests = Vec::new();
    for (prefill, lens) in [(true, a.pp), (false, a.tg)] {
        for &n in lens {
            let toks = bench_tokens(n, n_vocab);
            tests.push(format!("{}{n}", if prefill { "pp" } else { "tg" }));
            for r in rates.iter_mut() {
                r.push(Vec::new());
            }
            for _ in 0..a.reps {
                for (k, (_, set)) in sets.iter().enumerate() {
                    if sets.len() > 1 {
                        session.set_adapters(set.clone())?;
                    }
                    session.clear();
                    let t = Instant::now();
                    if prefill {
                        session.decode(&toks, LogitsFor::Last)?;
                    } else {
                        for &tok in &toks {
                            session.decode(&[tok], LogitsFor::Last)?;
                        }
                    }
                    let rate = n as f64 / t.elapsed().as_secs_f64();
                    rates[k].last_mut().expect("pushed above").push(rate);
                }
            }
        }
    }
    let results_of = |k: usize| -> Vec<Value> {
        tests
            .iter()
            .zip(&rates[k])
            .map(|(t, r)| json!({"test": t, "tokens_per_s": r}))
            .collect()
    };
    let results = results_of(0);
    let variants: Vec<Value> = if a.variants.is_empty() {
        Vec::new()
    } else {
        sets.iter()
            .enumerate()
            .map(|(k, (label, _))| {
                json!({"label": label,
                       "adapters": a.variants[k].1.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                       "results": results_of(k)})
            })
            .collect()
    };
    Ok(json!({
        "engine": "graft",
        "model": a.model.display().to_string(),
        "threads": a.threads,
        "flash_attn": a.flash_attn,
        "cpu_repack": a.cpu_repack,
        "gpu_layers": a.gpu_layers,
        "load_ms": load_ms,
        "adapters": adapter_load_ms,
        "adapter_switch_us": switch_us,
        "peak_rss_mb": peak_rss_mb(),
        "results": results,
        "backend": session.backend_report(),
        "threads_last": session.threads_in_use(),
        "variants": variants,
    }))
}

/// `none` or `[LABEL=]A.gguf[,B.gguf...]` → (label, files); the label defaults to the file
/// stems (or "no adapter").
pub fn parse_variant(spec: &str) -> (String, Vec<std::path::PathBuf>) {
    let (label, files) = match spec.split_once('=') {
        Some((l, f)) => (Some(l.to_string()), f),
        None => (None, spec),
    };
    let files: Vec<std::path::PathBuf> = if files.trim() == "none" {
        Vec::new()
    } else {
        files
            .split(',')
            .filter(|f| !f.is_empty())
            .map(Into::into)
            .collect()
    };
    let label = label.unwrap_or_else(|| {
        if files.is_empty() {
            "no adapter".into()
        } else {
            files
                .iter()
                .map(|f| {
                    f.file_stem()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    });
    (label, files)
}

/// Peak resident set size of this process in MiB (Linux: VmHWM), if known.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub struct BatchBenchArgs<'a> {
    pub model: &'a Path,
    pub adapters: &'a [std::path::PathBuf],
    pub sequences: usize,
    pub prompt_tokens: usize,
    pub tokens: usize,
    pub threads: usize,
    pub reps: usize,
}

/// `graft bench-batch`: `sequences` greedy generations, sequence `i` with adapter `i mod k`
/// (the base when none is given), over one loaded model: in the batched decoder (all sequences
/// in one graph per step, the adapters mixed), the same with every sequence on the first
/// adapter (the homogeneous batch) and on the base, one after another in sessions, and one
/// base sequence alone. Reports tokens/s of each; the mixed batch against the homogeneous one
/// and against one after another; the ceiling (the base batch over one sequence alone: what
/// batching can win on this machine and model); and whether the batched tokens equal the
/// sequential ones.
pub fn run_batch(a: &BatchBenchArgs<'_>) -> Result<Value> {
    use graft::{BatchConfig, BatchDecoder};
    let model = Arc::new(Model::load(a.model)?);
    let n_vocab = model.config().n_vocab;
    let registry = AdapterRegistry::new(model.clone());
    let mut sets = Vec::new();
    for (i, path) in a.adapters.iter().enumerate() {
        let ad = registry
            .load(&format!("a{i}"), path, LoadPolicy::Create)
            .with_context(|| format!("loading adapter {}", path.display()))?;
        sets.push(ActiveAdapters::none().with(ad, 1.0));
    }
    if sets.is_empty() {
        sets.push(ActiveAdapters::none());
    }
    let prompts: Vec<Vec<u32>> = (0..a.sequences)
        .map(|i| {
            bench_tokens(a.prompt_tokens + i, n_vocab)
                .into_iter()
                .skip(i)
                .collect()
        })
        .collect();
    // Both ways get the same context (the batch decoder's, a multiple of 256): the attention
    // then has the same shapes, and the tokens are the same.
    let n_ctx = (a.prompt_tokens + a.sequences + a.tokens).div_ceil(256) * 256;
    // Which adapter set sequence `i` runs with: the mixed assignment, all on the first
    // adapter, or all on the base model.
    #[derive(Clone, Copy)]
    enum Assign {
        Mixed,
        First,
        Base,
    }
    let set_for = |assign: Assign, i: usize| match assign {
        Assign::Mixed => sets[i % sets.len()].clone(),
        Assign::First => sets[0].clone(),
        Assign::Base => ActiveAdapters::none(),
    };
    let batched = |assign: Assign| -> Result<(f64, f64, Vec<Vec<u32>>)> {
        let mut b = BatchDecoder::new(
            model.clone(),
            BatchConfig {
                n_seq_max: a.sequences,
                n_ctx_seq: n_ctx,
                n_batch: 512,
                n_threads: a.threads,
                ..BatchConfig::default()
            },
        )?;
        let ids = (0..a.sequences)
            .map(|i| b.add_sequence(set_for(assign, i)))
            .collect::<graft::Result<Vec<_>>>()?;
        let t = Instant::now();
        let work: Vec<_> = ids
            .iter()
            .zip(&prompts)
            .map(|(&id, p)| (id, &p[..]))
            .collect();
        let mut logits = b.step(&work)?;
        let prefill = t.elapsed().as_secs_f64();
        let mut out = vec![Vec::new(); a.sequences];
        let t = Instant::now();
        for _ in 0..a.tokens {
            let next: Vec<[u32; 1]> = logits.iter().map(|l| [graft::sampler::argmax(l)]).collect();
            for (o, n) in out.iter_mut().zip(&next) {
                o.push(n[0]);
            }
            let work: Vec<_> = ids.iter().zip(&next).map(|(&id, n)| (id, &n[..])).collect();
            logits = b.step(&work)?;
        }
        Ok((prefill, t.elapsed().as_secs_f64(), out))
    };
    // The sequences one after another in sessions (`n` of them).
    let sequential = |assign: Assign, n: usize| -> Result<(f64, f64, Vec<Vec<u32>>)> {
        let (mut prefill, mut decode) = (0.0, 0.0);
        let mut out = Vec::new();
        for (i, p) in prompts.iter().enumerate().take(n) {
            let mut s = Session::new(
                model.clone(),
                SessionConfig {
                    n_ctx,
                    n_batch: 512,
                    n_threads: a.threads,
                    ..SessionConfig::default()
                },
            )?;
            s.set_adapters(set_for(assign, i))?;
            let t = Instant::now();
            let mut l = s.decode(p, LogitsFor::Last)?;
            prefill += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut toks = Vec::new();
            for _ in 0..a.tokens {
                let tok = graft::sampler::argmax(&l);
                toks.push(tok);
                l = s.decode(&[tok], LogitsFor::Last)?;
            }
            decode += t.elapsed().as_secs_f64();
            out.push(toks);
        }
        Ok((prefill, decode, out))
    };
    // Warm-up, then `reps` rounds of every run in turn (interleaved, so drift hits all alike).
    batched(Assign::Mixed)?;
    let (mut mixed, mut first, mut base, mut seq, mut single) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut tokens_match = true;
    for _ in 0..a.reps {
        let m = batched(Assign::Mixed)?;
        let s = sequential(Assign::Mixed, a.sequences)?;
        tokens_match &= m.2 == s.2;
        mixed.push(m);
        seq.push(s);
        first.push(batched(Assign::First)?);
        base.push(batched(Assign::Base)?);
        single.push(sequential(Assign::Base, 1)?);
    }
    let n_prompt: usize = prompts.iter().map(Vec::len).sum();
    let n_gen = (a.sequences * a.tokens) as f64;
    let rates = |runs: &[(f64, f64, Vec<Vec<u32>>)], n_prompt: usize, n_gen: f64| {
        json!({
            "prefill_tokens_per_s": runs.iter().map(|r| n_prompt as f64 / r.0).collect::<Vec<_>>(),
            "decode_tokens_per_s": runs.iter().map(|r| n_gen / r.1).collect::<Vec<_>>(),
        })
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let decode = |runs: &[(f64, f64, Vec<Vec<u32>>)], n_gen: f64| {
        median(runs.iter().map(|r| n_gen / r.1).collect())
    };
    let single_gen = a.tokens as f64;
    // The most batching can win here: the batch without adapters over one sequence alone.
    let ceiling = decode(&base, n_gen) / decode(&single, single_gen);
    let speedup = decode(&mixed, n_gen) / decode(&seq, n_gen);
    Ok(json!({
        "engine": "graft",
        "model": a.model.display().to_string(),
        "threads": a.threads,
        "sequences": a.sequences,
        "adapters": a.adapters.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "prompt_tokens": a.prompt_tokens,
        "tokens": a.tokens,
        "batched_mixed_adapters": rates(&mixed, n_prompt, n_gen),
        "batched_one_adapter": rates(&first, n_prompt, n_gen),
        "batched_base": rates(&base, n_prompt, n_gen),
        "sequential_mixed_adapters": rates(&seq, n_prompt, n_gen),
        "single_sequence_base": rates(&single, prompts[0].len(), single_gen),
        "decode_mixed_vs_one_adapter": decode(&mixed, n_gen) / decode(&first, n_gen),
        "decode_speedup_mixed_vs_sequential": speedup,
        "decode_ceiling_batch_vs_single": ceiling,
        "speedup_fraction_of_ceiling": speedup / ceiling,
        "tokens_match_sequential": tokens_match,
        "peak_rss_mb": peak_rss_mb(),
    }))
}
