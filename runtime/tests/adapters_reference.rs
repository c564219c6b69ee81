//! Adapters against independent references on SmolLM2-135M (made on this machine by
//! `tests/fixtures/gen_adapter_reference.py`, run by `scripts/references.sh`; see
//! `tests/fixtures/adapters/README.md`):
//! - LoRA: llama.cpp itself with the same GGUF LoRA files (logits 1e-2, 32 greedy tokens);
//! - DiaBlo and WeGeFT: llama.cpp running the merged F32 model built by numpy from the math of
//!   ADAPTER_FORMAT.md; on the Q4_1 base, the adapter's effect matches the same delta;
//! - LoPA: saturated gate = llama.cpp on the known tokens followed by the prompt; the encoder
//!   output `Z` against numpy.

mod common;

use common::{check_greedy, ids, max_diff, read_f32, sha256};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use graft::{ActiveAdapters, Adapter, LogitsFor, Model, Session, SessionConfig};
use serde_json::Value;

const LOGIT_TOL: f32 = 1e-2;

/// The adapter references' folder and its `reference.json` (`None` when skipping, see
/// `common::references_dir`).
fn reference() -> Option<(PathBuf, Value)> {
    let dir = common::references_dir()?.join("adapters");
    let p = dir.join("reference.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    Some((dir, serde_json::from_str(&text).unwrap()))
}

fn adapter_path(file: &str, sha: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("GRAFT_ADAPTERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo_root().join(".cache/adapters"));
    let p = dir.join(file);
    if !p.exists() {
        if std::env::var("GRAFT_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
            return None;
        }
        panic!("{} is missing: run scripts/setup_test_data.sh", p.display());
    }
    assert_eq!(
        sha256(&p),
        sha,
        "{} is not the file the references were made from",
        p.display()
    );
    Some(p)
}

struct Bases {
    models: HashMap<String, Arc<Model>>,
}

impl Bases {
    fn get(&mut self, doc: &Value, base: &str) -> Option<Arc<Model>> {
        if let Some(m) = self.models.get(base) {
            return Some(m.clone());
        }
        let b = &doc["bases"][base];
        let p = common::model(b["model_file"].as_str().unwrap())?;
        let m = Arc::new(Model::load(&p).unwrap());
        self.models.insert(base.to_string(), m.clone());
        Some(m)
    }
}

fn session(m: &Arc<Model>, set: ActiveAdapters, kv_f32: bool) -> Session {
    let mut s = Session::new(
        m.clone(),
        SessionConfig {
            n_ctx: 512,
            n_batch: 512,
            n_threads: 2,
            flash_attn: false,
            kv_f32,
            ..Default::default()
        },
    )
    .unwrap();
    s.set_adapters(set).unwrap();
    s
}

/// Prompt tokens, last logits (if stored) and greedy tokens of one fixture prompt.
fn check_prompt(
    case: &str,
    m: &Arc<Model>,
    set: &ActiveAdapters,
    p: &Value,
    dir: &Path,
    kv_f32: bool,
    tol: f32,
) {
    let name = p["name"].as_str().unwrap();
    let tokens = ids(&p["tokens"]);
    if let Some(text) = p["text"].as_str() {
        assert_eq!(
            m.tokenizer().encode(text, true, true),
            tokens,
            "{case}/{name}: tokens"
        );
    }
    let mut s = session(m, set.clone(), kv_f32);
    let logits = s.decode(&tokens, LogitsFor::Last).unwrap();
    if let Some(f) = p["logits_file"].as_str() {
        let d = max_diff(&logits, &read_f32(&dir.join(f)));
        eprintln!("{case}/{name}: max |logit diff| {d:.2e} (tolerance {tol:.0e})");
        assert!(d <= tol, "{case}/{name}: max |logit diff| {d} > {tol}");
    }
    check_greedy(&format!("{case}/{name}"), &mut s, &logits, p, tol);
}

fn load_set(m: &Model, case: &Value) -> Option<ActiveAdapters> {
    let mut set = ActiveAdapters::none();
    for a in case["adapters"].as_array().unwrap() {
        let p = adapter_path(a["file"].as_str().unwrap(), a["sha256"].as_str().unwrap())?;
        set.set(
            Adapter::load(m, &p).unwrap(),
            a["scale"].as_f64().unwrap() as f32,
        );
    }
    Some(set)
}

/// The order in which llama.cpp summed the deltas of several adapters on one layer. It keeps
/// them in an `unordered_map` keyed by pointer, so its order is unspecified, and with quantized
/// activations the last-bit difference between `(y + d1) + d2` and `(y + d2) + d1` moves the
/// logits by up to ~0.4. graft sums in activation order: of the orderings of the case's
/// adapters, take the one whose logits are nearest the reference (the tolerance still applies
/// to it, and to every prompt and greedy token after it).
fn llamacpp_order(
    case: &str,
    m: &Arc<Model>,
    set: ActiveAdapters,
    p: &Value,
    dir: &Path,
) -> ActiveAdapters {
    let items: Vec<(Arc<Adapter>, f32)> = set.iter().map(|(a, s)| (a.clone(), s)).collect();
    let (Some(f), 2..) = (p["logits_file"].as_str(), items.len()) else {
        return set;
    };
    let want = read_f32(&dir.join(f));
    let tokens = ids(&p["tokens"]);
    let mut reversed = ActiveAdapters::none();
    for (a, s) in items.iter().rev() {
        reversed.set(a.clone(), *s);
    }
    let mut best: Option<(f32, ActiveAdapters, &str)> = None;
    for (order, label) in [(set, "activation order"), (reversed, "reversed")] {
        let got = session(m, order.clone(), false)
            .decode(&tokens, LogitsFor::Last)
            .unwrap();
        let d = max_diff(&got, &want);
        eprintln!("{case}: adapters in {label}: max |logit diff| {d:.2e}");
        if best.as_ref().is_none_or(|(bd, _, _)| d < *bd) {
            best = Some((d, order, label));
        }
    }
    let (_, order, label) = best.unwrap();
    eprintln!("{case}: llama.cpp summed the deltas in {label}");
    order
}

fn run(kind_filter: &[&str]) {
    let Some((dir, doc)) = reference() else {
        return;
    };
    let mut bases = Bases {
        models: HashMap::new(),
    };
    for case in doc["cases"].as_array().unwrap() {
        let kind = case["kind"].as_str().unwrap();
        if !kind_filter.contains(&kind) {
            continue;
        }
        let id = case["id"].as_str().unwrap();
        let Some(m) = bases.get(&doc, case["base"].as_str().unwrap()) else {
            return;
        };
        let Some(set) = load_set(&m, case) else {
            return;
        };
        let set = llamacpp_order(id, &m, set, &case["prompts"][0], &dir);
        // Merged models differ from the hooks by f32 summation order; through an F16 KV cache
        // that occasionally flips an f16 rounding, which moves logits by up to ~2.5e-2 (llama.cpp
        // shows 8.5e-3 for its own LoRA merged vs unmerged). The `-kvf32` cases (F32 KV in both
        // engines) are held to the 1e-2 tolerance.
        let kv_f32 = case["kv_cache"] == "f32";
        let tol = if kind == "merged" && !kv_f32 {
            3.0 * LOGIT_TOL
        } else {
            LOGIT_TOL
        };
        for p in case["prompts"].as_array().unwrap() {
            check_prompt(id, &m, &set, p, &dir, kv_f32, tol);
            if let Some(zf) = p["z_file"].as_str() {
                // LoPA encoder against numpy.
                let (a, s) = set.iter().next().unwrap();
                let z = a.soft_prompt(&m, &ids(&p["tokens"]), s).unwrap().unwrap();
                let want = read_f32(&dir.join(zf));
                let d = max_diff(&z, &want);
                eprintln!("{id}/{}: max |Z diff| {d:.2e}", p["name"]);
                assert!(d < 1e-4, "{id}: soft prompt differs from numpy by {d}");
            }
        }
        // The same delta on the Q4_1 base: the adapter's effect on the logits (with minus
        // without) matches the merged-F32 reference's effect within quantization tolerance.
        if kind == "merged" && !kv_f32 {
            let Some(q) = bases.get(&doc, "q4_1") else {
                return;
            };
            let Some(qset) = load_set(&q, case) else {
                return;
            };
            let p = &case["prompts"][0];
            let tokens = ids(&p["tokens"]);
            let with = session(&q, qset, false)
                .decode(&tokens, LogitsFor::Last)
                .unwrap();
            let without = session(&q, ActiveAdapters::none(), false)
                .decode(&tokens, LogitsFor::Last)
                .unwrap();
            let reference: Value = serde_json::from_str(
                &std::fs::read_to_string(
                    dir.join(doc["bases"]["f32"]["reference"].as_str().unwrap()),
                )
                .unwrap(),
            )
            .unwrap();
            let base_prompt = reference["prompts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == p["name"])
                .unwrap();
            let ref_base = read_f32(
                &dir.join("../reference")
                    .join(base_prompt["logits_file"].as_str().unwrap()),
            );
            let ref_with = read_f32(&dir.join(p["logits_file"].as_str().unwrap()));
            // What quantizing the base does to the logits without the adapter (graft Q4_1 vs
            // llama.cpp F32), and with it (graft Q4_1 + hook vs llama.cpp's merged F32): the
            // adapter on the quantized base must not move the result further from the F32
            // reference than quantization itself does, and its effect must keep its direction.
            let base_err = max_diff(&without, &ref_base);
            let adapted_err = max_diff(&with, &ref_with);
            let eff: Vec<f32> = with.iter().zip(&without).map(|(a, b)| a - b).collect();
            let ref_eff: Vec<f32> = ref_with.iter().zip(&ref_base).map(|(a, b)| a - b).collect();
            let dot: f64 = eff
                .iter()
                .zip(&ref_eff)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let cos = dot / (norm(&eff) * norm(&ref_eff));
            eprintln!(
                "{id} on Q4_1: quantization error {base_err:.3} without, {adapted_err:.3} with the adapter; effect cosine {cos:.4}"
            );
            assert!(
                adapted_err < 1.5 * base_err + 0.1,
                "{id}: {adapted_err} vs base {base_err}"
            );
            // WeGeFT generates its delta from W itself, so on a quantized W the delta differs
            // by design (W_q φᵀψ vs W φᵀψ): direction only, not equality.
            assert!(cos > 0.9, "{id}: effect direction cosine {cos}");
        }
    }
}

#[test]
fn lora_matches_llamacpp() {
    run(&["lora"]);
}

#[test]
fn diablo_and_wegeft_match_merged_models_in_llamacpp() {
    run(&["merged"]);
}

#[test]
fn lopa_matches_llamacpp_and_numpy() {
    run(&["lopa"]);
}

/// With an exact (F32) KV cache, the DiaBlo and WeGeFT hooks on the real model equal the same
/// adapters folded into the weights by `graft merge` far inside the 1e-2 tolerance: the
/// larger differences against llama.cpp's merged models come from F16 KV rounding flips.
#[test]
fn hooks_equal_merged_weights_with_an_exact_kv_cache() {
    let Some((_, doc)) = reference() else {
        return;
    };
    let mut bases = Bases {
        models: HashMap::new(),
    };
    let Some(m) = bases.get(&doc, "f32") else {
        return;
    };
    let tokens = ids(&doc["cases"][0]["prompts"][0]["tokens"]);
    for case in doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "merged")
    {
        let id = case["id"].as_str().unwrap();
        let Some(set) = load_set(&m, case) else {
            return;
        };
        let hook = session(&m, set.clone(), true)
            .decode(&tokens, LogitsFor::Last)
            .unwrap();
        let out =
            std::env::temp_dir().join(format!("graft-merged-{id}-{}.gguf", std::process::id()));
        graft::adapter::merge::merge(
            &m,
            &set,
            graft::adapter::merge::MergeType::F32,
            &out,
            |_, _| {},
        )
        .unwrap();
        let merged = Arc::new(Model::load(&out).unwrap());
        let want = session(&merged, ActiveAdapters::none(), true)
            .decode(&tokens, LogitsFor::Last)
            .unwrap();
        let _ = std::fs::remove_file(&out);
        let d = max_diff(&hook, &want);
        eprintln!("{id}: hook vs merged (F32 KV) {d:.2e}");
        assert!(d < 1e-3, "{id}: {d}");
    }
}
