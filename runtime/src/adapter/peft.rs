//! PEFT LoRA interchange: import `adapter_config.json` + `adapter_model.safetensors` as a
//! llama.cpp-format GGUF LoRA, and export a GGUF LoRA as a PEFT directory.
//!
//! Names: `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` (r x n_in) is
//! `blk.N.attn_q.weight.lora_a` (ne=[n_in, r], the same bytes); `lora_B` (n_out x r) is
//! `.lora_b` (ne=[r, n_out]). Per-target scales (`rank_pattern`, `alpha_pattern`, rsLoRA) are
//! folded into B and the file gets `alpha = 0` (scale = s_user), so it stays loadable by
//! llama.cpp too. llama-architecture GGUF files store attn_q/attn_k rows permuted for RoPE
//! (the HF->GGUF converter's `permute`); B's rows for q/k get the same permutation.

use std::collections::BTreeMap;
use std::path::Path;

use graft_formats::{GgmlType, GgufWriter, Value};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use super::{Adapter, AdapterKind, Delta, Target, TargetKind};
use crate::error::{Error, Result};
use crate::model::{Arch, Model};

/// HF module names of the targets.
fn hf_module(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::AttnQ => "self_attn.q_proj",
        TargetKind::AttnK => "self_attn.k_proj",
        TargetKind::AttnV => "self_attn.v_proj",
        TargetKind::AttnOut => "self_attn.o_proj",
        TargetKind::FfnGate => "mlp.gate_proj",
        TargetKind::FfnUp => "mlp.up_proj",
        TargetKind::FfnDown => "mlp.down_proj",
    }
}

#[derive(Deserialize)]
struct PeftConfig {
    #[serde(default)]
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f32,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, f32>,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    bias: Option<String>,
}

/// The row permutation the HF->GGUF converter applies to llama q/k weights: new row
/// `h*hd + 2b + a` takes old row `h*hd + a*hd/2 + b`.
fn rope_permute_rows(
    rows: &[f32],
    n_rows: usize,
    row_len: usize,
    n_head: usize,
    inverse: bool,
) -> Vec<f32> {
    let hd = n_rows / n_head;
    let mut out = vec![0f32; rows.len()];
    for h in 0..n_head {
        for a in 0..2 {
            for b in 0..hd / 2 {
                let hf = h * hd + a * (hd / 2) + b;
                let gg = h * hd + 2 * b + a;
                let (src, dst) = if inverse { (gg, hf) } else { (hf, gg) };
                out[dst * row_len..(dst + 1) * row_len]
                    .copy_from_slice(&rows[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    out
}

/// Whether PEFT's pattern `key` matches module `name` (a suffix at a dot boundary, as a regex).
fn pattern_matches(key: &str, name: &str) -> bool {
    regex::Regex::new(&format!(r"(^|.*\.){key}$")).is_ok_and(|re| re.is_match(name))
}

fn to_f32(view: &safetensors::tensor::TensorView<'_>, name: &str) -> Result<Vec<f32>> {
    let d = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::InvalidAdapter(format!(
                "{name} has dtype {other:?}; PEFT import reads f32, f16 and bf16"
            )))
        }
    })
}

fn read_err(file: &str, e: impl std::fmt::Display) -> Error {
    Error::InvalidAdapter(format!("{file}: {e}"))
}

/// Converts the PEFT directory `dir` into GGUF LoRA bytes for `model`.
pub(crate) fn import_peft_to_gguf_bytes(model: &Model, dir: &Path) -> Result<Vec<u8>> {
    Ok(import_dir(model, dir)?.to_bytes()?)
}

/// Imports the PEFT LoRA in `dir` for `model` and writes it as a GGUF LoRA at `out`
/// (atomically).
pub fn import_peft(model: &Model, dir: &Path, out: &Path) -> Result<()> {
    import_dir(model, dir)?.write_atomic(out)?;
    Ok(())
}

/// Converts a PEFT LoRA given as the text of its `adapter_config.json` and the bytes of its
/// `adapter_model.safetensors` into GGUF LoRA bytes for `model` (for adapters that arrive over
/// the network or from an app's assets rather than from a directory).
pub fn import_peft_bytes(model: &Model, config_json: &str, safetensors: &[u8]) -> Result<Vec<u8>> {
    let files = PeftFiles {
        config: "adapter_config.json",
        tensors: "adapter_model.safetensors",
        description: "imported from PEFT (in memory)".into(),
    };
    Ok(import_parts(model, config_json, safetensors, &files)?.to_bytes()?)
}

fn import_dir(model: &Model, dir: &Path) -> Result<GgufWriter<'static>> {
    let cfg_path = dir.join("adapter_config.json");
    let st_path = dir.join("adapter_model.safetensors");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::Io {
        path: cfg_path.display().to_string(),
        cause: e,
    })?;
    let bytes = std::fs::read(&st_path).map_err(|e| Error::Io {
        path: st_path.display().to_string(),
        cause: e,
    })?;
    let (config, tensors) = (
        cfg_path.display().to_string(),
        st_path.display().to_string(),
    );
    let files = PeftFiles {
        config: &config,
        tensors: &tensors,
        description: format!("imported from PEFT {}", dir.display()),
    };
    import_parts(model, &cfg_text, &bytes, &files)
}

/// How errors and the description name the two inputs.
struct PeftFiles<'a> {
    config: &'a str,
    tensors: &'a str,
    description: String,
}

fn import_parts(
    model: &Model,
    cfg_text: &str,
    bytes: &[u8],
    files: &PeftFiles<'_>,
) -> Result<GgufWriter<'static>> {
    let (cfg_path, st_path) = (files.config, files.tensors);
    let cfg: PeftConfig = serde_json::from_str(cfg_text).map_err(|e| read_err(cfg_path, e))?;
    if cfg.peft_type.as_deref().is_some_and(|t| t != "LORA") {
        return Err(read_err(
            cfg_path,
            format!("peft_type {:?} is not LORA", cfg.peft_type),
        ));
    }
    if cfg.use_dora || cfg.fan_in_fan_out || cfg.bias.as_deref().is_some_and(|b| b != "none") {
        return Err(read_err(
            cfg_path,
            "DoRA, fan_in_fan_out and LoRA biases are not supported",
        ));
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| read_err(st_path, e))?;
    let c = model.config();
    let mut w = GgufWriter::new();
    w.add_kv("general.type", "adapter");
    w.add_kv("general.architecture", c.arch.name());
    w.add_kv("adapter.type", "lora");
    w.add_kv("adapter.lora.alpha", Value::F32(0.0));
    w.add_kv("adapter.base.fingerprint", model.fingerprint());
    w.add_kv("adapter.base.quantization", model.quantization());
    w.add_kv("adapter.description", files.description.clone());
    let mut seen = 0usize;
    let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    for name in &names {
        if !name.ends_with(".lora_A.weight") {
            if name.ends_with(".lora_B.weight") {
                continue;
            }
            return Err(read_err(
                st_path,
                format!("unsupported tensor {name} (only LoRA A/B are imported)"),
            ));
        }
        let module = name
            .trim_end_matches(".lora_A.weight")
            .trim_start_matches("base_model.model.");
        let (layer, kind) = parse_module(module).ok_or_else(|| {
            read_err(
                st_path,
                format!("{name}: not a llama/qwen2 attention or MLP projection"),
            )
        })?;
        let target = Target { layer, kind };
        if layer >= c.n_layer {
            return Err(read_err(
                st_path,
                format!(
                    "{name}: layer {layer} but the base has {} layers",
                    c.n_layer
                ),
            ));
        }
        let b_name = name.replace(".lora_A.weight", ".lora_B.weight");
        let a = st.tensor(name).map_err(|e| read_err(st_path, e))?;
        let b = st.tensor(&b_name).map_err(|_| {
            read_err(
                st_path,
                format!("{b_name} is missing (lora_A without lora_B)"),
            )
        })?;
        let (n_in, n_out) = kind.dims(model);
        let r = a.shape().first().copied().unwrap_or(0);
        if a.shape() != [r, n_in] || r == 0 {
            return Err(read_err(
                st_path,
                format!("{name} has shape {:?}, expected [r, {n_in}]", a.shape()),
            ));
        }
        if b.shape() != [n_out, r] {
            return Err(read_err(
                st_path,
                format!(
                    "{b_name} has shape {:?}, expected [{n_out}, {r}]",
                    b.shape()
                ),
            ));
        }
        let rank = cfg
            .rank_pattern
            .iter()
            .find(|(k, _)| pattern_matches(k, module))
            .map_or(cfg.r, |(_, v)| *v);
        if rank != r {
            return Err(read_err(
                st_path,
                format!("{name} has rank {r}, the config says {rank}"),
            ));
        }
        let alpha = cfg
            .alpha_pattern
            .iter()
            .find(|(k, _)| pattern_matches(k, module))
            .map_or(cfg.lora_alpha, |(_, v)| *v);
        let scale = if cfg.use_rslora {
            alpha / (r as f32).sqrt()
        } else {
            alpha / r as f32
        };
        let a_f = to_f32(&a, name)?;
        let mut b_f: Vec<f32> = to_f32(&b, &b_name)?
            .into_iter()
            .map(|v| v * scale)
            .collect();
        if c.arch == Arch::Llama {
            match kind {
                TargetKind::AttnQ => b_f = rope_permute_rows(&b_f, n_out, r, c.n_head, false),
                TargetKind::AttnK => b_f = rope_permute_rows(&b_f, n_out, r, c.n_head_kv, false),
                _ => {}
            }
        }
        let base = target.tensor_name();
        w.add_tensor_f32(format!("{base}.lora_a"), &[n_in as u64, r as u64], &a_f)?;
        w.add_tensor_f32(format!("{base}.lora_b"), &[r as u64, n_out as u64], &b_f)?;
        seen += 1;
    }
    if seen == 0 {
        return Err(read_err(st_path, "no LoRA tensors found"));
    }
    Ok(w)
}

fn parse_module(module: &str) -> Option<(usize, TargetKind)> {
    // model.layers.N.<self_attn|mlp>.<proj>
    let rest = module.strip_prefix("model.layers.")?;
    let (layer, proj) = rest.split_once('.')?;
    let kind = TargetKind::ALL
        .into_iter()
        .find(|k| hf_module(*k) == proj)?;
    Some((layer.parse().ok()?, kind))
}

/// Writes the LoRA `adapter` as a PEFT directory at `dir` (`adapter_config.json` +
/// `adapter_model.safetensors`, f32), undoing the q/k row permutation, with each target's
/// scale folded into B (so `lora_alpha == r` everywhere).
/// The model's Hugging Face repository id, when the GGUF records one
/// (`general.source.huggingface.repository`, or a `huggingface.co` URL in `general.source.url`
/// / `general.url`), for `base_model_name_or_path`. `None`: the file does not say.
pub fn huggingface_id(model: &Model) -> Option<String> {
    let g = model.gguf();
    let s = |k: &str| g.get_opt_str(k).ok().flatten().map(str::trim);
    if let Some(id) = s("general.source.huggingface.repository").filter(|v| !v.is_empty()) {
        return Some(id.to_string());
    }
    [
        "general.source.url",
        "general.url",
        "general.source.repo_url",
        "general.repo_url",
    ]
    .into_iter()
    .filter_map(s)
    .find_map(|url| {
        let rest = url
            .strip_prefix("https://huggingface.co/")
            .or_else(|| url.strip_prefix("http://huggingface.co/"))?;
        let mut parts = rest.split('/').filter(|p| !p.is_empty());
        let (org, name) = (parts.next()?, parts.next()?);
        Some(format!("{org}/{name}"))
    })
}

/// Writes `adapter` (a LoRA) as a PEFT directory. `base_model` fills `base_model_name_or_path`
/// (what PEFT loads the base from); `None` takes [`huggingface_id`], else `general.name`.
pub fn export_peft(
    model: &Model,
    adapter: &Adapter,
    dir: &Path,
    base_model: Option<&str>,
) -> Result<()> {
    if adapter.kind() != AdapterKind::Lora {
        return Err(Error::InvalidRequest(format!(
            "only LoRA adapters can be exported to PEFT ({} is {})",
            adapter.name(),
            adapter.kind().name()
        )));
    }
    let c = model.config();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut ranks: BTreeMap<String, usize> = BTreeMap::new();
    let mut kinds = std::collections::BTreeSet::new();
    for t in adapter.targets() {
        for d in adapter.deltas(t) {
            let Delta::Lora { a, b, scale } = *d else {
                continue;
            };
            let (n_in, n_out) = t.kind.dims(model);
            let a_f = adapter.tensor_f32(a)?;
            let r = a_f.len() / n_in;
            let mut b_f: Vec<f32> = adapter
                .tensor_f32(b)?
                .into_iter()
                .map(|v| v * scale)
                .collect();
            if c.arch == Arch::Llama {
                match t.kind {
                    TargetKind::AttnQ => b_f = rope_permute_rows(&b_f, n_out, r, c.n_head, true),
                    TargetKind::AttnK => b_f = rope_permute_rows(&b_f, n_out, r, c.n_head_kv, true),
                    _ => {}
                }
            }
            let module = format!("model.layers.{}.{}", t.layer, hf_module(t.kind));
            let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            tensors.push((
                format!("base_model.model.{module}.lora_A.weight"),
                vec![r, n_in],
                bytes(&a_f),
            ));
            tensors.push((
                format!("base_model.model.{module}.lora_B.weight"),
                vec![n_out, r],
                bytes(&b_f),
            ));
            ranks.insert(module, r);
            kinds.insert(
                hf_module(t.kind)
                    .rsplit('.')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    let r_max = ranks.values().copied().max().unwrap_or(1);
    let rank_pattern: BTreeMap<String, usize> = ranks
        .iter()
        .filter(|(_, r)| **r != r_max)
        .map(|(k, r)| (format!("^{}$", regex::escape(k)), *r))
        .collect();
    let alpha_pattern: BTreeMap<String, f32> = rank_pattern
        .iter()
        .map(|(k, r)| (k.clone(), *r as f32))
        .collect();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r_max,
        "lora_alpha": r_max as f32,
        "target_modules": kinds.into_iter().collect::<Vec<_>>(),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "inference_mode": true,
        "base_model_name_or_path": base_model.map(str::to_string).or_else(|| huggingface_id(model)).unwrap_or_else(|| model.gguf().get_opt_str("general.name").ok().flatten().unwrap_or("").to_string()),
    });
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, data)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::InvalidRequest(format!("{n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let st_bytes =
        safetensors::serialize(views, None).map_err(|e| Error::InvalidRequest(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        path: dir.display().to_string(),
        cause: e,
    })?;
    write_atomic(&dir.join("adapter_model.safetensors"), &st_bytes)?;
    let cfg_text =
        serde_json::to_string_pretty(&config).map_err(|e| Error::InvalidRequest(e.to_string()))?;
    write_atomic(&dir.join("adapter_config.json"), cfg_text.as_bytes())?;
    let _ = GgmlType::F32;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |e| Error::Io {
        path: path.display().to_string(),
        cause: e,
    };
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}
