//! PEFT LoRA import against PEFT + transformers on CPU (fixtures made by
//! `tests/fixtures/peft/gen_peft_reference.py` from the F32 SmolLM2 GGUF; see its README).
//!
//! The adapters exercise rank_pattern / alpha_pattern, rsLoRA, f16 storage and the q/k row
//! permutation. PEFT computes in float32 everywhere, so graft runs with an F32 KV cache here.

mod common;

use common::{check_greedy, ids, max_diff, read_f32};

use std::path::Path;
use std::sync::Arc;

use graft::adapter::{export_peft, import_peft, import_peft_bytes};
use graft::{ActiveAdapters, Adapter, LogitsFor, Model, Session, SessionConfig};
use serde_json::Value;

const TOL: f32 = 1e-2;

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft")
}

fn check(model: &Arc<Model>, adapter: Arc<Adapter>, fx: &Value, label: &str) {
    for p in fx["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let tokens = ids(&p["tokens"]);
        let mut s = Session::new(
            model.clone(),
            SessionConfig {
                n_ctx: 256,
                n_batch: 256,
                n_threads: 2,
                flash_attn: false,
                kv_f32: true,
                ..Default::default()
            },
        )
        .unwrap();
        s.set_adapters(ActiveAdapters::none().with(adapter.clone(), 1.0))
            .unwrap();
        let logits = s.decode(&tokens, LogitsFor::Last).unwrap();
        let d = max_diff(
            &logits,
            &read_f32(&dir().join(p["logits_file"].as_str().unwrap())),
        );
        eprintln!("{label}/{name}: max |logit diff| vs PEFT {d:.2e}");
        assert!(d <= TOL, "{label}/{name}: {d} > {TOL}");
        check_greedy(&format!("{label}/{name}"), &mut s, &logits, p, TOL);
    }
}

#[test]
fn peft_adapters_match_peft_transformers() {
    let Some(path) = common::model("SmolLM2-135M-Instruct.F32.gguf") else {
        return;
    };
    let model = Arc::new(Model::load(&path).unwrap());
    for name in ["adapter_rp", "adapter_rslora"] {
        let fx: Value = serde_json::from_str(
            &std::fs::read_to_string(dir().join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        // Loaded straight from the PEFT directory.
        let direct = Adapter::load(&model, dir().join(name)).unwrap();
        check(&model, direct, &fx, &format!("{name} (dir)"));
        // Imported to GGUF, then loaded as a file: the same.
        let out =
            std::env::temp_dir().join(format!("graft-peft-{name}-{}.gguf", std::process::id()));
        import_peft(&model, &dir().join(name), &out).unwrap();
        let imported = Adapter::load(&model, &out).unwrap();
        check(&model, imported.clone(), &fx, &format!("{name} (gguf)"));
        // Imported from bytes in memory (an app's assets, a download): the same.
        let d = dir().join(name);
        let bytes = import_peft_bytes(
            &model,
            &std::fs::read_to_string(d.join("adapter_config.json")).unwrap(),
            &std::fs::read(d.join("adapter_model.safetensors")).unwrap(),
        )
        .unwrap();
        let g = graft_formats::Gguf::from_bytes(bytes).unwrap();
        let from_bytes = Adapter::from_gguf(&model, Arc::new(g), name.into()).unwrap();
        check(
            &model,
            Arc::new(from_bytes),
            &fx,
            &format!("{name} (bytes)"),
        );
        // Export back to PEFT and re-import: same logits as the imported file.
        let exp =
            std::env::temp_dir().join(format!("graft-peft-export-{name}-{}", std::process::id()));
        export_peft(&model, &imported, &exp, None).unwrap();
        let again = Adapter::load(&model, &exp).unwrap();
        check(&model, again, &fx, &format!("{name} (exported)"));
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_dir_all(&exp);
    }
}
