//! `graft train`: fine-tune an adapter on the device over the frozen base.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use graft::adapter::TargetKind;
use graft::train::{
    Control, FitOptions, GaloreConfig, Method, Schedule, TrainConfig, TrainData, Trainer,
};
use graft::Model;
use serde_json::json;

#[derive(Args)]
pub struct TrainArgs {
    /// The base model.
    #[arg(long)]
    model: PathBuf,
    /// lora | diablo | wegeft | lopa (default lora; a resumed adapter keeps its own).
    #[arg(long)]
    method: Option<String>,
    /// Training data: plain text, or .jsonl with {"text"}, {"prompt","completion"} or {"messages"}.
    #[arg(long)]
    data: PathBuf,
    /// Held-out text for periodic perplexity.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Output adapter (written atomically at every checkpoint).
    #[arg(long)]
    out: PathBuf,
    /// Continue from this adapter's optimizer state, step and data cursor.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Optimizer steps in all (default: one epoch, or --epochs); with --resume, the total
    /// including the steps already done.
    #[arg(long, value_parser = crate::args::positive_count)]
    steps: Option<usize>,
    /// Epochs over the data (when --steps is not given).
    #[arg(long, default_value_t = 1, value_parser = crate::args::positive_count)]
    epochs: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3, value_parser = crate::args::positive)]
    lr: f32,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256, value_parser = crate::args::context_length)]
    ctx: usize,
    /// Sequences per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1, value_parser = crate::args::positive_count)]
    batch: usize,
    /// Adapter rank.
    #[arg(long, default_value_t = 8, value_parser = crate::args::positive_count)]
    rank: usize,
    /// LoRA alpha (default: 2 x rank).
    #[arg(long, value_parser = crate::args::positive)]
    alpha: Option<f32>,
    /// DiaBlo blocks N (default 64).
    #[arg(long, value_parser = crate::args::positive_count)]
    blocks: Option<usize>,
    /// LoPA virtual tokens m (default 16).
    #[arg(long, value_parser = crate::args::positive_count)]
    virtual_tokens: Option<usize>,
    /// LoPA: a plain-text example's first N tokens are the prompt its soft prompt is made
    /// from (not scored); eval perplexity uses the same split.
    #[arg(long, default_value_t = 32, value_parser = crate::args::positive_count)]
    prompt_tokens: usize,
    /// Dropout probability on the adapter input (lora, diablo).
    #[arg(long, default_value_t = 0.0, value_parser = crate::args::dropout)]
    dropout: f32,
    /// DiaBlo: GaLore projection rank for the optimizer state (0 = plain Adam).
    #[arg(long, default_value_t = 0, value_parser = crate::args::count)]
    galore_rank: usize,
    /// GaLore: refresh each block's projection every K steps.
    #[arg(long, default_value_t = 200, value_parser = crate::args::positive_count)]
    galore_every: usize,
    /// GaLore: update scale.
    #[arg(long, default_value_t = 0.25, value_parser = crate::args::positive)]
    galore_scale: f32,
    /// Targets, comma-separated: q,k,v,o,gate,up,down.
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o,gate,up,down")]
    targets: Vec<String>,
    /// RNG seed (initialisation and data order).
    #[arg(long, default_value_t = 0, value_parser = crate::args::seed)]
    seed: u64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 10, value_parser = crate::args::count)]
    warmup: usize,
    /// cosine | linear | constant.
    #[arg(long, default_value = "cosine")]
    schedule: String,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 1.0, value_parser = crate::args::non_negative)]
    clip: f32,
    /// Decoupled weight decay.
    #[arg(long, default_value_t = 0.0, value_parser = crate::args::non_negative)]
    weight_decay: f32,
    /// Checkpoint every K steps.
    #[arg(long, default_value_t = 50, value_parser = crate::args::positive_count)]
    save_every: usize,
    /// Evaluate every K steps (with --eval).
    #[arg(long, default_value_t = 50, value_parser = crate::args::positive_count)]
    eval_every: usize,
    /// Tokens of the eval file to score.
    #[arg(long, default_value_t = 2048, value_parser = crate::args::context_length)]
    eval_tokens: usize,
    /// Fail on a bad JSONL line instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// Gradient checkpointing: keep each layer's input only and recompute its activations in
    /// the backward pass (memory of one layer instead of all, about a third more time).
    #[arg(long)]
    grad_checkpointing: bool,
    /// Run the forward products through ggml's kernels, as inference does (activations
    /// rounded to the weights' dot-product type), instead of f32 GEMMs over the dequantized
    /// weights: the training loss then equals `graft perplexity`'s; slower.
    #[arg(long)]
    ggml_forward: bool,
    /// CPU threads.
    #[arg(long, value_parser = crate::args::positive_count)]
    threads: Option<usize>,
    /// Backend the training graphs run on (see `graft devices`).
    #[arg(long, default_value_t = graft::BackendChoice::Auto)]
    backend: graft::BackendChoice,
    /// With a GPU backend, put only the last N layers' weights on the device (as llama.cpp's
    /// -ngl); the other layers' products run on the CPU. Default: every weight.
    #[arg(long, value_name = "N")]
    gpu_layers: Option<usize>,
    /// Print JSON lines (one per step, then a summary) instead of a progress bar.
    #[arg(long)]
    json: bool,
}

pub fn train(a: TrainArgs) -> Result<()> {
    // A resumed adapter decides the method; a different --method is a mistake, not an order.
    let method = match &a.resume {
        Some(p) => {
            let g = graft_formats::Gguf::open(p)
                .with_context(|| format!("resuming from {}", p.display()))?;
            let kind = graft::model::FileKind::of(&g);
            let graft::model::FileKind::Adapter(kind) = kind else {
                bail!(
                    "resuming from {}: the file is {kind}, not an adapter (one written by graft train)",
                    p.display()
                );
            };
            let method = Method::parse(&kind)?;
            if let Some(m) = &a.method {
                if Method::parse(m)? != method {
                    bail!(
                        "--method {m} conflicts with --resume {}, a {kind} adapter: a resumed adapter keeps its method (omit --method)",
                        p.display()
                    );
                }
            }
            method
        }
        None => Method::parse(a.method.as_deref().unwrap_or("lora"))?,
    };
    check_out(&a.out)?;
    if a.blocks.is_some() && method != Method::Diablo {
        bail!("--blocks applies to --method diablo");
    }
    if a.virtual_tokens.is_some() && method != Method::Lopa {
        bail!("--virtual-tokens applies to --method lopa");
    }
    if a.prompt_tokens == 0 {
        bail!("--prompt-tokens must be at least 1");
    }
    let schedule = match a.schedule.as_str() {
        "cosine" => Schedule::Cosine,
        "linear" => Schedule::Linear,
        "constant" => Schedule::Constant,
        other => bail!("--schedule {other}: cosine, linear or constant"),
    };
    let targets = a
        .targets
        .iter()
        .map(|t| {
            TargetKind::parse(t)
                .with_context(|| format!("--targets: unknown target {t:?} (q,k,v,o,gate,up,down)"))
        })
        .collect::<Result<Vec<_>>>()?;
    let threads = a.threads.unwrap_or_else(graft::session::default_threads);
    let model = Arc::new(
        Model::load(&a.model).with_context(|| format!("loading model {}", a.model.display()))?,
    );
    let data = TrainData::load(&a.data, model.tokenizer(), a.ctx, a.strict)
        .with_context(|| format!("loading {}", a.data.display()))?;
    for (line, why) in &data.skipped {
        eprintln!("warning: {}:{line}: skipped: {why}", a.data.display());
    }
    if data.examples.is_empty() {
        bail!("{}: no usable training example", a.data.display());
    }
    let n = data.examples.len();
    let steps = a.steps.unwrap_or_else(|| (a.epochs * n).div_ceil(a.batch));
    let cfg = TrainConfig {
        method,
        rank: a.rank,
        alpha: a.alpha.unwrap_or(2.0 * a.rank as f32),
        blocks: a.blocks.unwrap_or(64),
        virtual_tokens: a.virtual_tokens.unwrap_or(16),
        prompt_tokens: a.prompt_tokens,
        dropout: a.dropout,
        galore: (a.galore_rank > 0).then_some(GaloreConfig {
            rank: a.galore_rank,
            every: a.galore_every,
            scale: a.galore_scale,
        }),
        targets,
        lr: a.lr,
        weight_decay: a.weight_decay,
        warmup: a.warmup,
        schedule,
        clip: a.clip,
        batch: a.batch,
        total_steps: steps,
        ctx: a.ctx,
        seed: a.seed,
        checkpointing: a.grad_checkpointing,
        gemm_forward: !a.ggml_forward,
        threads,
        backend: a.backend,
        gpu_layers: a.gpu_layers,
        ..TrainConfig::default()
    };
    let mut trainer = match &a.resume {
        Some(p) => Trainer::resume(model.clone(), cfg, p)
            .with_context(|| format!("resuming from {}", p.display()))?,
        None => Trainer::new(model.clone(), cfg)?,
    };
    let done = trainer.state().step;
    if done >= steps {
        bail!(
            "nothing to do: {} has done {done} steps, and --steps asks for {steps} in all (pass a larger --steps to train more)",
            a.resume.as_deref().unwrap_or(&a.out).display()
        );
    }
    let eval_tokens = match &a.eval {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let mut t = model.tokenizer().encode(&text, false, false);
            t.truncate(a.eval_tokens);
            Some(t)
        }
        None => None,
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let tty = std::io::stderr().is_terminal();
    if !a.json {
        eprintln!(
            "training {} {} parameters ({} examples, {} steps{}, batch {}, ctx {}) on {}",
            trainer.n_params(),
            trainer.config().method.name(),
            n,
            steps,
            if done > 0 {
                format!(", resuming after step {done}")
            } else {
                String::new()
            },
            a.batch,
            a.ctx,
            {
                let b = trainer.backend_report();
                format!("{}: {}", b.name, b.device)
            },
        );
    }
    // Off a terminal (a pipe, a log file) the bar does not draw: a plain line every
    // `line_every` steps instead.
    let line_every = (steps / 20).max(1);
    let bar = if a.json || !tty {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(steps as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]",
            )
            .expect("static template"),
        );
        b.set_position(trainer.state().step as u64);
        b
    };
    let opts = FitOptions {
        steps,
        out: Some(a.out.clone()),
        save_every: a.save_every,
        eval_tokens,
        eval_every: a.eval_every,
    };
    let report = trainer.fit(&data.examples, &opts, |p| {
        if a.json {
            println!(
                "{}",
                json!({"step": p.step, "loss": p.loss, "lr": p.lr, "grad_norm": p.grad_norm,
                       "tokens_per_s": p.tokens_per_s, "eval_perplexity": p.eval_perplexity})
            );
        } else {
            let msg = format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s{}",
                p.loss,
                p.lr,
                p.tokens_per_s,
                p.eval_perplexity
                    .map(|x| format!(" ppl {x:.2}"))
                    .unwrap_or_default()
            );
            if tty {
                bar.set_position(p.step as u64);
                bar.set_message(msg);
            } else if p.step % line_every == 0 || p.step == steps {
                eprintln!("step {}/{steps} {msg}", p.step);
            }
        }
        if interrupted.load(Ordering::SeqCst) {
            Control::Stop
        } else {
            Control::Continue
        }
    })?;
    if report.stopped {
        bar.abandon_with_message("interrupted: checkpoint saved");
    } else {
        bar.finish_and_clear();
    }
    let summary = json!({
        "out": a.out.display().to_string(),
        "steps": report.steps,
        "final_loss": report.final_loss,
        "eval_perplexity_start": report.eval_perplexity_start,
        "eval_perplexity_end": report.eval_perplexity_end,
        "tokens_per_s": report.tokens_per_s,
        "seconds": report.seconds,
        "peak_rss_mb": crate::bench::peak_rss_mb(),
        "trainable_params": trainer.n_params(),
        "grad_checkpointing": trainer.config().checkpointing,
        "gemm_forward": trainer.config().gemm_forward,
        "memory_mb": {
            "base_file": mb(std::fs::metadata(&a.model).map(|m| m.len() as usize).unwrap_or(0)),
            // The F16 transposed copies the backward pass once used are gone (it dequantizes
            // panels of the mapped weights); the field stays for the scripts that read it.
            "transposed_weights": 0.0,
            "q4_1_split": mb(trainer.split_bytes()),
            "compute_buffer": mb(trainer.compute_bytes()),
            "checkpoints": mb(trainer.checkpoint_bytes()),
            "adapter": mb(4 * trainer.n_params()),
            "gradients": mb(4 * trainer.n_params()),
            "optimizer": mb(trainer.optimizer_bytes()),
            "optimizer_plain_adam": mb(trainer.adam_bytes()),
            "optimizer_saved_by_galore": trainer.config().galore.map(|_| {
                mb(trainer.adam_bytes().saturating_sub(trainer.optimizer_bytes()))
            }),
        },
        "interrupted": report.stopped,
        "backend": trainer.backend_report(),
    });
    // The result goes to stdout (progress and notes to stderr): one line with --json.
    if a.json {
        println!("{summary}");
    } else {
        println!("{summary:#}");
    }
    Ok(())
}

/// Checks before any training time is spent that `--out` can be written: its folder exists
/// and takes a new file, and it is not a folder itself.
fn check_out(out: &std::path::Path) -> Result<()> {
    if out.is_dir() {
        bail!(
            "--out {}: is a folder; give a file path such as {}/adapter.gguf",
            out.display(),
            out.display()
        );
    }
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "--out {}: the folder {} does not exist (create it first)",
            out.display(),
            dir.display()
        );
    }
    let probe = dir.join(format!(".graft-write-check-{}", std::process::id()));
    std::fs::File::create(&probe)
        .map(|_| ())
        .with_context(|| format!("--out {}: cannot write in {}", out.display(), dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn mb(bytes: usize) -> f64 {
    (bytes as f64 / (1 << 20) as f64 * 100.0).round() / 100.0
}
