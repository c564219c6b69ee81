//! Adapter commands of the CLI: `chat` (with live adapter swapping), `merge`, `import-peft`
//! and `export-peft`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use graft::adapter::merge::{merge as merge_model, MergeType};
use graft::adapter::registry::LoadPolicy;
use graft::adapter::{export_peft as export, import_peft as import};
use graft::tokenizer::ChatMessage;
use graft::{Adapter, GenerateRequest, Model, SamplerConfig};

use crate::{load, ModelArgs};

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 256, value_parser = crate::args::count)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.7, value_parser = crate::args::non_negative)]
    temperature: f32,
    /// RNG seed.
    #[arg(long, default_value_t = 0, value_parser = crate::args::seed)]
    seed: u64,
    /// Context length.
    #[arg(long, default_value_t = 4096, value_parser = crate::args::context_length)]
    ctx: usize,
}

#[derive(Args)]
pub struct MergeArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// Output model file.
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
    /// Type of the merged tensors: f32, f16, same (the base tensor's type, re-quantized with
    /// ggml) or a ggml type name (q8_0, q4_1, ...).
    #[arg(long = "type", default_value = "f32")]
    ty: String,
}

#[derive(Args)]
pub struct ImportPeftArgs {
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    dir: PathBuf,
    /// Output GGUF LoRA.
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
    /// The base model (shapes, RoPE row permutation, fingerprint); default: $GRAFT_MODEL.
    #[arg(long, env = "GRAFT_MODEL")]
    model: Option<PathBuf>,
}

#[derive(Args)]
pub struct ExportPeftArgs {
    /// The base model.
    #[arg(long)]
    model: PathBuf,
    /// The GGUF LoRA to export.
    #[arg(long)]
    adapter: PathBuf,
    /// Output directory.
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
    /// `base_model_name_or_path` of adapter_config.json (the Hugging Face id PEFT loads the
    /// base from). Default: the id the GGUF records, else its `general.name` (with a note).
    #[arg(long, value_name = "HF_ID")]
    base_model: Option<String>,
}

pub fn merge(a: MergeArgs) -> Result<()> {
    let ty = MergeType::parse(&a.ty)
        .with_context(|| format!("--type {}: not f32, f16, same or a ggml type", a.ty))?;
    let (engine, _reg, adapters) = load(&a.m, 16)?;
    if adapters.is_empty() {
        bail!("merge needs at least one --adapter or --adapter-scaled");
    }
    let t = Instant::now();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("merging {bar:30} {pos}/{len} tensors {elapsed}")
            .expect("static template"),
    );
    merge_model(engine.model(), &adapters, ty, &a.out, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} in {:.1} s",
        a.out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn import_peft(a: ImportPeftArgs) -> Result<()> {
    let Some(model_path) = a.model else {
        bail!("import-peft needs the base model (--model M.gguf or GRAFT_MODEL): the adapter's shapes, RoPE row permutation and fingerprint come from it");
    };
    let model = Model::load(&model_path)
        .with_context(|| format!("loading model {}", model_path.display()))?;
    import(&model, &a.dir, &a.out).with_context(|| format!("importing {}", a.dir.display()))?;
    // Check the result loads.
    let adapter = Adapter::load(&model, &a.out)?;
    eprintln!(
        "wrote {} ({} targets, rank {}, {} bytes)",
        a.out.display(),
        adapter.targets().len(),
        adapter.rank(),
        adapter.n_bytes()
    );
    Ok(())
}

pub fn export_peft(a: ExportPeftArgs) -> Result<()> {
    let model =
        Model::load(&a.model).with_context(|| format!("loading model {}", a.model.display()))?;
    let adapter = Adapter::load(&model, &a.adapter)
        .with_context(|| format!("loading adapter {}", a.adapter.display()))?;
    if a.base_model.is_none() && graft::adapter::huggingface_id(&model).is_none() {
        eprintln!(
            "note: {} records no Hugging Face id; base_model_name_or_path is its general.name. \
             Pass --base-model ORG/NAME (e.g. HuggingFaceTB/SmolLM2-135M-Instruct) so PEFT can load the base",
            a.model.display()
        );
    }
    export(&model, &adapter, &a.out, a.base_model.as_deref())?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

pub fn chat(a: ChatArgs) -> Result<()> {
    let (engine, registry, mut active) = load(&a.m, a.ctx)?;
    let tok = engine.model().tokenizer();
    let mut session = engine.new_session()?;
    let mut messages: Vec<ChatMessage> = a
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s.clone()))
        .collect();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    eprintln!("graft chat — /adapter load PATH [NAME] | use NAME [SCALE] | add NAME [SCALE] | scale NAME S | off [NAME] | list; /reset; /quit");
    session.set_adapters(active.clone())?;
    eprintln!("[active: {}]", describe(&active));
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            continue;
        }
        if let Some(cmd) = line.strip_prefix('/') {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            match words.as_slice() {
                ["quit"] | ["exit"] => break,
                ["reset"] => {
                    messages.retain(|m| m.role == "system");
                    session.clear();
                    eprintln!("[conversation cleared]");
                }
                ["adapter", rest @ ..] => {
                    if let Err(e) = adapter_command(rest, &registry, &mut active, &mut session) {
                        eprintln!("error: {e:#}");
                    }
                }
                _ => eprintln!("unknown command /{cmd}"),
            }
            continue;
        }
        messages.push(ChatMessage::new("user", line));
        let prompt = tok.apply_chat_template(&messages, true)?;
        let tokens = engine.tokenize_prompt(&prompt);
        // Reuse the cached prefix; evaluate only what changed.
        let common = session
            .tokens()
            .iter()
            .zip(&tokens)
            .take_while(|(a, b)| a == b)
            .count();
        let common = common.min(tokens.len().saturating_sub(1));
        session.truncate(common);
        let recomputed = session.cache_is_stale();
        let req = GenerateRequest {
            prompt: String::new(),
            max_tokens: a.max_tokens,
            sampler: SamplerConfig {
                temperature: a.temperature,
                seed: a.seed,
                ..SamplerConfig::default()
            },
            stop_at_eog: true,
            cancel: None,
            adapters: active.clone(),
        };
        let g = engine.generate_tokens(&mut session, tokens[common..].to_vec(), &req, |piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
            true
        })?;
        println!();
        let cache = match (common, recomputed) {
            (0, _) => "no cached prompt tokens".to_string(),
            (n, true) => format!("{n} cached prompt tokens recomputed for the new adapters"),
            (n, false) => format!("{n} cached prompt tokens reused"),
        };
        let stop = match g.stop_reason {
            graft::engine::StopReason::ContextFull => "; stopped: the context is full (/reset)",
            _ => "",
        };
        eprintln!(
            "[{} tokens, {:.1} tok/s; {cache}{stop}]",
            g.tokens.len(),
            g.timings.decode_tokens_per_s
        );
        messages.push(ChatMessage::new("assistant", g.text.trim()));
    }
    Ok(())
}

fn adapter_command(
    words: &[&str],
    registry: &graft::adapter::registry::AdapterRegistry,
    active: &mut graft::ActiveAdapters,
    session: &mut graft::Session,
) -> Result<()> {
    let t = Instant::now();
    match words {
        ["load", path] | ["load", path, _] => {
            let p = PathBuf::from(path);
            let name = words.get(2).map(|s| s.to_string()).unwrap_or_else(|| {
                p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "adapter".into())
            });
            let a = registry.load(&name, &p, LoadPolicy::Replace)?;
            if let Some(note) = a.quantization_note(session.model()) {
                eprintln!("note: {note}");
            }
            eprintln!(
                "[loaded {name}: {} ({} targets, rank {}, {:.1} KiB) in {:.2} ms]",
                a.kind().name(),
                a.targets().len(),
                a.rank(),
                a.n_bytes() as f64 / 1024.0,
                t.elapsed().as_secs_f64() * 1e3
            );
            return Ok(());
        }
        [verb @ ("use" | "add"), name] | [verb @ ("use" | "add"), name, _] => {
            let s = words.get(2).map_or(Ok(1.0), |s| scale(s))?;
            let a = registry.get(name).with_context(|| format!("no adapter named {name:?} is loaded (/adapter list)"))?;
            // `use` switches to this adapter alone; `add` stacks it on the active ones.
            if *verb == "use" {
                *active = graft::ActiveAdapters::none();
            }
            active.set(a, s);
        }
        ["scale", name, s] => {
            let s = scale(s)?;
            if !active.iter().any(|(a, _)| a.name() == *name) {
                bail!("{name} is not active (use /adapter use {name} first)");
            }
            let a = registry.get(name).with_context(|| format!("no adapter named {name:?} is loaded"))?;
            active.set(a, s);
        }
        ["off"] => *active = graft::ActiveAdapters::none(),
        ["off", name] => {
            if !active.remove(name) {
                bail!("{name} is not active");
            }
        }
        ["list"] => {
            for info in registry.list() {
                let on = active.iter().find(|(a, _)| a.name() == info.name).map(|(_, s)| s);
                eprintln!(
                    "  {} {:<20} {:<7} rank {:<4} {:>9.1} KiB{}",
                    if on.is_some() { "*" } else { " " },
                    info.name,
                    info.kind,
                    info.rank,
                    info.bytes as f64 / 1024.0,
                    on.map(|s| format!("  scale {s}")).unwrap_or_default()
                );
            }
            return Ok(());
        }
        _ => bail!("usage: /adapter load PATH [NAME] | use NAME [SCALE] | add NAME [SCALE] | scale NAME S | off [NAME] | list"),
    }
    let sw = session.set_adapters(active.clone())?;
    eprintln!(
        "[active: {}; switch {:.3} ms{}]",
        describe(active),
        t.elapsed().as_secs_f64() * 1e3,
        if sw.cache_invalidated {
            format!(
                "; {} cached tokens will be recomputed on the next turn",
                sw.tokens_to_recompute
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

/// An adapter scale typed in chat: a finite number.
fn scale(s: &str) -> Result<f32> {
    s.parse::<f32>()
        .ok()
        .filter(|v| v.is_finite())
        .with_context(|| format!("the scale must be a number, not {s:?}"))
}

/// The active set as people read it: `pirate x1.0, robot x0.5`, or `none (base model)`.
pub(crate) fn describe(active: &graft::ActiveAdapters) -> String {
    if active.is_empty() {
        return "none (base model)".into();
    }
    active
        .iter()
        .map(|(a, s)| {
            if s.fract() == 0.0 {
                format!("{} x{s:.1}", a.name())
            } else {
                format!("{} x{s}", a.name())
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
