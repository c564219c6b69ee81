//! The `graft` command-line tool: a thin shell over the library.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use graft::adapter::registry::{AdapterRegistry, LoadPolicy};
use graft::perplexity::perplexity_with_prompt;
use graft::{
    ActiveAdapters, BackendChoice, Engine, GenerateRequest, SamplerConfig, Session, SessionConfig,
};
use serde_json::json;

mod adapters;
mod args;
mod bench;
mod inspect;
mod serve;
mod train;

#[derive(Parser)]
#[command(
    name = "graft",
    version,
    about = "On-device adapter runtime for LLMs (GGUF models on ggml)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Show ggml's own log lines: -v errors and warnings, -vv also information, -vvv debug.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a prompt (streams to stdout).
    Generate(GenerateArgs),
    /// Perplexity of a text file.
    Perplexity(PerplexityArgs),
    /// Measure prompt processing (pp) and generation (tg) speed, load time and peak RSS.
    Bench {
        /// The GGUF model file.
        #[arg(long)]
        model: PathBuf,
        /// CPU threads.
        #[arg(long, default_value_t = graft::session::default_threads(), value_parser = crate::args::positive_count)]
        threads: usize,
        /// Prompt lengths to time, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "128,512", value_parser = crate::args::positive_count)]
        pp: Vec<usize>,
        /// Generation lengths to time, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "64", value_parser = crate::args::positive_count)]
        tg: Vec<usize>,
        /// Repetitions of each test.
        #[arg(long, default_value_t = 3, value_parser = crate::args::positive_count)]
        reps: usize,
        /// Use flash attention.
        #[arg(long)]
        flash_attn: bool,
        /// Adapter active during the runs (repeatable).
        #[arg(long = "adapter")]
        adapters: Vec<PathBuf>,
        /// Adapter and scale (repeatable).
        #[arg(long = "adapter-scaled", num_args = 2, value_names = ["A.gguf", "S"])]
        adapters_scaled: Vec<String>,
        /// Backend graphs run on (see `graft devices`).
        #[arg(long, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
        /// On the CPU, run the weights ggml has repacked kernels for from a repacked copy (as
        /// llama.cpp's default extra buffer types do).
        #[arg(long)]
        cpu_repack: bool,
        /// With a GPU backend, put only the last N layers' weights on the device (as llama.cpp's
        /// -ngl); the other layers' products run on the CPU. Default: every weight.
        #[arg(long, value_name = "N")]
        gpu_layers: Option<usize>,
        /// Adapter set to compare, rep by rep in this process (repeatable): `none` or
        /// `[LABEL=]A.gguf[,B.gguf...]`; the JSON gets `variants` [{label, adapters, results}].
        #[arg(long = "variant", value_name = "SPEC", conflicts_with_all = ["adapters", "adapters_scaled"])]
        variants: Vec<String>,
    },
    /// List the backends and devices this build can use, with their memory.
    Devices {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Decode many sequences with different adapters at once (batched) against one after
    /// another, on one loaded model.
    BenchBatch {
        /// The GGUF model file.
        #[arg(long)]
        model: PathBuf,
        /// Adapters; sequence i uses adapter i mod k (repeatable; none: the base model).
        #[arg(long = "adapter")]
        adapters: Vec<PathBuf>,
        /// Sequences decoded together.
        #[arg(long, default_value_t = 8, value_parser = crate::args::positive_count)]
        sequences: usize,
        /// Prompt length of each sequence (sequence i has i more).
        #[arg(long, default_value_t = 32, value_parser = crate::args::positive_count)]
        prompt_tokens: usize,
        /// Tokens generated per sequence.
        #[arg(long, default_value_t = 32, value_parser = crate::args::positive_count)]
        tokens: usize,
        /// CPU threads.
        #[arg(long, default_value_t = graft::session::default_threads(), value_parser = crate::args::positive_count)]
        threads: usize,
        /// Repetitions.
        #[arg(long, default_value_t = 3, value_parser = crate::args::positive_count)]
        reps: usize,
    },
    /// Serve the model and a directory of adapters over an OpenAI-compatible HTTP API; each
    /// request names its adapter, and requests with different adapters decode together.
    Serve(serve::ServeArgs),
    /// Fine-tune an adapter on the device (adapter parameters only; the base stays frozen).
    Train(Box<train::TrainArgs>),
    /// Interactive chat; `/adapter load|use|scale|off|list` swaps adapters between turns.
    Chat(adapters::ChatArgs),
    /// Fold adapters into the base weights and write a full model.
    Merge(adapters::MergeArgs),
    /// Convert a PEFT LoRA directory to a GGUF LoRA.
    ImportPeft(adapters::ImportPeftArgs),
    /// Write a GGUF LoRA as a PEFT directory (adapter_config.json + adapter_model.safetensors).
    ExportPeft(adapters::ExportPeftArgs),
    /// Write an adapter without its training state (optimizer moments, step): the small file
    /// to ship. The original stays resumable.
    Strip {
        /// The adapter written by `graft train`.
        adapter: PathBuf,
        /// The stripped copy (may be the same path, replaced atomically).
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
    },
    /// Describe a GGUF model or adapter file.
    Inspect {
        /// The GGUF file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub(crate) struct ModelArgs {
    /// The GGUF model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Adapter (GGUF file or PEFT directory) at scale 1 (repeatable).
    #[arg(long = "adapter", value_name = "A.gguf")]
    pub adapters: Vec<PathBuf>,
    /// Adapter and its scale (repeatable).
    #[arg(long = "adapter-scaled", num_args = 2, value_names = ["A.gguf", "S"])]
    pub adapters_scaled: Vec<String>,
    /// CPU threads (default: available cores, at most 8).
    #[arg(long, value_parser = crate::args::positive_count)]
    pub threads: Option<usize>,
    /// Use ggml's flash-attention kernel.
    #[arg(long)]
    pub flash_attn: bool,
    /// Backend graphs run on: auto, cpu, wgpu, cuda, metal or vulkan (`graft devices` lists
    /// what this build has; auto takes a GPU of ggml's CUDA, Metal or Vulkan backends, else the
    /// CPU; wgpu only when named).
    #[arg(long, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// On the CPU, run the weights ggml has repacked kernels for (Q4_0 on AVX2 and Arm, Q4_K,
    /// IQ4_NL) from a repacked copy, as llama.cpp does by default: faster; logits differ from
    /// the plain kernels' by the order of the sums.
    #[arg(long)]
    pub cpu_repack: bool,
    /// With a GPU backend, put only the last N layers' weights on the device (as llama.cpp's
    /// -ngl); the other layers' products run on the CPU. Default: every weight.
    #[arg(long, value_name = "N")]
    pub gpu_layers: Option<usize>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// The prompt (tokenized as llama.cpp does: BOS per the file's flag, special tokens parsed).
    #[arg(long)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128, value_parser = crate::args::count)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8, value_parser = crate::args::non_negative)]
    temperature: f32,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 40, value_parser = crate::args::count)]
    top_k: usize,
    /// Top-p (1 = off).
    #[arg(long, default_value_t = 0.95, value_parser = crate::args::unit_interval)]
    top_p: f32,
    /// Min-p (0 = off).
    #[arg(long, default_value_t = 0.05, value_parser = crate::args::unit_interval)]
    min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0, value_parser = crate::args::positive)]
    repeat_penalty: f32,
    /// RNG seed.
    #[arg(long, default_value_t = 0, value_parser = crate::args::seed)]
    seed: u64,
    /// Context length.
    #[arg(long, default_value_t = 2048, value_parser = crate::args::context_length)]
    ctx: usize,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PerplexityArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// Text file to score.
    #[arg(long)]
    file: PathBuf,
    /// Window length in tokens.
    #[arg(long, default_value_t = 512, value_parser = crate::args::context_length)]
    ctx: usize,
    /// Score at most this many tokens of the file.
    #[arg(long, default_value_t = 1024, value_parser = crate::args::context_length)]
    max_tokens: usize,
    /// The first N tokens of each window are an unscored prompt (a LoPA adapter's soft
    /// prompt is made from them; with the default 1 it would see only the first token).
    #[arg(long, default_value_t = 1, value_parser = crate::args::positive_count)]
    prompt_tokens: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Without a desktop session (no `XDG_RUNTIME_DIR`: servers, containers, CI), Mesa's Vulkan
/// device-select layer tries to reach a Wayland compositor whenever a Vulkan instance is made
/// and prints `error: XDG_RUNTIME_DIR is invalid...` to stderr, though nothing is wrong. The
/// layer only orders GPUs for a display, which graft does not use; it is turned off in that case
/// (before any thread starts, so changing the environment is safe).
fn quiet_headless_vulkan() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

fn main() {
    quiet_headless_vulkan();
    let matches = args::allow_negative_numbers(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    graft_ggml::set_log_level(match cli.verbose {
        0 => graft_ggml::LogLevel::Off,
        1 => graft_ggml::LogLevel::Warn,
        2 => graft_ggml::LogLevel::Info,
        _ => graft_ggml::LogLevel::Debug,
    });
    let r = match cli.cmd {
        Cmd::Generate(a) => generate(a),
        Cmd::Perplexity(a) => run_perplexity(a),
        Cmd::Inspect { file, json } => inspect::run(&file, json),
        Cmd::Strip { adapter, out } => strip(&adapter, &out),
        Cmd::Serve(a) => serve::run(a),
        Cmd::BenchBatch {
            model,
            adapters,
            sequences,
            prompt_tokens,
            tokens,
            threads,
            reps,
        } => bench::run_batch(&bench::BatchBenchArgs {
            model: &model,
            adapters: &adapters,
            sequences,
            prompt_tokens,
            tokens,
            threads,
            reps,
        })
        .map(|v| println!("{v:#}")),
        Cmd::Chat(a) => adapters::chat(a),
        Cmd::Train(a) => train::train(*a),
        Cmd::Merge(a) => adapters::merge(a),
        Cmd::ImportPeft(a) => adapters::import_peft(a),
        Cmd::ExportPeft(a) => adapters::export_peft(a),
        Cmd::Bench {
            model,
            threads,
            pp,
            tg,
            reps,
            flash_attn,
            adapters,
            adapters_scaled,
            backend,
            cpu_repack,
            gpu_layers,
            variants,
        } => parse_scaled(&adapters_scaled).and_then(|scaled| {
            let adapters = adapters
                .into_iter()
                .map(|p| (p, 1.0))
                .chain(scaled)
                .collect();
            bench::run(&bench::BenchArgs {
                model: &model,
                threads,
                pp: &pp,
                tg: &tg,
                reps,
                flash_attn,
                backend,
                cpu_repack,
                gpu_layers,
                variants: variants.iter().map(|v| bench::parse_variant(v)).collect(),
                adapters,
            })
            .map(|v| println!("{v}"))
        }),
        Cmd::Devices { json } => devices(json),
    };
    if let Err(e) = r {
        eprintln!("error: {}", report(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, each fact once: a cause already contained in what
/// was said is dropped, and a cause that starts with the subject the outer message ended on
/// (`loading model m.gguf` then `m.gguf: No such file or directory`) is joined without it.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if msg.is_empty() || out.contains(&msg) {
            continue;
        }
        let mut rest = msg.as_str();
        for (i, _) in msg.match_indices(": ") {
            if out.ends_with(&msg[..i]) {
                rest = &msg[i + 2..];
            }
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(rest);
    }
    out
}

fn strip(adapter: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let r = graft::adapter::strip_train_state(adapter, out)
        .with_context(|| format!("stripping {}", adapter.display()))?;
    let mb = |b: u64| b as f64 / 1e6;
    eprintln!(
        "wrote {}: {:.1} MB -> {:.1} MB ({} training-state tensors and {} train.* keys removed)",
        out.display(),
        mb(r.bytes_before),
        mb(r.bytes_after),
        r.tensors,
        r.keys
    );
    Ok(())
}

/// `--adapter-scaled A S` pairs.
fn parse_scaled(pairs: &[String]) -> Result<Vec<(PathBuf, f32)>> {
    pairs
        .chunks(2)
        .map(|pair| {
            let s: f32 = pair[1]
                .parse()
                .ok()
                .filter(|s: &f32| s.is_finite())
                .with_context(|| {
                    format!(
                        "--adapter-scaled {} {}: the scale must be a number",
                        pair[0], pair[1]
                    )
                })?;
            Ok((PathBuf::from(&pair[0]), s))
        })
        .collect()
}

/// Loads the model and the adapters named on the command line.
pub(crate) fn load(
    m: &ModelArgs,
    n_ctx: usize,
) -> Result<(Engine, AdapterRegistry, ActiveAdapters)> {
    let cfg = SessionConfig {
        n_ctx,
        n_threads: m.threads.unwrap_or_else(graft::session::default_threads),
        flash_attn: m.flash_attn,
        kv_f32: false,
        backend: m.backend,
        cpu_repack: m.cpu_repack,
        gpu_layers: m.gpu_layers,
        ..SessionConfig::default()
    };
    let engine = Engine::load_with(&m.model, cfg)
        .with_context(|| format!("loading model {}", m.model.display()))?;
    let registry = AdapterRegistry::new(engine.model().clone());
    let mut specs: Vec<(PathBuf, f32)> = m.adapters.iter().map(|p| (p.clone(), 1.0)).collect();
    specs.extend(parse_scaled(&m.adapters_scaled)?);
    let mut active = ActiveAdapters::none();
    for (path, scale) in &specs {
        // Named by file stem (as `/adapter use NAME` and the server name them); the same
        // stem twice gets a suffix.
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "adapter".into());
        let name = (1..)
            .map(|i| match i {
                1 => stem.clone(),
                i => format!("{stem}-{i}"),
            })
            .find(|n| registry.get(n).is_none())
            .expect("a free name");
        let a = registry
            .load(&name, path, LoadPolicy::Create)
            .with_context(|| format!("loading adapter {}", path.display()))?;
        if let Some(note) = a.quantization_note(engine.model()) {
            eprintln!("note: {note}");
        }
        active.set(a, *scale);
    }
    Ok((engine, registry, active))
}

/// `graft devices`: every device of every backend compiled in, with its memory, and which
/// `--backend` names this build accepts.
fn devices(as_json: bool) -> Result<()> {
    let devs = graft::devices();
    let usable: Vec<&str> = BackendChoice::ALL
        .iter()
        .filter(|c| graft::check_backend(**c).is_ok())
        .map(|c| c.as_str())
        .collect();
    // What `--backend auto` picks: a device name, or the CPU.
    let auto = graft::select_device(BackendChoice::Auto)?
        .map(|d| format!("{} ({})", d.name, d.backend))
        .unwrap_or_else(|| "cpu".to_string());
    // Backend libraries looked for at run time (those not compiled in).
    let modules = graft::load_backend_modules();
    let mut out = std::io::stdout().lock();
    if as_json {
        let mods: Vec<_> = modules
            .iter()
            .map(|m| {
                json!({"backend": m.backend, "path": m.path.as_ref().map(|p| p.display().to_string()),
                       "loaded": m.loaded(), "error": m.error})
            })
            .collect();
        let list: Vec<_> = devs
            .iter()
            .map(|d| {
                json!({"backend": d.backend, "name": d.name, "description": d.description,
                       "type": d.kind.as_str(), "memory_free": d.memory_free,
                       "memory_total": d.memory_total})
            })
            .collect();
        writeln!(
            out,
            "{}",
            json!({"devices": list, "usable_backends": usable, "auto": auto,
                   "backend_libraries": mods})
        )?;
        return Ok(());
    }
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let w = devs.iter().map(|d| d.name.len()).max().unwrap_or(0);
    for d in &devs {
        writeln!(
            out,
            "{:<7} {:<w$}  {:<5}  {:>9.0} MiB free of {:>9.0} MiB  {}",
            d.backend,
            d.name,
            d.kind.as_str(),
            mib(d.memory_free),
            mib(d.memory_total),
            d.description
        )?;
    }
    for m in modules {
        match (&m.path, &m.error) {
            (Some(p), None) => writeln!(out, "loaded {} from {}", m.backend, p.display())?,
            (Some(p), Some(e)) => {
                writeln!(out, "{} did not load ({}): {e}", p.display(), m.backend)?
            }
            (None, _) => {}
        }
    }
    writeln!(
        out,
        "--backend accepts: {} (auto: {})",
        usable.join(", "),
        auto
    )?;
    Ok(())
}

fn generate(a: GenerateArgs) -> Result<()> {
    let (engine, _registry, adapters) = load(&a.m, a.ctx)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let req = GenerateRequest {
        prompt: a.prompt.clone(),
        max_tokens: a.max_tokens,
        sampler: SamplerConfig {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repeat_penalty: a.repeat_penalty,
            seed: a.seed,
            ..SamplerConfig::default()
        },
        stop_at_eog: !a.ignore_eos,
        cancel: Some(cancel.clone()),
        adapters,
    };
    let stream = !a.json;
    let mut stdout = std::io::stdout().lock();
    let g = engine.generate(&req, |piece| {
        if stream {
            // A closed stdout (e.g. `| head`) stops generation instead of panicking.
            if stdout
                .write_all(piece.as_bytes())
                .and_then(|_| stdout.flush())
                .is_err()
            {
                cancel.store(true, Ordering::Relaxed);
                return false;
            }
        }
        true
    })?;
    if a.json {
        let out = json!({
            "prompt_tokens": g.prompt_tokens,
            "tokens": g.tokens,
            "text": g.text,
            "stop_reason": g.stop_reason,
            "timings": {
                "load_ms": g.timings.load_ms,
                "prefill_tokens_per_s": g.timings.prefill_tokens_per_s,
                "decode_tokens_per_s": g.timings.decode_tokens_per_s,
                "prefill_ms": g.timings.prefill_ms,
                "decode_ms": g.timings.decode_ms,
            },
            "backend": g.backend,
        });
        writeln!(stdout, "{out}")?;
    } else {
        writeln!(stdout)?;
        let stop = match g.stop_reason {
            graft::engine::StopReason::ContextFull => {
                format!("; stopped: the context is full (--ctx {})", a.ctx)
            }
            _ => String::new(),
        };
        eprintln!(
            "[{} prompt tokens, {} generated{stop}; load {:.0} ms, prefill {:.1} tok/s, decode {:.1} tok/s]",
            g.prompt_tokens.len(),
            g.tokens.len(),
            g.timings.load_ms,
            g.timings.prefill_tokens_per_s,
            g.timings.decode_tokens_per_s
        );
    }
    Ok(())
}

fn run_perplexity(a: PerplexityArgs) -> Result<()> {
    if a.ctx < 2 {
        bail!("--ctx must be at least 2");
    }
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let (engine, _registry, adapters) = load(&a.m, a.ctx)?;
    let mut tokens = engine.model().tokenizer().encode(&text, false, false);
    tokens.truncate(a.max_tokens);
    if a.prompt_tokens == 0 || a.prompt_tokens >= a.ctx {
        bail!("--prompt-tokens must be 1..ctx ({})", a.ctx);
    }
    // Room for LoPA virtual tokens before each window.
    let cfg = SessionConfig {
        n_ctx: a.ctx + adapters.soft_prompt_len(),
        ..engine.session_config().clone()
    };
    let mut session = Session::new(engine.model().clone(), cfg)?;
    session.set_adapters(adapters)?;
    let t = Instant::now();
    let quiet = a.json;
    // On a terminal one line redrawn in place; in a pipe or a log, a line per window.
    let tty = std::io::stderr().is_terminal();
    let p = perplexity_with_prompt(
        &mut session,
        &tokens,
        a.ctx,
        a.prompt_tokens,
        |done, total| match (quiet, tty) {
            (true, _) => {}
            (false, true) => eprint!("\rwindow {done}/{total}"),
            (false, false) => eprintln!("window {done}/{total}"),
        },
    )?;
    if a.json {
        println!(
            "{}",
            json!({"perplexity": p.perplexity, "tokens": p.tokens, "nll_mean": p.nll_mean, "ctx": a.ctx, "prompt_tokens": a.prompt_tokens,
                   "seconds": t.elapsed().as_secs_f64()})
        );
    } else {
        if tty {
            eprintln!();
        }
        println!(
            "perplexity {:.4} over {} tokens (ctx {})",
            p.perplexity, p.tokens, a.ctx
        );
    }
    Ok(())
}
