//! On-device fine-tuning of adapter parameters only, over the frozen, still-quantized,
//! memory-mapped base.
//!
//! The forward graph is the model's own (`model::llama::build` without a KV cache); the
//! trainable adapter's tensors are the only ggml parameters, gradients come from ggml's
//! autodiff, and AdamW (decoupled weight decay, warm-up + cosine/linear schedule, global-norm
//! clipping, gradient accumulation) runs on the host over the few adapter parameters. The
//! loss is the causal-LM cross entropy over unmasked target tokens.
//!
//! Methods implemented so far: LoRA (A Kaiming-uniform, B zero).

pub mod data;
mod state;

use std::sync::Arc;

use graft_formats::{Gguf, GgufWriter, Value};
use graft_ggml::{Backend, Context, GraphAllocator, Type};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::adapter::{ActiveAdapters, Adapter, Delta, Target, TargetKind};
use crate::error::{Error, Result};
use crate::model::llama::{self, BatchShape};
use crate::model::Model;

pub use data::{Example, TrainData};
pub use state::TrainState;

/// What kind of adapter to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// LoRA.
    Lora,
}

impl Method {
    /// Parses `lora` (DiaBlo, WeGeFT and LoPA training are not implemented yet).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "lora" => Ok(Method::Lora),
            "diablo" | "wegeft" | "lopa" => Err(Error::InvalidRequest(format!(
                "training {s} adapters is not implemented yet (lora is)"
            ))),
            other => Err(Error::InvalidRequest(format!(
                "unknown method {other:?} (lora, diablo, wegeft, lopa)"
            ))),
        }
    }
}

/// Learning-rate schedule after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Cosine decay to 10 % of the peak.
    Cosine,
    /// Linear decay to 10 % of the peak.
    Linear,
    /// Constant.
    Constant,
}

/// Training hyper-parameters.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Method.
    pub method: Method,
    /// Rank (LoRA).
    pub rank: usize,
    /// LoRA alpha (scale = alpha / rank).
    pub alpha: f32,
    /// Targeted kinds.
    pub targets: Vec<TargetKind>,
    /// Peak learning rate.
    pub lr: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Adam betas.
    pub betas: (f32, f32),
    /// Adam epsilon.
    pub eps: f32,
    /// Warm-up steps.
    pub warmup: usize,
    /// Schedule after warm-up.
    pub schedule: Schedule,
    /// Clip the global gradient norm to this (0 = off).
    pub clip: f32,
    /// Sequences per optimizer step (gradient accumulation).
    pub batch: usize,
    /// Total optimizer steps the schedule spans.
    pub total_steps: usize,
    /// Tokens per sequence.
    pub ctx: usize,
    /// RNG seed (initialisation).
    pub seed: u64,
    /// CPU threads.
    pub threads: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            method: Method::Lora,
            rank: 8,
            alpha: 16.0,
            targets: TargetKind::ALL.to_vec(),
            lr: 1e-3,
            weight_decay: 0.0,
            betas: (0.9, 0.999),
            eps: 1e-8,
            warmup: 10,
            schedule: Schedule::Cosine,
            clip: 1.0,
            batch: 1,
            total_steps: 100,
            ctx: 256,
            seed: 0,
            threads: crate::session::default_threads(),
        }
    }
}

/// One trainable tensor: host copy, gradient accumulator and Adam moments.
struct Param {
    name: String,
    id: graft_ggml::TensorId,
    value: Vec<f32>,
    grad: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    ne: [u64; 2],
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct StepStats {
    /// Optimizer step number (1-based).
    pub step: usize,
    /// Mean loss over the step's sequences.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Learning rate used.
    pub lr: f32,
    /// Target tokens scored.
    pub tokens: usize,
}

/// Trains one adapter over a frozen base.
pub struct Trainer {
    model: Arc<Model>,
    cfg: TrainConfig,
    adapter: Arc<Adapter>,
    params: Vec<Param>,
    backend: Backend,
    alloc: GraphAllocator,
    ctx: Context,
    state: TrainState,
}

impl Trainer {
    /// A new adapter initialised per method (LoRA: A Kaiming-uniform, B zero).
    pub fn new(model: Arc<Model>, cfg: TrainConfig) -> Result<Self> {
        validate(&cfg)?;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut tensors = Vec::new();
        for layer in 0..model.config().n_layer {
            for &kind in &cfg.targets {
                let (n_in, n_out) = kind.dims(&model);
                let r = cfg.rank;
                // Kaiming-uniform with a = sqrt(5) (PEFT's LoRA A init): bound = 1/sqrt(n_in).
                let bound = 1.0 / (n_in as f32).sqrt();
                let a: Vec<f32> = (0..n_in * r)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let base = Target { layer, kind }.tensor_name();
                tensors.push((format!("{base}.lora_a"), [n_in as u64, r as u64], a));
                tensors.push((
                    format!("{base}.lora_b"),
                    [r as u64, n_out as u64],
                    vec![0.0; r * n_out],
                ));
            }
        }
        Self::from_tensors(model, cfg, tensors, TrainState::default(), None)
    }

    /// Continues training the adapter at `path` from its stored optimizer state, step and
    /// data cursor. Hyper-parameters in `cfg` that define the adapter (rank, targets, alpha)
    /// are taken from the file.
    pub fn resume(model: Arc<Model>, mut cfg: TrainConfig, path: &std::path::Path) -> Result<Self> {
        let g = Gguf::open(path)?;
        let state = TrainState::read(&g)?;
        cfg.alpha = g.get_f32_or("adapter.lora.alpha", cfg.alpha)?;
        let mut tensors = Vec::new();
        let mut moments = Vec::new();
        let mut kinds = Vec::new();
        for t in crate::adapter::model_tensors(&g) {
            let values = graft_ggml::dequantize(
                Type(t.dtype.id()),
                g.tensor_data(t),
                t.n_elements() as usize,
            )?;
            if t.dims.len() != 2 {
                return Err(Error::InvalidAdapter(format!("{} is not 2-D", t.name)));
            }
            if let Some((target, ".lora_a")) = Target::parse_prefix(&t.name) {
                cfg.rank = t.dims[1] as usize;
                if !kinds.contains(&target.kind) {
                    kinds.push(target.kind);
                }
            }
            let m = state::moment(&g, "adam_m", &t.name, values.len())?;
            let v = state::moment(&g, "adam_v", &t.name, values.len())?;
            moments.push((m, v));
            tensors.push((t.name.clone(), [t.dims[0], t.dims[1]], values));
        }
        cfg.targets = TargetKind::ALL
            .into_iter()
            .filter(|k| kinds.contains(k))
            .collect();
        validate(&cfg)?;
        Self::from_tensors(model, cfg, tensors, state, Some(moments))
    }

    fn from_tensors(
        model: Arc<Model>,
        cfg: TrainConfig,
        tensors: Vec<(String, [u64; 2], Vec<f32>)>,
        state: TrainState,
        moments: Option<Vec<(Vec<f32>, Vec<f32>)>>,
    ) -> Result<Self> {
        let bytes = lora_file(
            &model,
            &cfg,
            tensors
                .iter()
                .map(|(n, ne, v)| (n.as_str(), *ne, v.as_slice())),
            None,
        )?
        .to_bytes()?;
        let adapter = Arc::new(Adapter::from_gguf(
            &model,
            Arc::new(Gguf::from_bytes(bytes)?),
            "training".into(),
        )?);
        let mut params = Vec::new();
        let mut moments = moments.map(|m| m.into_iter());
        for t in adapter.targets() {
            for d in adapter.deltas(t) {
                if let Delta::Lora { a, b, .. } = *d {
                    for (id, suffix) in [(a, "lora_a"), (b, "lora_b")] {
                        let name = format!("{}.{suffix}", t.tensor_name());
                        let (ne, value) = tensors
                            .iter()
                            .find(|(n, _, _)| *n == name)
                            .map(|(_, ne, v)| (*ne, v.clone()))
                            .expect("tensor written above");
                        adapter.t(id).set_param();
                        let n = value.len();
                        let (m, v) = match &mut moments {
                            Some(it) => it.next().unwrap_or_else(|| (vec![0.0; n], vec![0.0; n])),
                            None => (vec![0.0; n], vec![0.0; n]),
                        };
                        params.push(Param {
                            name,
                            id,
                            value,
                            grad: vec![0.0; n],
                            m,
                            v,
                            ne,
                        });
                    }
                }
            }
        }
        // Moments were read in file order; re-read them by name to be safe.
        let backend = Backend::cpu(cfg.threads)?;
        let alloc = GraphAllocator::new(&backend)?;
        let nodes = llama::max_nodes(&model, 1) * llama::TRAIN_GRAPH_FACTOR;
        let ctx = Context::with_graph(nodes + 64, nodes, true)?;
        Ok(Self {
            model,
            cfg,
            adapter,
            params,
            backend,
            alloc,
            ctx,
            state,
        })
    }

    /// The adapter being trained (its tensors are updated in place after every step, so a
    /// session using it sees the current weights).
    pub fn adapter(&self) -> &Arc<Adapter> {
        &self.adapter
    }

    /// Settings.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The training state (step, data cursor).
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Mutable training state (the data loader advances the cursor).
    pub fn state_mut(&mut self) -> &mut TrainState {
        &mut self.state
    }

    /// Names of the trainable tensors.
    pub fn param_names(&self) -> Vec<String> {
        self.params.iter().map(|p| p.name.clone()).collect()
    }

    /// Current values of trainable tensor `name`.
    pub fn param(&self, name: &str) -> Option<&[f32]> {
        self.params
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.as_slice())
    }

    /// Gradient accumulated by the last [`Trainer::forward_backward`] calls for `name`
    /// (summed over scored tokens; divide by their count for the mean-loss gradient).
    pub fn accumulated_grad(&self, name: &str) -> Option<&[f32]> {
        self.params
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.grad.as_slice())
    }

    /// Zeroes the gradient accumulators.
    pub fn zero_grads(&mut self) {
        for p in &mut self.params {
            p.grad.iter_mut().for_each(|g| *g = 0.0);
        }
    }

    /// Overwrites trainable tensor `name` (e.g. to start from other values).
    pub fn set_param(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let p = self
            .params
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::InvalidRequest(format!("no trainable tensor {name}")))?;
        if values.len() != p.value.len() {
            return Err(Error::InvalidRequest(format!(
                "{name} has {} values, got {}",
                p.value.len(),
                values.len()
            )));
        }
        p.value.copy_from_slice(values);
        self.adapter.t(p.id).write_f32(0, values)?;
        Ok(())
    }

    /// Number of trainable parameters.
    pub fn n_params(&self) -> usize {
        self.params.iter().map(|p| p.value.len()).sum()
    }

    /// Loss of one example and, with `grads`, its gradients added to the accumulators.
    /// Returns (mean loss over scored tokens, scored tokens).
    pub fn forward_backward(&mut self, ex: &Example, grads: bool) -> Result<(f32, usize)> {
        let n = ex.tokens.len();
        if n < 2 {
            return Err(Error::InvalidRequest(
                "an example needs at least 2 tokens".into(),
            ));
        }
        let n_vocab = self.model.config().n_vocab;
        let scored = (1..n).filter(|&t| ex.mask[t]).count();
        if scored == 0 {
            return Ok((0.0, 0));
        }
        let set = ActiveAdapters::none().with(self.adapter.clone(), 1.0);
        self.ctx.reset();
        let ctx = &self.ctx;
        let shape = BatchShape {
            n_tokens: n,
            n_kv: n,
            n_out: n,
            embeddings: false,
        };
        let (mut gf, inp) = llama::build(&self.model, None, &set, ctx, shape);
        // Only the rows that predict a scored token enter the loss (ggml's cross-entropy
        // backward assumes every label row sums to 1, so masked rows must not be there).
        let rows = ctx.new_tensor(Type::I32, &[scored as i64]).set_input();
        let labels = ctx
            .new_tensor(Type::F32, &[n_vocab as i64, scored as i64])
            .set_input();
        let loss = ctx
            .cross_entropy_loss(ctx.get_rows(inp.logits, rows), labels)
            .set_output()
            .set_loss();
        gf.build_forward_expand(loss);
        if grads {
            gf.build_backward_expand(ctx);
        }
        self.alloc.alloc(&gf)?;
        let toks: Vec<i32> = ex.tokens.iter().map(|&t| t as i32).collect();
        inp.tokens.write_i32(0, &toks)?;
        inp.attn
            .pos
            .write_i32(0, &(0..n as i32).collect::<Vec<_>>())?;
        let mut mask = vec![f32::NEG_INFINITY; n * n];
        for t in 0..n {
            mask[t * n..t * n + t + 1].fill(0.0);
        }
        inp.attn.mask.write_f32(0, &mask)?;
        let picked: Vec<i32> = (0..n - 1)
            .filter(|&t| ex.mask[t + 1])
            .map(|t| t as i32)
            .collect();
        rows.write_i32(0, &picked)?;
        let mut lab = vec![0f32; n_vocab * scored];
        for (r, &t) in picked.iter().enumerate() {
            lab[r * n_vocab + ex.tokens[t as usize + 1] as usize] = 1.0;
        }
        labels.write_f32(0, &lab)?;
        if grads {
            gf.reset_grads();
        }
        self.backend.compute(&gf)?;
        let l = loss.to_vec_f32()?[0];
        if grads {
            for p in &mut self.params {
                let t = self.adapter.t(p.id);
                let g = gf
                    .grad(t)
                    .ok_or_else(|| Error::InvalidRequest(format!("no gradient for {}", p.name)))?;
                let gv = g.to_vec_f32()?;
                for (acc, x) in p.grad.iter_mut().zip(gv) {
                    *acc += x * scored as f32;
                }
            }
        }
        Ok((l, scored))
    }

    /// One optimizer step over `examples` (gradient accumulation): loss, clipping, AdamW.
    pub fn step(&mut self, examples: &[Example]) -> Result<StepStats> {
        self.zero_grads();
        let mut loss_sum = 0f64;
        let mut tokens = 0usize;
        for ex in examples {
            let (l, n) = self.forward_backward(ex, true)?;
            loss_sum += l as f64 * n as f64;
            tokens += n;
        }
        if tokens == 0 {
            return Err(Error::InvalidRequest(
                "no target token in this batch (all masked)".into(),
            ));
        }
        let inv = 1.0 / tokens as f32;
        let mut norm2 = 0f64;
        for p in &mut self.params {
            for g in &mut p.grad {
                *g *= inv;
                norm2 += (*g as f64) * (*g as f64);
            }
        }
        let grad_norm = norm2.sqrt() as f32;
        let clip = if self.cfg.clip > 0.0 && grad_norm > self.cfg.clip {
            self.cfg.clip / grad_norm
        } else {
            1.0
        };
        self.state.step += 1;
        let t = self.state.step;
        let lr = self.lr_at(t);
        let (b1, b2) = self.cfg.betas;
        let (bc1, bc2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        for p in &mut self.params {
            for i in 0..p.value.len() {
                let g = p.grad[i] * clip;
                p.m[i] = b1 * p.m[i] + (1.0 - b1) * g;
                p.v[i] = b2 * p.v[i] + (1.0 - b2) * g * g;
                let update = (p.m[i] / bc1) / ((p.v[i] / bc2).sqrt() + self.cfg.eps);
                p.value[i] -= lr * (update + self.cfg.weight_decay * p.value[i]);
            }
            self.adapter.t(p.id).write_f32(0, &p.value)?;
        }
        Ok(StepStats {
            step: t,
            loss: (loss_sum / tokens as f64) as f32,
            grad_norm,
            lr,
            tokens,
        })
    }

    /// The learning rate at optimizer step `t` (1-based).
    pub fn lr_at(&self, t: usize) -> f32 {
        let c = &self.cfg;
        if t <= c.warmup {
            return c.lr * t as f32 / c.warmup.max(1) as f32;
        }
        let span = c.total_steps.saturating_sub(c.warmup).max(1) as f32;
        let p = ((t - c.warmup) as f32 / span).min(1.0);
        let f = match c.schedule {
            Schedule::Constant => 1.0,
            Schedule::Linear => 1.0 - p,
            Schedule::Cosine => 0.5 * (1.0 + (std::f32::consts::PI * p).cos()),
        };
        c.lr * (0.1 + 0.9 * f)
    }

    /// Writes the adapter with its training state (atomically: an interrupted save leaves the
    /// previous file intact).
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let tensors = self
            .params
            .iter()
            .map(|p| (p.name.as_str(), p.ne, p.value.as_slice()));
        let mut w = lora_file(&self.model, &self.cfg, tensors, Some(&self.state))?;
        for p in &self.params {
            w.add_tensor_f32(format!("train.adam_m.{}", p.name), &p.ne, &p.m)?;
            w.add_tensor_f32(format!("train.adam_v.{}", p.name), &p.ne, &p.v)?;
        }
        w.write_atomic(path)?;
        Ok(())
    }
}

fn validate(cfg: &TrainConfig) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidRequest(m));
    if cfg.rank == 0 || cfg.rank > 1024 {
        return bad(format!("rank {} must be 1..=1024", cfg.rank));
    }
    if cfg.targets.is_empty() {
        return bad("no target layers".into());
    }
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return bad(format!("learning rate {} must be positive", cfg.lr));
    }
    if cfg.ctx < 2 || cfg.batch == 0 || cfg.threads == 0 {
        return bad("ctx must be >= 2, batch and threads >= 1".into());
    }
    Ok(())
}

/// A LoRA adapter file holding `tensors` (and the training state, when given).
fn lora_file<'a>(
    model: &Model,
    cfg: &TrainConfig,
    tensors: impl Iterator<Item = (&'a str, [u64; 2], &'a [f32])>,
    state: Option<&TrainState>,
) -> Result<GgufWriter<'static>> {
    let mut w = GgufWriter::new();
    w.add_kv("general.type", "adapter");
    w.add_kv("general.architecture", model.config().arch.name());
    w.add_kv("adapter.type", "lora");
    w.add_kv("adapter.lora.alpha", Value::F32(cfg.alpha));
    w.add_kv("adapter.base.fingerprint", model.fingerprint());
    for (name, ne, v) in tensors {
        w.add_tensor_f32(name, &ne, v)?;
    }
    if let Some(s) = state {
        s.write(&mut w, cfg);
    }
    Ok(w)
}
