//! `graft inspect`: what a GGUF file holds.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result};
use graft_formats::{Gguf, Value};
use serde_json::json;

pub fn run(path: &Path, as_json: bool) -> Result<()> {
    let g = Gguf::open(path).with_context(|| format!("reading {}", path.display()))?;
    let arch = g
        .get_opt_str("general.architecture")?
        .unwrap_or("?")
        .to_string();
    let kind = g
        .get_opt_str("general.type")?
        .unwrap_or("model")
        .to_string();
    let adapter = g.get_opt_str("adapter.type")?.map(str::to_string);
    let mut types: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for t in g.tensors() {
        let e = types.entry(t.dtype.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    let n_params: u64 = g.tensors().iter().map(|t| t.n_elements()).sum();
    let data_bytes: u64 = g.tensors().iter().map(|t| t.n_bytes).sum();
    // An adapter's training state (`train.*`: optimizer moments, GaLore) apart from the
    // parameters it applies.
    let state = |t: &&graft_formats::TensorInfo| t.name.starts_with("train.");
    let state_params: u64 = g
        .tensors()
        .iter()
        .filter(state)
        .map(|t| t.n_elements())
        .sum();
    let state_bytes: u64 = g.tensors().iter().filter(state).map(|t| t.n_bytes).sum();
    let hp = |k: &str| g.get(&format!("{arch}.{k}")).map(value_str);
    let hp_json = |k: &str| g.get(&format!("{arch}.{k}")).map(value_json);
    let tok_model = g.get_opt_str("tokenizer.ggml.model")?.map(str::to_string);
    let tok_pre = g.get_opt_str("tokenizer.ggml.pre")?.map(str::to_string);
    let n_tokens = g
        .get_opt_str_array("tokenizer.ggml.tokens")?
        .map(|t| t.len());
    if as_json {
        let out = json!({
            "file": path.display().to_string(),
            "gguf_version": g.version(),
            "type": kind,
            "architecture": arch,
            "adapter_type": adapter,
            "name": g.get_opt_str("general.name")?,
            "tensors": g.tensors().len(),
            "parameters": n_params,
            "data_bytes": data_bytes,
            "trained_parameters": adapter.is_some().then_some(n_params - state_params),
            "train_state_parameters": adapter.is_some().then_some(state_params),
            "train_state_bytes": adapter.is_some().then_some(state_bytes),
            "tensor_types": types.iter().map(|(k, (n, b))| (k.clone(), json!({"count": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
            "block_count": hp_json("block_count"),
            "embedding_length": hp_json("embedding_length"),
            "head_count": hp_json("attention.head_count"),
            "head_count_kv": hp_json("attention.head_count_kv"),
            "context_length": hp_json("context_length"),
            "tokenizer": {"model": tok_model, "pre": tok_pre, "tokens": n_tokens},
        });
        println!("{out:#}");
        return Ok(());
    }
    println!("file:                     {}", path.display());
    println!("gguf version:             {}", g.version());
    println!(
        "type:                     {kind}{}",
        adapter.map(|a| format!(" ({a})")).unwrap_or_default()
    );
    println!("architecture:             {arch}");
    if let Some(n) = g.get_opt_str("general.name")? {
        println!("name:                     {n}");
    }
    println!(
        "tensors:                  {} ({:.1} M parameters, {:.1} MiB)",
        g.tensors().len(),
        n_params as f64 / 1e6,
        data_bytes as f64 / (1 << 20) as f64
    );
    if state_params > 0 {
        println!(
            "                          {:.2} M trained parameters; {:.2} M of training state ({:.1} MiB, `graft strip` removes it)",
            (n_params - state_params) as f64 / 1e6,
            state_params as f64 / 1e6,
            state_bytes as f64 / (1 << 20) as f64
        );
    }
    for (ty, (n, b)) in &types {
        println!(
            "  {ty:>8}: {n:>4} tensors, {:>8.2} MiB",
            *b as f64 / (1 << 20) as f64
        );
    }
    for k in [
        "block_count",
        "embedding_length",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "context_length",
        "rope.freq_base",
    ] {
        if let Some(v) = hp(k) {
            // Wide enough for the longest key (attention.head_count_kv).
            println!("{:<26}{v}", format!("{k}:"));
        }
    }
    if let Some(m) = tok_model {
        println!(
            "tokenizer:                {m} (pre {}), {} tokens",
            tok_pre.unwrap_or_else(|| "default".into()),
            n_tokens.unwrap_or(0)
        );
    }
    Ok(())
}

fn value_str(v: &Value) -> String {
    if let Some(s) = v.as_str() {
        s.to_string()
    } else if let Some(i) = v.as_i128() {
        i.to_string()
    } else if let Some(f) = v.as_f32() {
        f.to_string()
    } else {
        v.type_name()
    }
}

/// A metadata value as JSON: numbers as numbers, strings as strings, arrays by their length.
fn value_json(v: &Value) -> serde_json::Value {
    if let Some(s) = v.as_str() {
        json!(s)
    } else if let Some(i) = v.as_i128() {
        i64::try_from(i).map_or_else(|_| json!(i.to_string()), |i| json!(i))
    } else if let Some(f) = v.as_f32() {
        json!(f)
    } else {
        json!(v.type_name())
    }
}
