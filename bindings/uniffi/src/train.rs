//! Adapter training on the device: a [`Trainer`] made by `Engine.trainer`, run with a progress
//! listener, stoppable from any thread, always leaving a loadable checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use graft::adapter::TargetKind;
use graft::train::{Control, Example, FitOptions, Method, TrainConfig, TrainData};

use crate::error::{GraftError, Result, Subject};
use crate::{arg, Open};

/// One in-memory training example: the completion is learned; the prompt (may be empty) is
/// context only.
#[derive(Clone, Debug, uniffi::Record)]
pub struct TrainExample {
    /// Context that is not scored ("" for plain text).
    #[uniffi(default = "")]
    pub prompt: String,
    /// The text to learn.
    pub completion: String,
}

/// What to train and how.
#[derive(Clone, Debug, uniffi::Record)]
pub struct TrainOptions {
    /// `lora`, `diablo`, `wegeft` or `lopa` (a resumed adapter keeps its own method).
    #[uniffi(default = "lora")]
    pub method: String,
    /// Training data file: plain text, or `.jsonl` with `{"text"}`, `{"prompt","completion"}`
    /// or `{"messages"}` lines. Either this or `examples`.
    #[uniffi(default = None)]
    pub data_path: Option<String>,
    /// In-memory examples (instead of `data_path`).
    #[uniffi(default)]
    pub examples: Vec<TrainExample>,
    /// Where the adapter is written (atomically, at every checkpoint).
    pub output_path: String,
    /// Continue from this adapter file's weights, optimizer state and step.
    #[uniffi(default = None)]
    pub resume_path: Option<String>,
    /// Optimizer steps in total (0 = one pass over the data).
    #[uniffi(default = 0)]
    pub steps: u32,
    /// Peak learning rate.
    #[uniffi(default = 0.001)]
    pub learning_rate: f32,
    /// LoRA / WeGeFT rank.
    #[uniffi(default = 8)]
    pub rank: u32,
    /// DiaBlo blocks.
    #[uniffi(default = 64)]
    pub blocks: u32,
    /// LoPA virtual tokens.
    #[uniffi(default = 16)]
    pub virtual_tokens: u32,
    /// Target matrices: any of q, k, v, o, gate, up, down (empty = all).
    #[uniffi(default)]
    pub targets: Vec<String>,
    /// Seed of initialisation and data order.
    #[uniffi(default = 0)]
    pub seed: u64,
    /// Tokens per training sequence.
    #[uniffi(default = 256)]
    pub context_length: u32,
    /// Sequences per optimizer step.
    #[uniffi(default = 1)]
    pub batch: u32,
    /// Checkpoint every this many steps (and at the end or on a stop).
    #[uniffi(default = 50)]
    pub save_every: u32,
    /// CPU threads (default: the engine's).
    #[uniffi(default = None)]
    pub threads: Option<u32>,
    /// Keep each layer's input only and recompute its activations in the backward pass:
    /// memory of one layer instead of all (ctx 1024 in less than ctx 256 takes without it),
    /// for about a third more time.
    #[uniffi(default = false)]
    pub gradient_checkpointing: bool,
}

/// Reported after every optimizer step.
#[derive(Clone, Debug, uniffi::Record)]
pub struct TrainProgress {
    /// Steps done (the adapter's total).
    pub step: u32,
    /// The step count the run goes to.
    pub total: u32,
    /// Mean loss of this step.
    pub loss: f32,
    /// Training tokens per second so far.
    pub tokens_per_s: f64,
    /// The latest evaluation perplexity, if evaluating.
    pub eval_perplexity: Option<f64>,
}

/// The outcome of `Trainer.run`.
#[derive(Clone, Debug, uniffi::Record)]
pub struct TrainReport {
    /// Steps done (the adapter's total).
    pub steps: u32,
    /// Loss of the last step of this run.
    pub final_loss: Option<f32>,
    /// Training tokens per second over this run.
    pub tokens_per_s: f64,
    /// Seconds this run took.
    pub seconds: f64,
    /// The run was stopped (listener or `cancel()`) before its last step; the checkpoint at
    /// `output_path` holds the steps done.
    pub stopped: bool,
    /// The adapter file written.
    pub output_path: String,
    /// The backend the training graphs ran on (`cpu`, `wgpu`, `cuda`, ...: the engine's).
    pub backend: String,
    /// Graph nodes that ran on that backend's device, of all nodes computed (on a GPU, the
    /// rest were backward ops the device lacks, run on the CPU).
    pub nodes_on_device: u64,
    /// All graph nodes computed so far.
    pub nodes_total: u64,
}

/// Receives training progress.
#[uniffi::export(callback_interface)]
pub trait TrainListener: Send + Sync {
    /// Called after every optimizer step; return false to stop (a checkpoint is saved).
    fn on_progress(&self, progress: TrainProgress) -> std::result::Result<bool, GraftError>;
}

struct Run {
    trainer: graft::train::Trainer,
    examples: Vec<Example>,
    fit: FitOptions,
}

/// An adapter being trained over the engine's frozen base.
#[derive(uniffi::Object)]
pub struct Trainer {
    run: Mutex<Run>,
    output: PathBuf,
    cancel: AtomicBool,
}

impl Trainer {
    pub(crate) fn create(open: &Open, o: TrainOptions) -> Result<Arc<Self>> {
        let model = open.engine.model().clone();
        let output = PathBuf::from(&o.output_path);
        check_output(&output)?;
        let method = Method::parse(&o.method).map_err(|e| arg(e.to_string()))?;
        for (name, v) in [
            ("rank", o.rank),
            ("blocks", o.blocks),
            ("virtual_tokens", o.virtual_tokens),
            ("context_length", o.context_length),
            ("batch", o.batch),
            ("save_every", o.save_every),
        ] {
            if v == 0 {
                return Err(arg(format!("{name} must be at least 1")));
            }
        }
        if o.context_length < 2 {
            return Err(arg("context_length must be at least 2"));
        }
        if !(o.learning_rate.is_finite() && o.learning_rate > 0.0) {
            return Err(arg("learning_rate must be a finite number > 0"));
        }
        let targets = if o.targets.is_empty() {
            TrainConfig::default().targets
        } else {
            o.targets
                .iter()
                .map(|t| {
                    TargetKind::parse(t).ok_or_else(|| {
                        arg(format!("unknown target {t:?} (q, k, v, o, gate, up, down)"))
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        let ctx = o.context_length as usize;
        let tok = model.tokenizer();
        let data = match (&o.data_path, o.examples.is_empty()) {
            (Some(_), false) => return Err(arg("give data_path or examples, not both")),
            (None, true) => return Err(arg("no training data: give data_path or examples")),
            (Some(p), true) => TrainData::load(Path::new(p), tok, ctx, false)
                .map_err(|e| GraftError::from_runtime(e, Subject::Other))?,
            (None, false) => {
                let jsonl: String = o
                    .examples
                    .iter()
                    .map(|e| {
                        if e.prompt.is_empty() {
                            format!("{}\n", serde_json_line(&[("text", &e.completion)]))
                        } else {
                            format!(
                                "{}\n",
                                serde_json_line(&[
                                    ("prompt", &e.prompt),
                                    ("completion", &e.completion)
                                ])
                            )
                        }
                    })
                    .collect();
                TrainData::from_jsonl(&jsonl, tok, ctx, true, "examples")
                    .map_err(|e| arg(e.to_string()))?
            }
        };
        if data.examples.is_empty() {
            return Err(arg("the training data has no usable example"));
        }
        let threads = match o.threads {
            Some(0) => return Err(arg("threads must be at least 1")),
            Some(n) => n as usize,
            None => open.engine.session_config().n_threads,
        };
        let batch = o.batch as usize;
        // One step count for the learning-rate schedule and for the run, as `graft train` does.
        let steps = if o.steps > 0 {
            o.steps as usize
        } else {
            data.examples.len().div_ceil(batch)
        };
        let cfg = TrainConfig {
            method,
            rank: o.rank as usize,
            alpha: 2.0 * o.rank as f32,
            blocks: o.blocks as usize,
            virtual_tokens: o.virtual_tokens as usize,
            targets,
            lr: o.learning_rate,
            batch,
            total_steps: steps,
            ctx,
            seed: o.seed,
            threads,
            checkpointing: o.gradient_checkpointing,
            // Training runs where the engine's sessions run.
            backend: open.engine.session_config().backend,
            gpu_layers: open.engine.session_config().gpu_layers,
            ..TrainConfig::default()
        };
        let trainer = match &o.resume_path {
            Some(p) => graft::train::Trainer::resume(model, cfg, Path::new(p))
                .map_err(|e| GraftError::from_runtime(e, Subject::Adapter))?,
            None => graft::train::Trainer::new(model, cfg)
                .map_err(|e| GraftError::from_runtime(e, Subject::Other))?,
        };
        Ok(Arc::new(Self {
            run: Mutex::new(Run {
                trainer,
                examples: data.examples,
                fit: FitOptions {
                    steps,
                    out: Some(output.clone()),
                    save_every: o.save_every as usize,
                    eval_tokens: None,
                    eval_every: usize::MAX,
                },
            }),
            output,
            cancel: AtomicBool::new(false),
        }))
    }
}

/// The output's folder must exist and the path must not be a folder: checked before any
/// training time is spent.
fn check_output(out: &Path) -> Result<()> {
    if out.as_os_str().is_empty() {
        return Err(arg("output_path is empty"));
    }
    if out.is_dir() {
        return Err(GraftError::File(format!(
            "output_path {} is a directory",
            out.display()
        )));
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(p) = parent {
        if !p.is_dir() {
            return Err(GraftError::File(format!(
                "output_path {}: the folder {} does not exist",
                out.display(),
                p.display()
            )));
        }
    }
    Ok(())
}

/// One JSON object line with string fields.
fn serde_json_line(fields: &[(&str, &str)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

#[uniffi::export]
impl Trainer {
    /// Trains until the step count is reached, the listener returns false or `cancel()` is
    /// called; checkpoints along the way and at the end. Called again after a stop, it goes on
    /// to the same step count; after a finished run there is nothing left to do.
    #[uniffi::method(default(listener = None))]
    pub fn run(&self, listener: Option<Box<dyn TrainListener>>) -> Result<TrainReport> {
        let mut guard = self.run.lock().unwrap_or_else(|e| e.into_inner());
        let Run {
            trainer,
            examples,
            fit,
        } = &mut *guard;
        self.cancel.store(false, Ordering::SeqCst);
        let mut failure = None;
        let report = trainer
            .fit(examples, fit, |p| {
                if self.cancel.load(Ordering::SeqCst) {
                    return Control::Stop;
                }
                let go_on = match &listener {
                    None => true,
                    Some(l) => match l.on_progress(TrainProgress {
                        step: p.step as u32,
                        total: p.total as u32,
                        loss: p.loss,
                        tokens_per_s: p.tokens_per_s,
                        eval_perplexity: p.eval_perplexity,
                    }) {
                        Ok(b) => b,
                        Err(e) => {
                            failure = Some(e);
                            false
                        }
                    },
                };
                if go_on && !self.cancel.load(Ordering::SeqCst) {
                    Control::Continue
                } else {
                    Control::Stop
                }
            })
            .map_err(|e| GraftError::from_runtime(e, Subject::Other))?;
        if let Some(e) = failure {
            return Err(e);
        }
        let ran = trainer.backend_report();
        Ok(TrainReport {
            backend: ran.name,
            nodes_on_device: ran.nodes_on_device,
            nodes_total: ran.nodes_total,
            steps: report.steps as u32,
            final_loss: report.final_loss,
            tokens_per_s: report.tokens_per_s,
            seconds: report.seconds,
            stopped: report.stopped,
            output_path: self.output.display().to_string(),
        })
    }

    /// Stops the run in progress (from any thread) after the current step, with a checkpoint.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Trainable parameters.
    pub fn parameters(&self) -> u64 {
        self.run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .trainer
            .n_params() as u64
    }
}
