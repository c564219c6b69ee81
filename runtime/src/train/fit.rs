//! The training loop as one library call, for apps and the CLI alike: batches from a seeded
//! per-epoch shuffle that a resumed run continues, periodic evaluation perplexity and atomic
//! checkpoints, and a progress callback that can stop the run (and gets a checkpoint).

use std::path::PathBuf;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::{Example, Method, Trainer};
use crate::error::{Error, Result};
use crate::perplexity::perplexity_with_prompt;
use crate::session::{Session, SessionConfig};
use crate::ActiveAdapters;

/// What [`Trainer::fit`] does around the optimizer steps.
#[derive(Clone, Debug)]
pub struct FitOptions {
    /// Train until this many optimizer steps are done in total (a resumed adapter counts the
    /// steps it already has).
    pub steps: usize,
    /// Checkpoint file (written atomically), if any.
    pub out: Option<PathBuf>,
    /// Checkpoint every this many steps (and always at the end or on a stop).
    pub save_every: usize,
    /// Held-out tokens for perplexity, if any.
    pub eval_tokens: Option<Vec<u32>>,
    /// Evaluate every this many steps (and at the end).
    pub eval_every: usize,
}

/// Reported after every optimizer step.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Progress {
    /// Steps done (the adapter's total).
    pub step: usize,
    /// The step count the run goes to.
    pub total: usize,
    /// Mean loss of this step's sequences.
    pub loss: f32,
    /// Learning rate used.
    pub lr: f32,
    /// Gradient norm before clipping.
    pub grad_norm: f32,
    /// Training tokens per second so far in this run.
    pub tokens_per_s: f64,
    /// The latest evaluation perplexity, if evaluating.
    pub eval_perplexity: Option<f64>,
    /// Seconds since the run started.
    pub elapsed_s: f64,
}

/// What the progress callback wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Save a checkpoint and return.
    Stop,
}

/// The outcome of [`Trainer::fit`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct FitReport {
    /// Steps done (the adapter's total).
    pub steps: usize,
    /// Loss of the last step of this run.
    pub final_loss: Option<f32>,
    /// Evaluation perplexity before this run.
    pub eval_perplexity_start: Option<f64>,
    /// Evaluation perplexity after this run.
    pub eval_perplexity_end: Option<f64>,
    /// Training tokens per second over this run.
    pub tokens_per_s: f64,
    /// Seconds this run took.
    pub seconds: f64,
    /// The callback stopped the run.
    pub stopped: bool,
}

impl Trainer {
    /// Perplexity of `tokens` with the adapter as it is now (windows of the training `ctx`;
    /// for LoPA each window's first tokens are the prompt its soft prompt is made from, as in
    /// training, and are not scored).
    pub fn evaluate(&self, tokens: &[u32]) -> Result<f64> {
        let adapters = ActiveAdapters::none().with(self.adapter().clone(), 1.0);
        let ctx = self.cfg.ctx;
        let mut s = Session::new(
            self.model.clone(),
            SessionConfig {
                n_ctx: ctx + adapters.soft_prompt_len(),
                n_threads: self.cfg.threads,
                backend: self.cfg.backend,
                gpu_layers: self.cfg.gpu_layers,
                ..SessionConfig::default()
            },
        )?;
        s.set_adapters(adapters)?;
        let prompt = if self.cfg.method == Method::Lopa {
            self.cfg.prompt_tokens.clamp(1, ctx / 2)
        } else {
            1
        };
        Ok(perplexity_with_prompt(&mut s, tokens, ctx, prompt, |_, _| {})?.perplexity)
    }

    /// Trains on `data` until `opts.steps` steps are done, `batch` sequences per step from the
    /// data stream at the adapter's cursor, calling `progress` after every step.
    pub fn fit(
        &mut self,
        data: &[Example],
        opts: &FitOptions,
        mut progress: impl FnMut(&Progress) -> Control,
    ) -> Result<FitReport> {
        if data.is_empty() {
            return Err(Error::InvalidRequest("no training example".into()));
        }
        let eval = |t: &Trainer| -> Result<Option<f64>> {
            opts.eval_tokens
                .as_deref()
                .map(|toks| t.evaluate(toks))
                .transpose()
        };
        let start = eval(self)?;
        let mut ppl = start;
        let t0 = Instant::now();
        let mut tokens = 0usize;
        let mut last = None;
        let mut stopped = false;
        let batch = self.cfg.batch;
        while self.state.step < opts.steps {
            let examples = next_batch(data, self.state.cursor, batch, self.cfg.seed);
            self.state.cursor += batch as u64;
            let st = self.step(&examples)?;
            tokens += examples.iter().map(|e| e.tokens.len()).sum::<usize>();
            if st.step % opts.eval_every.max(1) == 0 || st.step == opts.steps {
                ppl = eval(self)?.or(ppl);
            }
            let save = opts
                .out
                .as_ref()
                .filter(|_| st.step % opts.save_every.max(1) == 0);
            if let Some(out) = save {
                self.save(out)?;
            }
            last = Some(st.loss);
            let elapsed = t0.elapsed().as_secs_f64();
            let p = Progress {
                step: st.step,
                total: opts.steps,
                loss: st.loss,
                lr: st.lr,
                grad_norm: st.grad_norm,
                tokens_per_s: tokens as f64 / elapsed,
                eval_perplexity: ppl,
                elapsed_s: elapsed,
            };
            if progress(&p) == Control::Stop {
                stopped = true;
                break;
            }
        }
        if let Some(out) = &opts.out {
            self.save(out)?;
        }
        let seconds = t0.elapsed().as_secs_f64();
        Ok(FitReport {
            steps: self.state.step,
            final_loss: last,
            eval_perplexity_start: start,
            eval_perplexity_end: ppl,
            tokens_per_s: tokens as f64 / seconds.max(1e-9),
            seconds,
            stopped,
        })
    }
}

/// The `batch` examples at stream position `cursor`: each epoch visits every example once, in
/// an order fixed by the seed and the epoch number, so a resumed run sees the same stream
/// (examples appended to the data between runs join the stream from then on; the cursor keeps
/// counting).
pub fn next_batch(examples: &[Example], cursor: u64, batch: usize, seed: u64) -> Vec<Example> {
    let n = examples.len() as u64;
    (cursor..cursor + batch as u64)
        .map(|c| {
            let epoch = c / n;
            let mut order: Vec<usize> = (0..examples.len()).collect();
            order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
                seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ));
            examples[order[(c % n) as usize]].clone()
        })
        .collect()
}
