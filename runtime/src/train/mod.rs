//! On-device fine-tuning of adapter parameters only, over the frozen, still-quantized,
//! memory-mapped base.
//!
//! The forward graph is the model's own (`model::llama::build` without a KV cache); the
//! trainable adapter's tensors are the only ggml parameters, gradients come from ggml's
//! autodiff, and AdamW (decoupled weight decay, warm-up + cosine/linear schedule, global-norm
//! clipping, gradient accumulation) runs on the host over the few adapter parameters. The
//! loss is the causal-LM cross entropy over unmasked target tokens.
//!
//! Methods: LoRA, DiaBlo and WeGeFT train tensors of the graph. LoPA's parameters are its
//! soft-prompt encoder, which runs on the host: the graph takes the soft prompt as trainable
//! input embeddings, ggml's backward pass yields dL/dZ, and [`crate::adapter::lopa`]
//! backpropagates it through the encoder.

mod copies;
pub mod data;
mod fit;
mod galore;
mod state;

use std::collections::HashMap;
use std::sync::Arc;

use graft_formats::{Gguf, GgufWriter, Value};
use graft_ggml::{Context, Type};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::adapter::{ActiveAdapters, Adapter, Delta, Target, TargetKind};
use crate::compute::{ExecConfig, Executor};
use crate::error::{Error, Result};
use crate::model::device::DeviceWeights;
use crate::model::llama::{self, BatchShape};
use crate::model::{FileKind, Model};

pub use data::{Example, TrainData};
pub use fit::{next_batch, Control, FitOptions, FitReport, Progress};
pub use galore::GaloreConfig;
pub use state::TrainState;

/// The initial loss scale (a power of two, so scaling is exact in f32). It kept the softmax
/// gradient's small probabilities representable when the backward pass multiplied through F16
/// weight copies; the backward pass is f32 now, and the scale (kept in checkpoints as
/// `train.loss_scale`) moves the gradients by powers of two only.
pub const LOSS_SCALE: f32 = 1024.0;

/// What kind of adapter to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// LoRA: A Kaiming-uniform, B zero.
    Lora,
    /// DiaBlo: zero blocks.
    Diablo,
    /// WeGeFT: ψ Kaiming-uniform, φ zero.
    Wegeft,
    /// LoPA: Z_S from the embeddings of random vocabulary tokens, encoder layers with
    /// PyTorch's `nn.Linear` initialisation (Kaiming-uniform weights, uniform biases).
    Lopa,
}

impl Method {
    /// Parses `lora`, `diablo`, `wegeft` or `lopa`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "lora" => Ok(Method::Lora),
            "diablo" => Ok(Method::Diablo),
            "wegeft" => Ok(Method::Wegeft),
            "lopa" => Ok(Method::Lopa),
            other => Err(Error::InvalidRequest(format!(
                "unknown method {other:?} (lora, diablo, wegeft, lopa)"
            ))),
        }
    }

    /// The name [`Method::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Method::Lora => "lora",
            Method::Diablo => "diablo",
            Method::Wegeft => "wegeft",
            Method::Lopa => "lopa",
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
    /// Rank (LoRA, WeGeFT, LoPA).
    pub rank: usize,
    /// LoRA / WeGeFT alpha (scale = alpha / rank).
    pub alpha: f32,
    /// DiaBlo's requested number of blocks N.
    pub blocks: usize,
    /// LoPA's number of virtual tokens m.
    pub virtual_tokens: usize,
    /// LoPA: an example with no prompt (plain text) uses its first this many tokens (at most
    /// half of it) as the prompt the encoder sees; they are not scored.
    pub prompt_tokens: usize,
    /// Targeted kinds.
    pub targets: Vec<TargetKind>,
    /// Dropout probability on the adapter input (LoRA, DiaBlo; 0 = off): each training
    /// forward pass multiplies the input of every delta by its own mask of 0 and 1/(1-p).
    pub dropout: f32,
    /// DiaBlo: keep Adam's moments in a GaLore projection of each block's gradient.
    pub galore: Option<GaloreConfig>,
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
    /// Input gradients through quantized (and F16/BF16) base weights as f32 GEMMs over panels
    /// of the weights dequantized once per sequence, and the other F32 `out_prod`s (attention,
    /// adapter matrices) as GEMMs. `false`: ggml's own `out_prod` kernels, which dequantize a
    /// quantized weight once per token (several times slower; the reference path).
    pub gemm_backward: bool,
    /// Forward products as f32 GEMMs: every `mul_mat` with F32 activations (base weights of
    /// any type, dequantized in panels; adapter matrices; attention) runs on a packed f32 GEMM
    /// instead of ggml's kernels, which first round the activations to the weights' dot-product
    /// type (Q8 blocks for quantized weights) and have no GEMM for Q4_1, for small inner
    /// dimensions or for strided operands. The weights' values are exact; the activations are
    /// not quantized (as QLoRA-style trainers compute), so the loss differs from ggml's
    /// inference loss by that rounding. The cross entropy's forward also runs on a vectorized
    /// exponential (within 3e-7 of libm's) instead of ggml's scalar one. `false`: ggml's
    /// kernels (the inference path).
    pub gemm_forward: bool,
    /// With `gemm_forward` off: keep each Q4_1 layer weight also as a Q4_0 matrix plus
    /// per-block offsets, whose products sum to ggml's Q4_1 product up to f32 rounding on a
    /// GEMM kernel (ggml has none for Q4_1): faster forward passes for 0.69 bytes per layer
    /// weight.
    pub split_q4_1: bool,
    /// Gradient checkpointing: keep only each layer's input through the forward pass and
    /// recompute the layer's activations in the backward pass (the compute buffer holds one
    /// layer's instead of all; costs about one more forward pass).
    pub checkpointing: bool,
    /// CPU threads.
    pub threads: usize,
    /// The backend the training graphs run on (`Auto`: the best hardware GPU, else the CPU;
    /// see [`graft_ggml::select_device`]). On a device, ggml's scheduler runs on the CPU the
    /// nodes the device declines (the backward ops it lacks), and the products are ggml's own
    /// (`gemm_forward`, `gemm_backward` and `split_q4_1` are CPU rewrites, off there).
    pub backend: graft_ggml::BackendChoice,
    /// On a device: how many of the last layers' weights go there (`None`: all of them), as
    /// [`SessionConfig::gpu_layers`](crate::SessionConfig::gpu_layers).
    pub gpu_layers: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            method: Method::Lora,
            rank: 8,
            alpha: 16.0,
            blocks: 64,
            virtual_tokens: 16,
            prompt_tokens: 32,
            targets: TargetKind::ALL.to_vec(),
            dropout: 0.0,
            galore: None,
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
            gemm_backward: true,
            gemm_forward: true,
            split_q4_1: true,
            checkpointing: false,
            threads: crate::session::default_threads(),
            backend: graft_ggml::BackendChoice::Auto,
            gpu_layers: None,
        }
    }
}

/// One trainable tensor: host copy (in graph layout), gradient accumulator and Adam moments.
struct Param {
    /// The file tensor name.
    name: String,
    /// The adapter tensor in the graph (None: LoPA's host-side encoder).
    id: Option<graft_ggml::TensorId>,
    value: Vec<f32>,
    grad: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    /// Dims in the file.
    ne: Vec<u64>,
    /// Stored transposed in the graph (WeGeFT φ is used as φᵀ): `(rows, cols)` of the file
    /// layout.
    transposed: Option<(usize, usize)>,
    /// GaLore state (DiaBlo with GaLore; then `m` and `v` are empty).
    galore: Option<galore::GaloreState>,
}

/// A file tensor: name, ggml dims, values.
type FileTensor = (String, Vec<u64>, Vec<f32>);

/// Adam moments `(m, v)` by tensor name.
type Moments = HashMap<String, (Vec<f32>, Vec<f32>)>;

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
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

/// Scored rows the head (final norm, LM head, loss) takes at a time with gradient
/// checkpointing: its logits and their gradient are `n_vocab` floats per row (49152 for
/// SmolLM2: 25 MB per tensor at 128 rows).
const HEAD_ROWS: usize = 128;

/// One training sequence, ready for the graphs.
struct Sequence<'e> {
    ex: &'e Example,
    /// Rows of the graph: LoPA's soft prompt, then the example's tokens.
    n_seq: usize,
    input: SeqInput,
    /// Example positions `t` whose next token is scored.
    picked: Vec<usize>,
    /// Their graph rows (`n_soft + t`): `out_ids`.
    rows: Vec<i32>,
    set: ActiveAdapters,
    dropout: bool,
}

/// What the first layer reads.
enum SeqInput {
    Tokens(Vec<i32>),
    /// LoPA: soft prompt and token embeddings, `[n_embd, n_seq]`.
    Embeddings(Vec<f32>),
}

impl Sequence<'_> {
    fn embeddings(&self) -> bool {
        matches!(self.input, SeqInput::Embeddings(_))
    }

    fn write_input(&self, t: graft_ggml::Tensor<'_>) -> Result<()> {
        match &self.input {
            SeqInput::Tokens(ids) => t.write_i32(0, ids)?,
            SeqInput::Embeddings(x) => t.write_f32(0, x)?,
        }
        Ok(())
    }

    /// Positions and the causal mask.
    fn write_attention(&self, inp: &llama::GraphInputs<'_>) -> Result<()> {
        let n = self.n_seq;
        inp.attn
            .pos
            .write_i32(0, &(0..n as i32).collect::<Vec<_>>())?;
        let mut mask = vec![f32::NEG_INFINITY; n * n];
        for t in 0..n {
            mask[t * n..t * n + t + 1].fill(0.0);
        }
        inp.attn.mask.write_f32(0, &mask)?;
        Ok(())
    }

    /// Everything a whole-model graph reads but the labels.
    fn write_inputs(&self, inp: &llama::GraphInputs<'_>) -> Result<()> {
        self.write_input(inp.tokens)?;
        self.write_attention(inp)?;
        inp.out_ids
            .expect("the last position is never scored, so rows are always picked")
            .write_i32(0, &self.rows)?;
        Ok(())
    }

    /// Writes the labels of scored rows `range` in the forms the graph reads: their ids, and/or
    /// the one-hot rows `[n_vocab, len]`.
    fn write_labels(
        &self,
        loss: &Loss<'_>,
        n_vocab: usize,
        range: std::ops::Range<usize>,
    ) -> Result<()> {
        let ids: Vec<i32> = self.picked[range]
            .iter()
            .map(|&t| self.ex.tokens[t + 1] as i32)
            .collect();
        // The ids are in the graph only when its loss was rewritten to read them.
        if loss.ids.is_allocated() {
            loss.ids.write_i32(0, &ids)?;
        }
        if loss.dense {
            // Zeroed in place and then one 1.0 per row: a host copy would be n_vocab floats
            // per row (50 MB for SmolLM2 at ctx 256), built and copied every step.
            loss.labels.zero()?;
            for (r, &id) in ids.iter().enumerate() {
                loss.labels.write_f32(r * n_vocab + id as usize, &[1.0])?;
            }
        }
        Ok(())
    }
}

/// Loss and, with a backward pass, its gradients.
struct RunOutput {
    loss: f32,
    grads: Option<RunGrads>,
}

/// Per-parameter gradients of the scaled loss (empty for LoPA), and the gradient of the input
/// embeddings (when the input is embeddings).
type RunGrads = (Vec<Vec<f32>>, Option<Vec<f32>>);

/// One layer's graph: its output (forward) or its input's gradient (backward).
struct LayerOutput {
    output: Vec<f32>,
    input_grad: Option<Vec<f32>>,
}

/// Per-parameter gradients summed over the layer graphs, and which parameters got one.
struct GradAcc {
    grads: Vec<Vec<f32>>,
    seen: Vec<bool>,
}

/// The gradient of `t` in `gf`, read to the host.
fn grad_of(gf: &graft_ggml::Graph<'_>, t: graft_ggml::Tensor<'_>, what: &str) -> Result<Vec<f32>> {
    gf.grad(t)
        .ok_or_else(|| Error::InvalidRequest(format!("no gradient for {what}")))?
        .to_vec_f32()
        .map_err(Error::from)
}

/// The training graph (no KV cache; weights read from the map, or from `weights`, their copy on
/// a device) of `span` with adapters `set`.
fn span_graph<'a>(
    model: &'a Model,
    weights: Option<&'a DeviceWeights>,
    ctx: &'a Context,
    set: &'a ActiveAdapters,
    shape: BatchShape,
    span: llama::Span,
) -> (graft_ggml::Graph<'a>, llama::GraphInputs<'a>) {
    let rows = crate::model::layers::RowAdapters::All(set);
    llama::build(model, weights, None, rows, ctx, shape, None, span)
}

/// A graph's loss and its label inputs.
struct Loss<'a> {
    /// One-hot labels `[n_vocab, rows]`, what ggml's cross entropy reads.
    labels: graft_ggml::Tensor<'a>,
    /// The same labels as ids `[rows]`, what the rewritten loss reads
    /// ([`graft_ggml::Graph::use_sparse_cross_entropy`]).
    ids: graft_ggml::Tensor<'a>,
    /// The mean cross entropy (unscaled).
    value: graft_ggml::Tensor<'a>,
    /// Whether the finished graph still reads `labels` (so they must be written).
    dense: bool,
}

/// The mean cross entropy of `logits [n_vocab, rows]` against one-hot labels, times `scale`
/// as the graph's loss. Loss scaling keeps the backward pass's small gradients representable
/// in the F16 weight copies' products; the host divides it out.
fn add_loss<'a>(
    ctx: &'a Context,
    gf: &mut graft_ggml::Graph<'a>,
    logits: graft_ggml::Tensor<'a>,
    scale: f32,
) -> Loss<'a> {
    let labels = ctx.new_tensor(Type::F32, &logits.ne()[..2]).set_input();
    let ids = ctx.new_tensor(Type::I32, &logits.ne()[1..2]).set_input();
    let value = ctx.cross_entropy_loss(logits, labels).set_output();
    gf.build_forward_expand(ctx.scale(value, scale).set_loss());
    Loss {
        labels,
        ids,
        value,
        dense: true,
    }
}

/// Finishes a training graph before allocation: with `backward`, appends the backward pass of
/// its loss, and with `cfg.gemm_backward` runs its input gradients through quantized weights
/// and its F32 `out_prod`s (attention, adapter matrices) as GEMMs (CPU custom nodes: the
/// trainer turns these options off on a device). Then the forward products: with
/// `cfg.gemm_forward` as f32 GEMMs over dequantized weights, else those of split Q4_1 weights
/// through their copies; the cross entropy (forward and backward, reading `loss`'s label ids
/// instead of its one-hot labels) and the attention's softmax (which skips each row's masked
/// tail) as CPU custom nodes too. Forward-only graphs get the same forward ops, so evaluation
/// and training compute the same loss.
fn finish_graph<'a>(
    ctx: &'a Context,
    gf: &mut graft_ggml::Graph<'a>,
    split: Option<&'a copies::Q41Split>,
    backward: bool,
    cfg: &TrainConfig,
    loss: Option<&mut Loss<'a>>,
) {
    if backward {
        gf.build_backward_expand(ctx);
        if cfg.gemm_backward {
            gf.use_dequant_input_grads(ctx);
            gf.use_gemm_out_prod(ctx);
        }
    }
    if cfg.gemm_forward {
        gf.use_gemm_mul_mat(ctx);
        if let Some(l) = loss {
            l.dense = gf.use_sparse_cross_entropy(ctx, l.labels, l.ids);
        }
        gf.use_fast_cross_entropy(ctx);
        gf.use_masked_softmax(ctx);
    }
    if let Some(s) = split {
        gf.use_q4_1_split(ctx, |id| s.get(id));
    }
}

/// Trains one adapter over a frozen base.
pub struct Trainer {
    model: Arc<Model>,
    cfg: TrainConfig,
    adapter: Arc<Adapter>,
    params: Vec<Param>,
    /// Where the graphs run: the CPU backend, or a device (holding the weights and a copy of
    /// the trained tensors, rewritten after every step) with the CPU behind it.
    exec: Executor,
    ctx: Context,
    state: TrainState,
    split: Option<copies::Q41Split>,
    /// Which sequence of the current optimizer step is being processed (seeds dropout).
    micro: usize,
    /// Host bytes of the layer inputs kept by the last checkpointed step.
    checkpoint_bytes: usize,
}

impl Trainer {
    /// A new adapter initialised per method (LoRA: A Kaiming-uniform, B zero; DiaBlo: zero
    /// blocks; WeGeFT: ψ Kaiming-uniform, φ zero).
    pub fn new(model: Arc<Model>, cfg: TrainConfig) -> Result<Self> {
        validate(&cfg)?;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        if cfg.method == Method::Lopa {
            let tensors = lopa_init(&model, &cfg, &mut rng)?;
            return Self::from_tensors(model, cfg, tensors, TrainState::default(), None, None);
        }
        let mut tensors: Vec<FileTensor> = Vec::new();
        let r = cfg.rank;
        for layer in 0..model.config().n_layer {
            for &kind in &cfg.targets {
                let (n_in, n_out) = kind.dims(&model);
                let base = Target { layer, kind }.tensor_name();
                // Kaiming-uniform with a = sqrt(5) (PEFT's LoRA A init): bound = 1/sqrt(n_in).
                let bound = 1.0 / (n_in as f32).sqrt();
                let mut kaiming = || -> Vec<f32> {
                    (0..n_in * r)
                        .map(|_| rng.random_range(-bound..bound))
                        .collect()
                };
                match cfg.method {
                    Method::Lora => {
                        tensors.push((
                            format!("{base}.lora_a"),
                            vec![n_in as u64, r as u64],
                            kaiming(),
                        ));
                        tensors.push((
                            format!("{base}.lora_b"),
                            vec![r as u64, n_out as u64],
                            vec![0.0; r * n_out],
                        ));
                    }
                    Method::Wegeft => {
                        tensors.push((
                            format!("{base}.wegeft_phi"),
                            vec![n_in as u64, r as u64],
                            vec![0.0; n_in * r],
                        ));
                        tensors.push((
                            format!("{base}.wegeft_psi"),
                            vec![n_in as u64, r as u64],
                            kaiming(),
                        ));
                    }
                    Method::Lopa => unreachable!("LoPA is initialised above"),
                    Method::Diablo => {
                        let n = cfg.blocks;
                        let (bi, bo) = (n_in.div_ceil(n), n_out.div_ceil(n));
                        let nb = n_in.div_ceil(bi).max(n_out.div_ceil(bo));
                        tensors.push((
                            format!("{base}.diablo"),
                            vec![bi as u64, bo as u64, nb as u64],
                            vec![0.0; bi * bo * nb],
                        ));
                    }
                }
            }
        }
        Self::from_tensors(model, cfg, tensors, TrainState::default(), None, None)
    }

    /// Continues training the adapter at `path` from its stored optimizer state, step and
    /// data cursor. What defines the adapter (method, rank, blocks, targets, alpha) is taken
    /// from the file.
    pub fn resume(model: Arc<Model>, mut cfg: TrainConfig, path: &std::path::Path) -> Result<Self> {
        let g = Gguf::open(path)?;
        if let kind @ (FileKind::Model(_) | FileKind::Other(_)) = FileKind::of(&g) {
            return Err(Error::WrongFileKind {
                found: kind.to_string(),
                expected: "an adapter (one written by graft train)",
            });
        }
        let state = TrainState::read(&g)?;
        cfg.method = Method::parse(g.get_str("adapter.type")?)?;
        cfg.alpha = g.get_f32_or(
            "adapter.lora.alpha",
            g.get_f32_or("adapter.wegeft.alpha", cfg.alpha)?,
        )?;
        cfg.blocks = g.get_u32_or("adapter.diablo.blocks", cfg.blocks as u32)? as usize;
        if cfg.method == Method::Lopa {
            cfg.virtual_tokens = g.get_u32("adapter.lopa.virtual_tokens")? as usize;
            cfg.rank = g.get_u32("adapter.lopa.rank")? as usize;
        }
        // GaLore settings travel with the state they shaped.
        cfg.galore = match g.get_u32_or("train.galore.rank", 0)? {
            0 => None,
            rank => Some(GaloreConfig {
                rank: rank as usize,
                every: g.get_u32("train.galore.every")? as usize,
                scale: g.get_f32("train.galore.scale")?,
            }),
        };
        let mut tensors = Vec::new();
        let mut moments = HashMap::new();
        let mut galore_saved = HashMap::new();
        let mut kinds = Vec::new();
        for t in crate::adapter::model_tensors(&g) {
            let values = graft_ggml::dequantize(
                Type(t.dtype.id()),
                g.tensor_data(t),
                t.n_elements() as usize,
            )?;
            if let Some(saved) = galore::SavedGalore::read(&g, &t.name)? {
                galore_saved.insert(t.name.clone(), saved);
            } else {
                let m = state::moment(&g, "adam_m", &t.name, values.len())?;
                let v = state::moment(&g, "adam_v", &t.name, values.len())?;
                moments.insert(t.name.clone(), (m, v));
            }
            if cfg.method == Method::Lopa {
                tensors.push((t.name.clone(), t.dims.clone(), values));
                continue;
            }
            let Some((target, rest)) = Target::parse_prefix(&t.name) else {
                return Err(Error::InvalidAdapter(format!(
                    "{}: resume needs per-layer tensors",
                    t.name
                )));
            };
            if matches!(rest, ".lora_a" | ".wegeft_phi") {
                cfg.rank = t.dims[1] as usize;
            }
            if !kinds.contains(&target.kind) {
                kinds.push(target.kind);
            }
            tensors.push((t.name.clone(), t.dims.clone(), values));
        }
        if cfg.method != Method::Lopa {
            cfg.targets = TargetKind::ALL
                .into_iter()
                .filter(|k| kinds.contains(k))
                .collect();
        }
        validate(&cfg)?;
        Self::from_tensors(
            model,
            cfg,
            tensors,
            state,
            Some(moments),
            Some(galore_saved),
        )
    }

    fn from_tensors(
        model: Arc<Model>,
        mut cfg: TrainConfig,
        tensors: Vec<FileTensor>,
        state: TrainState,
        mut moments: Option<Moments>,
        mut galore_saved: Option<HashMap<String, galore::SavedGalore>>,
    ) -> Result<Self> {
        let adapter = training_adapter(
            &model,
            &cfg,
            tensors
                .iter()
                .map(|(n, ne, v)| (n.as_str(), ne.as_slice(), v.as_slice())),
        )?;
        let mut params = Vec::new();
        if cfg.method == Method::Lopa {
            for name in crate::adapter::lopa::TENSORS {
                let (_, ne, value) = tensors
                    .iter()
                    .find(|(n, _, _)| n == name)
                    .expect("the adapter loaded, so it has every LoPA tensor");
                let n = value.len();
                let (m, v) = moments
                    .as_mut()
                    .and_then(|mm| mm.remove(name))
                    .unwrap_or_else(|| (vec![0.0; n], vec![0.0; n]));
                params.push(Param {
                    name: name.to_string(),
                    id: None,
                    value: value.clone(),
                    grad: vec![0.0; n],
                    m,
                    v,
                    ne: ne.clone(),
                    transposed: None,
                    galore: None,
                });
            }
        }
        for t in adapter.targets() {
            for d in adapter.deltas(t).iter() {
                let ids: Vec<(graft_ggml::TensorId, &str, bool)> = match *d {
                    Delta::Lora { a, b, .. } => vec![(a, "lora_a", false), (b, "lora_b", false)],
                    Delta::Diablo { d, .. } => vec![(d, "diablo", false)],
                    Delta::Wegeft { phi_t, psi, .. } => {
                        vec![(phi_t, "wegeft_phi", true), (psi, "wegeft_psi", false)]
                    }
                };
                for (id, suffix, tr) in ids {
                    let name = format!("{}.{suffix}", t.tensor_name());
                    let (ne, file_value) = tensors
                        .iter()
                        .find(|(n, _, _)| *n == name)
                        .map(|(_, ne, v)| (ne.clone(), v.clone()))
                        .expect("every delta tensor comes from the file written above");
                    let transposed = tr.then(|| (ne[1] as usize, ne[0] as usize));
                    let value = match transposed {
                        Some((rows, cols)) => transpose(&file_value, rows, cols),
                        None => file_value,
                    };
                    adapter.t(id).set_param();
                    let n = value.len();
                    let galore = match (cfg.galore, d) {
                        (
                            Some(gc),
                            Delta::Diablo {
                                bs_in, bs_out, nb, ..
                            },
                        ) => {
                            let mut st = galore::GaloreState::new(*nb, *bs_out, *bs_in, gc.rank)?;
                            if let Some(saved) = galore_saved.as_mut().and_then(|s| s.remove(&name))
                            {
                                saved.restore_into(&mut st, &name)?;
                            }
                            Some(st)
                        }
                        _ => None,
                    };
                    let (m, v) = if galore.is_some() {
                        (Vec::new(), Vec::new())
                    } else {
                        moments
                            .as_mut()
                            .and_then(|mm| mm.remove(&name))
                            .unwrap_or_else(|| (vec![0.0; n], vec![0.0; n]))
                    };
                    params.push(Param {
                        name,
                        id: Some(id),
                        value,
                        grad: vec![0.0; n],
                        m,
                        v,
                        ne,
                        transposed,
                        galore,
                    });
                }
            }
        }
        let nodes = llama::max_nodes(&model, 1) * llama::TRAIN_GRAPH_FACTOR;
        let place = ExecConfig {
            backend: cfg.backend,
            gpu_layers: cfg.gpu_layers,
            ..ExecConfig::default()
        };
        let exec = Executor::new(
            &model,
            place,
            cfg.threads,
            2 * nodes + model.weight_ids().len(),
        )?;
        if let (Some(name), Some(device)) = (exec.device_name(), exec.device_backend()) {
            // The graph rewrites into custom CPU nodes are for the CPU backend: on a device
            // the graphs keep ggml's standard ops (its kernels run the products).
            cfg.gemm_forward = false;
            cfg.gemm_backward = false;
            cfg.split_q4_1 = false;
            // The trained tensors get a copy on the device, which the graphs read and
            // differentiate; the host copy stays the one sessions on the CPU and files read.
            adapter.upload_to(name, device)?;
            for id in params.iter().filter_map(|p| p.id) {
                adapter.t_on(id, Some(name)).set_param();
            }
        }
        let ctx = Context::with_graph(nodes + 64, nodes, true)?;
        let split = match cfg.split_q4_1 && !cfg.gemm_forward {
            true => Some(copies::Q41Split::build(&model)?),
            false => None,
        };
        Ok(Self {
            model,
            cfg,
            adapter,
            params,
            exec,
            ctx,
            state,
            split,
            micro: 0,
            checkpoint_bytes: 0,
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
        match p.id {
            Some(id) => write_param(&self.adapter, self.exec.device_name(), id, values)?,
            None => self.rebuild_adapter()?,
        }
        Ok(())
    }

    /// Rebuilds the adapter from the host parameters (LoPA: its encoder lives on the host, so
    /// a new immutable adapter replaces the old one; sessions holding the old one keep it).
    fn rebuild_adapter(&mut self) -> Result<()> {
        self.adapter = training_adapter(
            &self.model,
            &self.cfg,
            self.params
                .iter()
                .map(|p| (p.name.as_str(), p.ne.as_slice(), p.value.as_slice())),
        )?;
        Ok(())
    }

    /// Where the training graphs ran: backend, device and node counts so far.
    pub fn backend_report(&self) -> crate::BackendReport {
        self.exec.report()
    }

    /// Bytes of the Q4_1 weights' forward split copies (0 when off or no weight is Q4_1).
    pub fn split_bytes(&self) -> usize {
        self.split.as_ref().map_or(0, |s| s.bytes())
    }

    /// Bytes of optimizer state held (Adam moments; with GaLore, projections and projected
    /// moments instead).
    pub fn optimizer_bytes(&self) -> usize {
        4 * self
            .params
            .iter()
            .map(|p| p.m.len() + p.v.len() + p.galore.as_ref().map_or(0, |g| g.n_floats()))
            .sum::<usize>()
    }

    /// Bytes of the compute buffer (activations and their gradients for one sequence, as
    /// large as the largest graph run so far).
    pub fn compute_bytes(&self) -> usize {
        self.exec.compute_bytes()
    }

    /// Host bytes of the layer inputs gradient checkpointing keeps (largest sequence so far;
    /// 0 when off).
    pub fn checkpoint_bytes(&self) -> usize {
        self.checkpoint_bytes
    }

    /// Bytes plain Adam would hold for these parameters (two moments each).
    pub fn adam_bytes(&self) -> usize {
        8 * self.n_params()
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
        let n_embd = self.model.config().n_embd;
        // LoPA: the soft prompt made from the example's prompt comes first, as input
        // embeddings; the prompt's tokens are never scored.
        let mut scored_mask = ex.mask.clone();
        let soft = match self.adapter.lopa() {
            Some(l) => {
                let p = lopa_prompt_len(ex, self.cfg.prompt_tokens);
                scored_mask[..p].fill(false);
                let e = crate::adapter::lopa::mean_embedding(&self.model, &ex.tokens[..p])?;
                Some(l.forward(&e))
            }
            None => None,
        };
        let n_soft = soft.as_ref().map_or(0, |f| f.z.len() / n_embd);
        // Logit row n_soft + t predicts token t + 1.
        let picked: Vec<usize> = (0..n - 1).filter(|&t| scored_mask[t + 1]).collect();
        if picked.is_empty() {
            return Ok((0.0, 0));
        }
        let dropout = grads && self.cfg.dropout > 0.0;
        let set = match soft {
            Some(_) => ActiveAdapters::none(),
            None if dropout => ActiveAdapters::none()
                .with(self.adapter.clone(), 1.0)
                .with_input_dropout(),
            None => ActiveAdapters::none().with(self.adapter.clone(), 1.0),
        };
        let set = match self.exec.device_name() {
            Some(name) => set.on_device(name),
            None => set,
        };
        let seq = Sequence {
            ex,
            n_seq: n_soft + n,
            input: match &soft {
                Some(f) => {
                    let mut x = f.z.clone();
                    for &t in &ex.tokens {
                        x.extend(self.model.embedding_row(t)?);
                    }
                    SeqInput::Embeddings(x)
                }
                None => SeqInput::Tokens(ex.tokens.iter().map(|&t| t as i32).collect()),
            },
            rows: picked.iter().map(|&t| (n_soft + t) as i32).collect(),
            picked,
            set,
            dropout,
        };
        let loss_scale = self.state.loss_scale;
        let out = if grads && self.cfg.checkpointing {
            self.run_checkpointed(&seq, loss_scale)?
        } else {
            self.run_whole(&seq, grads, loss_scale)?
        };
        let Some((param_grads, input_grad)) = out.grads else {
            return Ok((out.loss, seq.picked.len()));
        };
        let grads: Vec<Vec<f32>> = match (&soft, self.adapter.lopa()) {
            (Some(f), Some(lopa)) => {
                let gx = input_grad.ok_or_else(|| {
                    Error::InvalidRequest("no gradient for the soft prompt".into())
                })?;
                lopa.backward(f, &gx[..n_soft * n_embd])
            }
            _ => param_grads,
        };
        if loss_scale > 1.0 && grads.iter().flatten().any(|g| !g.is_finite()) {
            // The scaled backward pass overflowed: retry this sequence at a smaller scale
            // (kept from now on, and saved with the training state).
            self.state.loss_scale = (loss_scale / 8.0).max(1.0);
            return self.forward_backward(ex, true);
        }
        let scored = seq.picked.len();
        let w = scored as f32 / loss_scale;
        for (p, gv) in self.params.iter_mut().zip(grads) {
            for (acc, x) in p.grad.iter_mut().zip(gv) {
                *acc += x * w;
            }
        }
        Ok((out.loss, scored))
    }

    /// One graph for the whole model (and, with `grads`, its backward pass): every activation
    /// of the sequence and its gradient live in the compute buffer at once.
    fn run_whole(&mut self, seq: &Sequence, grads: bool, loss_scale: f32) -> Result<RunOutput> {
        let n_vocab = self.model.config().n_vocab;
        let scored = seq.picked.len();
        self.ctx.reset();
        let ctx = &self.ctx;
        let shape = BatchShape {
            n_tokens: seq.n_seq,
            n_kv: seq.n_seq,
            n_out: scored,
            embeddings: seq.embeddings(),
            input_grad: seq.embeddings() && grads,
        };
        let weights = self.exec.weights();
        let (mut gf, inp) = span_graph(
            &self.model,
            weights.as_deref(),
            ctx,
            &seq.set,
            shape,
            llama::Span::whole(&self.model),
        );
        // Only the rows that predict a scored token reach the LM head and the loss (ggml's
        // cross-entropy backward assumes every label row sums to 1, so masked rows must not be
        // there); `out_ids` picks them before the last layer's feed-forward.
        let mut loss = add_loss(ctx, &mut gf, inp.out, loss_scale);
        finish_graph(
            ctx,
            &mut gf,
            self.split.as_ref(),
            grads,
            &self.cfg,
            Some(&mut loss),
        );
        self.exec.alloc(&gf)?;
        seq.write_inputs(&inp)?;
        seq.write_labels(&loss, n_vocab, 0..scored)?;
        if seq.dropout {
            self.fill_dropout_masks(0..self.model.config().n_layer)?;
        }
        if grads {
            gf.reset_grads();
        }
        self.exec.compute(&gf)?;
        let l = loss.value.to_vec_f32()?[0];
        if !grads {
            return Ok(RunOutput {
                loss: l,
                grads: None,
            });
        }
        let input_grad = match shape.input_grad {
            true => Some(grad_of(&gf, inp.tokens, "the input embeddings")?),
            false => None,
        };
        let param_grads = match seq.embeddings() {
            // LoPA: the graph holds no adapter; its gradient comes from the input's.
            true => Vec::new(),
            false => self
                .params
                .iter()
                .map(|p| {
                    let id = p.id.expect("graph parameter");
                    let t = self.adapter.t_on(id, self.exec.device_name().map(|d| &**d));
                    grad_of(&gf, t, &p.name)
                })
                .collect::<Result<_>>()?,
        };
        Ok(RunOutput {
            loss: l,
            grads: Some((param_grads, input_grad)),
        })
    }

    /// Gradient checkpointing: the forward pass runs layer by layer keeping only each layer's
    /// input (on the host), then the backward pass goes from the head down, recomputing one
    /// layer's activations at a time from its input and pulling the gradient of its output
    /// through it (the graph's loss is `sum(y ⊙ dL/dy)`, whose gradient is exactly the
    /// incoming one). The head runs over at most [`HEAD_ROWS`] scored rows at a time. The
    /// compute buffer then holds one layer's activations instead of all of them, for about one
    /// more forward pass of time; the gradients are the whole graph's up to rounding.
    fn run_checkpointed(&mut self, seq: &Sequence, loss_scale: f32) -> Result<RunOutput> {
        let cfg = self.model.config();
        let (n_layer, n_embd, n_vocab) = (cfg.n_layer, cfg.n_embd, cfg.n_vocab);
        let scored = seq.picked.len();
        // hidden[l]: the input of layer l (l >= 1), then the last layer's output rows.
        let mut hidden: Vec<Vec<f32>> = vec![Vec::new(); n_layer + 1];
        for il in 0..n_layer {
            let input = (il > 0).then_some(hidden[il].as_slice());
            hidden[il + 1] = self.layer_graph(seq, il, input, None)?.output;
        }
        self.checkpoint_bytes = self
            .checkpoint_bytes
            .max(hidden.iter().map(|h| 4 * h.len()).sum());

        let mut acc = GradAcc {
            grads: self
                .params
                .iter()
                .map(|p| vec![0.0; p.value.len()])
                .collect(),
            seen: vec![false; self.params.len()],
        };

        // The head, a chunk of scored rows at a time: each chunk's mean loss is weighted by its
        // share of the rows, so the chunks sum to the whole sequence's mean.
        let x_last = std::mem::take(&mut hidden[n_layer]);
        let mut g_out = vec![0f32; x_last.len()];
        let mut loss_total = 0f32;
        let mut r0 = 0;
        while r0 < scored {
            let r1 = (r0 + HEAD_ROWS).min(scored);
            let c = r1 - r0;
            let share = c as f32 / scored as f32;
            self.ctx.reset();
            let ctx = &self.ctx;
            let shape = BatchShape {
                n_tokens: c,
                n_kv: c,
                n_out: c,
                embeddings: true,
                input_grad: true,
            };
            let span = llama::Span {
                first: n_layer,
                end: n_layer,
                head: true,
            };
            let set = ActiveAdapters::none();
            let weights = self.exec.weights();
            let (mut gf, inp) = span_graph(&self.model, weights.as_deref(), ctx, &set, shape, span);
            let mut loss = add_loss(ctx, &mut gf, inp.out, loss_scale * share);
            finish_graph(
                ctx,
                &mut gf,
                self.split.as_ref(),
                true,
                &self.cfg,
                Some(&mut loss),
            );
            self.exec.alloc(&gf)?;
            inp.tokens.write_f32(0, &x_last[r0 * n_embd..r1 * n_embd])?;
            seq.write_labels(&loss, n_vocab, r0..r1)?;
            gf.reset_grads();
            self.exec.compute(&gf)?;
            loss_total += loss.value.to_vec_f32()?[0] * share;
            g_out[r0 * n_embd..r1 * n_embd].copy_from_slice(&grad_of(
                &gf,
                inp.tokens,
                "the head's input",
            )?);
            r0 = r1;
        }

        // The layers, last to first: recompute, and pull dL/d(output) back to dL/d(input)
        // (each layer input freed once used).
        let mut input_grad = None;
        for il in (0..n_layer).rev() {
            let input = (il > 0).then(|| std::mem::take(&mut hidden[il]));
            let rows = if il + 1 == n_layer { scored } else { seq.n_seq };
            debug_assert_eq!(g_out.len(), rows * n_embd);
            let out = self.layer_graph(seq, il, input.as_deref(), Some((&g_out, &mut acc)))?;
            match out.input_grad {
                Some(g) if il > 0 => g_out = g,
                g => input_grad = g,
            }
        }
        let param_grads = match seq.embeddings() {
            true => Vec::new(),
            false => {
                if let Some(i) = acc.seen.iter().position(|s| !s) {
                    return Err(Error::InvalidRequest(format!(
                        "no gradient for {}",
                        self.params[i].name
                    )));
                }
                acc.grads
            }
        };
        Ok(RunOutput {
            loss: loss_total,
            grads: Some((param_grads, input_grad)),
        })
    }

    /// Runs layer `il` of `seq` over `input` (its hidden-state input; `None` for layer 0, which
    /// reads the sequence's own input). With `backward = (dL/d output, accumulator)` it also
    /// runs the backward pass, adds the layer's parameter gradients to the accumulator and
    /// returns dL/d input (when the input is a hidden state or LoPA's embeddings).
    fn layer_graph(
        &mut self,
        seq: &Sequence,
        il: usize,
        input: Option<&[f32]>,
        backward: Option<(&[f32], &mut GradAcc)>,
    ) -> Result<LayerOutput> {
        let n_layer = self.model.config().n_layer;
        let last = il + 1 == n_layer;
        let hidden_in = input.is_some() || seq.embeddings();
        let grads = backward.is_some();
        self.ctx.reset();
        let ctx = &self.ctx;
        let shape = BatchShape {
            n_tokens: seq.n_seq,
            n_kv: seq.n_seq,
            n_out: if last { seq.picked.len() } else { seq.n_seq },
            embeddings: hidden_in,
            input_grad: hidden_in && grads,
        };
        let span = llama::Span {
            first: il,
            end: il + 1,
            head: false,
        };
        let weights = self.exec.weights();
        let (mut gf, inp) = span_graph(&self.model, weights.as_deref(), ctx, &seq.set, shape, span);
        let g_out = backward.as_ref().map(|_| {
            let [n0, n1, ..] = inp.out.ne();
            ctx.new_tensor(Type::F32, &[n0, n1]).set_input()
        });
        if let Some(g) = g_out {
            // d/dy sum(y ⊙ g) = g: the incoming gradient, exactly.
            gf.build_forward_expand(ctx.sum(ctx.mul(inp.out, g)).set_loss());
        }
        finish_graph(
            ctx,
            &mut gf,
            self.split.as_ref(),
            g_out.is_some(),
            &self.cfg,
            None,
        );
        self.exec.alloc(&gf)?;
        match input {
            Some(x) => inp.tokens.write_f32(0, x)?,
            None => seq.write_input(inp.tokens)?,
        }
        seq.write_attention(&inp)?;
        if let Some(ids) = inp.out_ids {
            ids.write_i32(0, &seq.rows)?;
        }
        if seq.dropout {
            self.fill_dropout_masks(il..il + 1)?;
        }
        let Some((g, acc)) = backward else {
            self.exec.compute(&gf)?;
            return Ok(LayerOutput {
                output: inp.out.to_vec_f32()?,
                input_grad: None,
            });
        };
        g_out
            .expect("made with the backward pass")
            .write_f32(0, g)?;
        gf.reset_grads();
        self.exec.compute(&gf)?;
        // The graph holds this layer's adapter tensors only: the others have no gradient here.
        for (i, p) in self.params.iter().enumerate() {
            let device = self.exec.device_name().map(|d| &**d);
            let Some(gt) = p.id.and_then(|id| gf.grad(self.adapter.t_on(id, device))) else {
                continue;
            };
            for (a, x) in acc.grads[i].iter_mut().zip(gt.to_vec_f32()?) {
                *a += x;
            }
            acc.seen[i] = true;
        }
        Ok(LayerOutput {
            output: Vec::new(),
            input_grad: match shape.input_grad {
                true => Some(grad_of(&gf, inp.tokens, "a layer's input")?),
                false => None,
            },
        })
    }

    /// Draws the dropout masks of the graph just allocated, seeded by (seed, step, sequence)
    /// so that a resumed run draws the same masks as an uninterrupted one. Each target draws
    /// from its own stream, so a graph of one layer (gradient checkpointing) draws the same
    /// masks as the whole model's graph. `layers`: the layers the graph holds.
    fn fill_dropout_masks(&self, layers: std::ops::Range<usize>) -> Result<()> {
        let p = self.cfg.dropout;
        let keep = 1.0 / (1.0 - p);
        let seed = self.cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ ((self.state.step as u64 + 1) << 24)
            ^ self.micro as u64;
        for t in self.adapter.targets() {
            if !layers.contains(&t.layer) {
                continue;
            }
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(((t.layer as u64) << 8) | t.kind as u64);
            let Some(mask) = self.ctx.get_by_name(&crate::adapter::dropout_mask_name(t)) else {
                continue;
            };
            let values: Vec<f32> = (0..mask.nelements())
                .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
                .collect();
            mask.write_f32(0, &values)?;
        }
        Ok(())
    }

    /// One optimizer step over `examples` (gradient accumulation): loss, clipping, AdamW.
    pub fn step(&mut self, examples: &[Example]) -> Result<StepStats> {
        self.zero_grads();
        let mut loss_sum = 0f64;
        let mut tokens = 0usize;
        for (i, ex) in examples.iter().enumerate() {
            self.micro = i;
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
        let refresh = self
            .cfg
            .galore
            .is_some_and(|gc| (t - 1).is_multiple_of(gc.every.max(1)));
        let device = self.exec.device_name().cloned();
        for p in &mut self.params {
            if let (Some(st), Some(gc)) = (p.galore.as_mut(), self.cfg.galore.as_ref()) {
                if clip != 1.0 {
                    p.grad.iter_mut().for_each(|g| *g *= clip);
                }
                if refresh {
                    st.refresh(&p.grad);
                }
                st.step(
                    &mut p.value,
                    &p.grad,
                    gc,
                    lr,
                    (b1, b2),
                    (bc1, bc2),
                    self.cfg.eps,
                    self.cfg.weight_decay,
                );
            } else {
                for i in 0..p.value.len() {
                    let g = p.grad[i] * clip;
                    p.m[i] = b1 * p.m[i] + (1.0 - b1) * g;
                    p.v[i] = b2 * p.v[i] + (1.0 - b2) * g * g;
                    let update = (p.m[i] / bc1) / ((p.v[i] / bc2).sqrt() + self.cfg.eps);
                    p.value[i] -= lr * (update + self.cfg.weight_decay * p.value[i]);
                }
            }
            if let Some(id) = p.id {
                write_param(&self.adapter, device.as_ref(), id, &p.value)?;
            }
        }
        if self.cfg.method == Method::Lopa {
            self.rebuild_adapter()?;
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
        let file_values: Vec<Vec<f32>> = self
            .params
            .iter()
            .map(|p| match p.transposed {
                // Graph layout is (cols x rows) of the file layout.
                Some((rows, cols)) => transpose(&p.value, cols, rows),
                None => p.value.clone(),
            })
            .collect();
        let tensors = self
            .params
            .iter()
            .zip(&file_values)
            .map(|(p, v)| (p.name.as_str(), p.ne.as_slice(), v.as_slice()));
        let mut w = adapter_file(&self.model, &self.cfg, tensors, Some(&self.state))?;
        if let Some(gc) = &self.cfg.galore {
            w.add_kv("train.galore.rank", Value::U32(gc.rank as u32));
            w.add_kv("train.galore.every", Value::U32(gc.every as u32));
            w.add_kv("train.galore.scale", Value::F32(gc.scale));
        }
        for p in &self.params {
            if let Some(st) = &p.galore {
                galore::write(&mut w, &p.name, st)?;
                continue;
            }
            let n = p.value.len() as u64;
            w.add_tensor_f32(format!("train.adam_m.{}", p.name), &[n], &p.m)?;
            w.add_tensor_f32(format!("train.adam_v.{}", p.name), &[n], &p.v)?;
        }
        w.write_atomic(path)?;
        Ok(())
    }
}

fn validate(cfg: &TrainConfig) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidRequest(m));
    if cfg.method == Method::Diablo && (cfg.blocks == 0 || cfg.blocks > 4096) {
        return bad(format!("blocks {} must be 1..=4096", cfg.blocks));
    }
    if cfg.rank == 0 || cfg.rank > 1024 {
        return bad(format!("rank {} must be 1..=1024", cfg.rank));
    }
    if cfg.method == Method::Lopa && !(1..=1024).contains(&cfg.virtual_tokens) {
        return bad(format!(
            "virtual tokens {} must be 1..=1024",
            cfg.virtual_tokens
        ));
    }
    if !(0.0..1.0).contains(&cfg.dropout) {
        return bad(format!("dropout {} must be in [0, 1)", cfg.dropout));
    }
    if cfg.dropout > 0.0 && !matches!(cfg.method, Method::Lora | Method::Diablo) {
        return bad("dropout on the adapter input applies to lora and diablo".into());
    }
    if let Some(gc) = &cfg.galore {
        if cfg.method != Method::Diablo {
            return bad("GaLore applies to diablo's full-rank blocks".into());
        }
        if gc.every == 0 || !(gc.scale > 0.0 && gc.scale.is_finite()) {
            return bad("GaLore needs every >= 1 and a positive scale".into());
        }
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

/// Writes trained tensor `id`'s new values to the adapter, and to its copy on `device`.
fn write_param(
    adapter: &Adapter,
    device: Option<&Arc<str>>,
    id: graft_ggml::TensorId,
    values: &[f32],
) -> Result<()> {
    adapter.t(id).write_f32(0, values)?;
    if let Some(d) = device {
        adapter.t_on(id, Some(d)).write_f32(0, values)?;
    }
    Ok(())
}

/// The adapter being trained, loaded from an in-memory file of `tensors` (file layout).
fn training_adapter<'a>(
    model: &Model,
    cfg: &TrainConfig,
    tensors: impl Iterator<Item = (&'a str, &'a [u64], &'a [f32])>,
) -> Result<Arc<Adapter>> {
    let file = adapter_file(model, cfg, tensors, None)?;
    Ok(Arc::new(Adapter::from_gguf(
        model,
        Arc::new(Gguf::from_bytes(file.to_bytes()?)?),
        "training".into(),
    )?))
}

/// An adapter file of `cfg.method` holding `tensors` (and the training state, when given).
fn adapter_file<'a>(
    model: &Model,
    cfg: &TrainConfig,
    tensors: impl Iterator<Item = (&'a str, &'a [u64], &'a [f32])>,
    state: Option<&TrainState>,
) -> Result<GgufWriter<'static>> {
    let mut w = GgufWriter::new();
    w.add_kv("general.type", "adapter");
    w.add_kv("general.architecture", model.config().arch.name());
    match cfg.method {
        Method::Lora => {
            w.add_kv("adapter.type", "lora");
            w.add_kv("adapter.lora.alpha", Value::F32(cfg.alpha));
        }
        Method::Wegeft => {
            w.add_kv("adapter.type", "wegeft");
            w.add_kv("adapter.wegeft.alpha", Value::F32(cfg.alpha));
        }
        Method::Diablo => {
            w.add_kv("adapter.type", "diablo");
            w.add_kv("adapter.diablo.blocks", Value::U32(cfg.blocks as u32));
        }
        Method::Lopa => {
            w.add_kv("adapter.type", "lopa");
            w.add_kv(
                "adapter.lopa.virtual_tokens",
                Value::U32(cfg.virtual_tokens as u32),
            );
            w.add_kv("adapter.lopa.rank", Value::U32(cfg.rank as u32));
            w.add_kv("adapter.lopa.encoder", "mean_embed");
        }
    }
    w.add_kv("adapter.base.fingerprint", model.fingerprint());
    w.add_kv("adapter.base.quantization", model.quantization());
    for (name, ne, v) in tensors {
        w.add_tensor_f32(name, ne, v)?;
    }
    if let Some(s) = state {
        s.write(&mut w, cfg);
    }
    Ok(w)
}

/// How many leading tokens of `ex` are the prompt LoPA's encoder sees: the tokens before the
/// first scored one, or, when nothing precedes it (plain text), the first `fallback` tokens
/// (at most half of the example).
fn lopa_prompt_len(ex: &Example, fallback: usize) -> usize {
    let first = (1..ex.tokens.len())
        .find(|&t| ex.mask[t])
        .unwrap_or(ex.tokens.len());
    if first > 1 {
        first
    } else {
        fallback.clamp(1, (ex.tokens.len() / 2).max(1))
    }
}

/// LoPA's initial tensors: Z_S rows are the embeddings of `m` random vocabulary tokens (the
/// usual prompt-tuning start), encoder layers as PyTorch's `nn.Linear` (weights and biases
/// uniform in ±1/sqrt(fan_in)).
fn lopa_init(model: &Model, cfg: &TrainConfig, rng: &mut ChaCha8Rng) -> Result<Vec<FileTensor>> {
    let (d, m, r) = (model.config().n_embd, cfg.virtual_tokens, cfg.rank);
    if r > d {
        return Err(Error::InvalidRequest(format!(
            "LoPA rank {r} must be at most n_embd {d}"
        )));
    }
    let mut z = Vec::with_capacity(m * d);
    for _ in 0..m {
        let tok = rng.random_range(0..model.config().n_vocab as u32);
        z.extend(model.embedding_row(tok)?);
    }
    let mut out = vec![("lopa.z_shared".to_string(), vec![d as u64, m as u64], z)];
    for (enc, n_out) in [("u", m * r), ("v", d * r)] {
        for (layer, n_in, n_o) in [("fc1", d, d), ("fc2", d, n_out)] {
            let bound = 1.0 / (n_in as f32).sqrt();
            let mut uniform = |n: usize| -> Vec<f32> {
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            let w = uniform(n_in * n_o);
            let b = uniform(n_o);
            out.push((
                format!("lopa.{enc}.{layer}.weight"),
                vec![n_in as u64, n_o as u64],
                w,
            ));
            out.push((format!("lopa.{enc}.{layer}.bias"), vec![n_o as u64], b));
        }
    }
    Ok(out)
}
