//! graft against llama.cpp on real and generated models: prompt tokens, last-position
//! logits (max-abs 1e-2), 32 greedy tokens and perplexity (0.5 %).
//!
//! The references are computed on this machine by llama.cpp (llama-cpp-python 0.3.36, built for
//! this CPU) with `tests/fixtures/gen_reference.py`, run by `scripts/references.sh`; see
//! `tests/fixtures/README.md`.

mod common;

use common::{check_greedy, ids, read_f32, sha256};

use std::path::PathBuf;
use std::sync::Arc;

use graft::perplexity::perplexity;
use graft::{LogitsFor, Model, Session, SessionConfig};
use serde_json::Value;

const LOGIT_TOL: f32 = 1e-2;
const PPL_REL_TOL: f64 = 0.005;

/// `<references>/reference/`, or `None` when skipping (see `common::references_dir`).
fn reference_dir() -> Option<PathBuf> {
    Some(common::references_dir()?.join("reference"))
}

fn fixture(dir: &std::path::Path, variant: &str) -> Value {
    let p = dir.join(format!("{variant}.json"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn session(model: &Arc<Model>, fx: &Value) -> Session {
    let n_ctx = fx["settings"]["n_ctx"].as_u64().unwrap() as usize;
    Session::new(
        model.clone(),
        SessionConfig {
            n_ctx,
            n_batch: 512,
            n_threads: 2,
            flash_attn: false,
            kv_f32: false,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Checks one model variant against its fixture.
fn check_variant(variant: &str) {
    let Some(dir) = reference_dir() else {
        return;
    };
    let fx = fixture(&dir, variant);
    let file = fx["model_file"].as_str().unwrap();
    let Some(path) = common::model(file) else {
        return;
    };
    assert_eq!(
        sha256(&path),
        fx["model_sha256"].as_str().unwrap(),
        "{} is not the file the references were made from (rebuild it with the pinned scripts)",
        path.display()
    );
    let model = Arc::new(Model::load(&path).unwrap());
    let n_vocab = model.config().n_vocab;
    let mut s = session(&model, &fx);
    for p in fx["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let tokens = ids(&p["tokens"]);
        if let Some(text) = p["text"].as_str() {
            assert_eq!(
                model.tokenizer().encode(text, true, true),
                tokens,
                "{variant}/{name}: prompt tokens differ from llama.cpp's"
            );
        }
        s.clear();
        let logits = s.decode(&tokens, LogitsFor::Last).unwrap();
        let reference = read_f32(&dir.join(p["logits_file"].as_str().unwrap()));
        assert_eq!(reference.len(), n_vocab);
        let max_abs = logits
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{variant}/{name}: {} prompt tokens, max |logit diff| = {max_abs:.2e}",
            tokens.len()
        );
        assert!(
            max_abs <= LOGIT_TOL,
            "{variant}/{name}: max |logit diff| {max_abs} > {LOGIT_TOL}"
        );

        let matched = check_greedy(&format!("{variant}/{name}"), &mut s, &logits, p, LOGIT_TOL);
        let margins = common::f64s(&p["greedy_margins"]);
        let greedy = ids(&p["greedy"]);
        if margins.iter().all(|&m| m >= 2.0 * LOGIT_TOL as f64) {
            assert_eq!(matched, greedy.len());
        }
    }

    if let Some(ppl) = fx.get("perplexity").filter(|v| !v.is_null()) {
        let text_path = common::sotu_dir().join(ppl["file"].as_str().unwrap());
        let text = std::fs::read_to_string(&text_path).unwrap_or_else(|e| {
            panic!("{}: {e} (run scripts/fetch_model.sh)", text_path.display())
        });
        let mut tokens = model.tokenizer().encode(&text, false, false);
        assert_eq!(
            tokens.len() as u64,
            ppl["file_tokens"].as_u64().unwrap(),
            "file token count"
        );
        tokens.truncate(ppl["max_tokens"].as_u64().unwrap() as usize);
        let ctx = ppl["ctx"].as_u64().unwrap() as usize;
        let got = perplexity(&mut s, &tokens, ctx, |_, _| {}).unwrap();
        let want = ppl["perplexity"].as_f64().unwrap();
        let rel = (got.perplexity - want).abs() / want;
        eprintln!(
            "{variant}: perplexity {:.4} vs llama.cpp {want:.4} ({:.3} %)",
            got.perplexity,
            rel * 100.0
        );
        assert_eq!(got.tokens as u64, ppl["tokens"].as_u64().unwrap());
        assert!(
            rel <= PPL_REL_TOL,
            "{variant}: perplexity {} vs {want}",
            got.perplexity
        );
    }
}

#[test]
fn smollm2_q4_1_matches_llamacpp() {
    check_variant("smollm2-q4_1");
}

#[test]
fn smollm2_q8_0_matches_llamacpp() {
    check_variant("smollm2-q8_0");
}

#[test]
fn smollm2_q4_0_matches_llamacpp() {
    check_variant("smollm2-q4_0");
}

#[test]
fn smollm2_f32_matches_llamacpp() {
    check_variant("smollm2-f32");
}

#[test]
fn qwen2_tiny_matches_llamacpp_in_every_type() {
    for v in [
        "qwen2-tiny-f32",
        "qwen2-tiny-f16",
        "qwen2-tiny-q8_0",
        "qwen2-tiny-q4_0",
        "qwen2-tiny-q4_1",
    ] {
        check_variant(v);
    }
}
