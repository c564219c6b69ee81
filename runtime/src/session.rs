//! A session: one conversation's KV cache, active adapters and compute state over a shared
//! [`Model`].
//!
//! Sessions are independent: each owns its KV cache, graph context, compute buffer, backend
//! handle and adapter set, so several can run on one model from different threads without
//! seeing each other's adapters or scales.

use std::sync::Arc;

use crate::adapter::lopa::mean_embedding;
use crate::adapter::ActiveAdapters;
use crate::compute::{BackendReport, Compute, ExecConfig};
use crate::error::{Error, Result};
use crate::model::layers::RowAdapters;
use crate::model::llama::BatchShape;
use crate::model::Model;
use graft_ggml::BackendChoice;

/// Session settings.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Context length (KV cache positions).
    pub n_ctx: usize,
    /// Largest number of tokens evaluated in one graph (prompt processing).
    pub n_batch: usize,
    /// CPU threads.
    pub n_threads: usize,
    /// Use ggml's flash-attention kernel instead of matmul + softmax attention.
    pub flash_attn: bool,
    /// Keep the KV cache in F32 instead of F16 (exact, twice the memory; not with flash
    /// attention).
    pub kv_f32: bool,
    /// The backend graphs run on (`Auto`: a GPU of ggml's CUDA, Metal or Vulkan backends, else
    /// the CPU; wgpu only when named; a backend without a device in this build is an error
    /// naming those it has).
    pub backend: BackendChoice,
    /// On the CPU, run the weights ggml has repacked kernels for (Q4_0 on AVX2 and Arm, Q4_K,
    /// IQ4_NL) from a repacked copy, as llama.cpp does by default (its extra buffer types):
    /// faster (SmolLM2 Q4_0: prefill 1.4x and decode 1.2x on an AVX-512 Xeon, 1.2x and 1.3x
    /// with AVX2 only), made once per model and shared, and those weights' pages of the map are
    /// given back. Off by default: the repacked kernels compute the products another way
    /// (SmolLM2 Q4_0 logits move by up to 0.8), so graft's tokens then follow llama.cpp with its
    /// extra buffer types, not the plain configuration the correctness references are made in.
    pub cpu_repack: bool,
    /// On a device backend, put only the last `n` layers' weights on the device (llama.cpp's
    /// `-ngl`): the other layers' products run on the CPU from the map, as ggml's scheduler
    /// assigns nodes to the backend holding their weights. More than the model's layer count
    /// also puts the embeddings and output layer there; `None` (the default) puts every
    /// weight there. The KV cache stays on the device. No effect on the CPU backend.
    pub gpu_layers: Option<usize>,
    /// Run the last graph again when the next batch has the same shape and adapters (one-token
    /// decoding), instead of building and allocating it anew, as llama.cpp does; CPU only. On
    /// by default; off only to compare (the logits are the same either way).
    pub reuse_graphs: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            n_ctx: 2048,
            n_batch: 512,
            n_threads: default_threads(),
            flash_attn: false,
            kv_f32: false,
            backend: BackendChoice::Auto,
            cpu_repack: false,
            gpu_layers: None,
            reuse_graphs: true,
        }
    }
}

/// The number of threads used when none is given: the available cores, at most 8.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .min(8)
}

/// Which positions of a batch need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsFor {
    /// Only the last token of the batch (generation).
    Last,
    /// Every token (perplexity, training evaluation).
    All,
}

/// What an adapter switch did to the session's cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdapterSwitch {
    /// The cached positions were computed with other adapters and will be recomputed (on the
    /// next decode, in one batch) before new tokens are evaluated.
    pub cache_invalidated: bool,
    /// How many cached tokens that recomputation covers.
    pub tokens_to_recompute: usize,
}

/// Padding of the attended cache length, so that graphs keep one shape across many decode
/// steps (llama.cpp pads the same way).
pub(crate) const N_KV_PAD: usize = 256;

/// One conversation's state.
pub struct Session {
    model: Arc<Model>,
    cfg: SessionConfig,
    c: Compute,
    adapters: ActiveAdapters,
    /// The adapters the cached positions were computed with.
    cache_adapters: ActiveAdapters,
    tokens: Vec<u32>,
    /// Soft-prompt positions at the start of the cache (LoPA).
    n_soft: usize,
    /// How many leading tokens of `tokens` were the prompt the soft prompt was made from.
    soft_source_len: usize,
}

/// One batch to evaluate.
enum Batch<'b> {
    Tokens(&'b [u32]),
    /// Input embeddings, `n_embd` per position.
    Embeddings(&'b [f32]),
}

impl Session {
    /// A new empty session on `model` with no adapter.
    pub fn new(model: Arc<Model>, cfg: SessionConfig) -> Result<Self> {
        if cfg.n_ctx == 0 || cfg.n_batch == 0 || cfg.n_threads == 0 {
            return Err(Error::InvalidRequest(
                "n_ctx, n_batch and n_threads must be positive".into(),
            ));
        }
        let c = Compute::new(
            &model,
            cfg.n_ctx,
            cfg.n_threads,
            cfg.flash_attn,
            cfg.kv_f32,
            ExecConfig {
                backend: cfg.backend,
                gpu_layers: cfg.gpu_layers,
                cpu_repack: cfg.cpu_repack,
                reuse_graphs: cfg.reuse_graphs,
            },
        )?;
        Ok(Self {
            model,
            cfg,
            c,
            adapters: ActiveAdapters::none(),
            cache_adapters: ActiveAdapters::none(),
            tokens: Vec::new(),
            n_soft: 0,
            soft_source_len: 0,
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Settings.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Tokens currently in the KV cache, in order (soft-prompt positions not included).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Soft-prompt positions at the start of the cache.
    pub fn soft_prompt_len(&self) -> usize {
        self.n_soft
    }

    /// Positions still free in the context.
    pub fn remaining(&self) -> usize {
        self.cfg.n_ctx - self.n_past()
    }

    fn n_past(&self) -> usize {
        self.n_soft + self.tokens.len()
    }

    /// Whether cached positions were computed with other adapters than the active ones (and
    /// so are recomputed by the next decode instead of reused).
    pub fn cache_is_stale(&self) -> bool {
        self.n_past() > 0 && !self.adapters.same_as(&self.cache_adapters)
    }

    /// The active adapters.
    pub fn adapters(&self) -> &ActiveAdapters {
        &self.adapters
    }

    /// Activates `set` (empty: the base model). Cached positions computed with another set are
    /// recomputed with the new one on the next decode; the base is never touched.
    pub fn set_adapters(&mut self, set: ActiveAdapters) -> Result<AdapterSwitch> {
        set.check_base(&self.model)?;
        self.c.reserve(&self.model, set.len())?;
        self.adapters = set;
        let stale = self.cache_is_stale();
        Ok(AdapterSwitch {
            cache_invalidated: stale,
            tokens_to_recompute: if stale { self.tokens.len() } else { 0 },
        })
    }

    /// Forgets everything (the cache is overwritten lazily).
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.n_soft = 0;
        self.soft_source_len = 0;
    }

    /// Drops cached positions from token `n` on (e.g. to re-run a changed suffix).
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
        self.soft_source_len = self.soft_source_len.min(n);
    }

    /// Sets the number of CPU threads (the most used; see [`Session::set_adaptive_threads`]).
    pub fn set_threads(&mut self, n: usize) {
        self.cfg.n_threads = n.max(1);
        self.c.exec.cpu_mut().set_threads(self.cfg.n_threads);
    }

    /// Whether fewer threads run while other processes keep cores busy (on by default unless
    /// `GRAFT_ADAPTIVE_THREADS=0`; see `graft_ggml::threads`). Results do not depend on it.
    pub fn set_adaptive_threads(&mut self, on: bool) {
        self.c.exec.cpu_mut().set_adaptive_threads(on);
    }

    /// The number of threads the last evaluation ran with.
    pub fn threads_in_use(&self) -> usize {
        self.c.exec.cpu().threads()
    }

    /// Where this session's graphs ran: backend, device and node counts so far.
    pub fn backend_report(&self) -> BackendReport {
        self.c.exec.report()
    }

    /// Appends `tokens` to the context and evaluates them in batches of `n_batch`.
    /// Returns the logits (`n_vocab` per row) for the last token or for every token.
    ///
    /// With a LoPA adapter active, the first call on an empty session treats `tokens` as the
    /// prompt: its soft prompt is computed from them and placed before them.
    pub fn decode(&mut self, tokens: &[u32], which: LogitsFor) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::InvalidRequest("nothing to decode: no tokens".into()));
        }
        let n_vocab = self.model.config().n_vocab;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary (n_vocab {n_vocab})"
            )));
        }
        // Recompute a cache made with other adapters.
        if self.cache_is_stale() {
            let history = std::mem::take(&mut self.tokens);
            let src = self.soft_source_len;
            self.clear();
            self.cache_adapters = self.adapters.clone();
            if !history.is_empty() {
                self.start(&history[..src.max(1).min(history.len())])?;
                let done = self.tokens.len();
                self.eval_tokens(&history[done..], Want::None)?;
            }
        }
        self.cache_adapters = self.adapters.clone();
        let soft = if self.n_past() == 0 {
            self.soft_prompt(tokens)?
        } else {
            Vec::new()
        };
        let n_soft = soft.len() / self.model.config().n_embd;
        if n_soft + tokens.len() > self.remaining() {
            return Err(Error::ContextFull {
                cached: self.n_past(),
                new: n_soft + tokens.len(),
                n_ctx: self.cfg.n_ctx,
            });
        }
        if n_soft > 0 {
            self.eval_soft(&soft)?;
            self.soft_source_len = tokens.len();
        } else if self.tokens.is_empty() {
            self.soft_source_len = tokens.len();
        }
        self.eval_tokens(
            tokens,
            match which {
                LogitsFor::Last => Want::Last,
                LogitsFor::All => Want::All,
            },
        )
    }

    /// First evaluation on an empty cache: soft prompt (if any) from `prompt`, then `prompt`.
    fn start(&mut self, prompt: &[u32]) -> Result<()> {
        let soft = self.soft_prompt(prompt)?;
        if !soft.is_empty() {
            self.eval_soft(&soft)?;
        }
        self.soft_source_len = prompt.len();
        self.eval_tokens(prompt, Want::None)?;
        Ok(())
    }

    /// The soft prompt of every active LoPA adapter for `prompt`, concatenated.
    fn soft_prompt(&self, prompt: &[u32]) -> Result<Vec<f32>> {
        if !self.adapters.has_soft_prompt() {
            return Ok(Vec::new());
        }
        let e = mean_embedding(&self.model, prompt)?;
        let mut z = Vec::new();
        for (a, s) in self.adapters.iter() {
            if let Some(l) = a.lopa() {
                z.extend(l.soft_prompt(&e, s));
            }
        }
        Ok(z)
    }

    fn eval_soft(&mut self, z: &[f32]) -> Result<()> {
        let n_embd = self.model.config().n_embd;
        let mut sink = Vec::new();
        for chunk in z.chunks(self.cfg.n_batch * n_embd) {
            self.eval_batch(Batch::Embeddings(chunk), 0, &mut sink)?;
            self.n_soft += chunk.len() / n_embd;
        }
        Ok(())
    }

    fn eval_tokens(&mut self, tokens: &[u32], want: Want) -> Result<Vec<f32>> {
        let n_vocab = self.model.config().n_vocab;
        let mut logits = Vec::with_capacity(match want {
            Want::None => 0,
            Want::Last => n_vocab,
            Want::All => n_vocab * tokens.len(),
        });
        let n_chunks = tokens.len().div_ceil(self.cfg.n_batch);
        for (i, chunk) in tokens.chunks(self.cfg.n_batch).enumerate() {
            let n_out = match want {
                Want::All => chunk.len(),
                Want::Last if i + 1 == n_chunks => 1,
                _ => 0,
            };
            self.eval_batch(Batch::Tokens(chunk), n_out, &mut logits)?;
            self.tokens.extend_from_slice(chunk);
        }
        Ok(logits)
    }

    /// Evaluates one batch, appending the logits of its last `n_out` positions to `out`.
    fn eval_batch(&mut self, batch: Batch<'_>, n_out: usize, out: &mut Vec<f32>) -> Result<()> {
        let n_embd = self.model.config().n_embd;
        let n = match batch {
            Batch::Tokens(t) => t.len(),
            Batch::Embeddings(e) => e.len() / n_embd,
        };
        let p0 = self.n_past();
        let n_ctx = self.cfg.n_ctx;
        let n_kv = (p0 + n)
            .div_ceil(N_KV_PAD)
            .saturating_mul(N_KV_PAD)
            .min(n_ctx);
        let shape = BatchShape {
            n_tokens: n,
            n_kv,
            // Even when no logits are wanted, the graph computes one row (cheap).
            n_out: n_out.max(1),
            embeddings: matches!(batch, Batch::Embeddings(_)),
            input_grad: false,
        };
        self.fill_scratch(&batch, p0, shape);
        let n_vocab = self.model.config().n_vocab;
        self.c.run(
            &self.model,
            RowAdapters::All(&self.adapters),
            shape,
            None,
            |inp| {
                if n_out > 0 {
                    let start = out.len();
                    out.resize(start + n_out * n_vocab, 0.0);
                    let skip = shape.n_out - n_out;
                    inp.out.read_f32(skip * n_vocab, &mut out[start..])?;
                }
                Ok(())
            },
        )
    }

    fn fill_scratch(&mut self, batch: &Batch<'_>, p0: usize, shape: BatchShape) {
        let s = &mut self.c.scratch;
        let n = shape.n_tokens;
        let n_kv = shape.n_kv;
        s.tokens.clear();
        s.embd.clear();
        match batch {
            Batch::Tokens(t) => s.tokens.extend(t.iter().map(|&t| t as i32)),
            Batch::Embeddings(e) => s.embd.extend_from_slice(e),
        }
        s.pos.clear();
        s.pos.extend((p0..p0 + n).map(|p| p as i32));
        s.k_idx.clear();
        s.k_idx.extend((p0..p0 + n).map(|p| p as i64));
        // Causal mask: token t (at p0 + t) sees cache positions 0 ..= p0 + t.
        s.mask_f32.clear();
        s.mask_f32.resize(n_kv * n, f32::NEG_INFINITY);
        for t in 0..n {
            let row = &mut s.mask_f32[t * n_kv..(t + 1) * n_kv];
            row[..=(p0 + t)].fill(0.0);
        }
        s.out_ids.clear();
        s.out_ids.extend(((n - shape.n_out)..n).map(|i| i as i32));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    None,
    Last,
    All,
}
