//! A session: one conversation's KV cache and compute state over a shared [`Model`].
//!
//! Sessions are independent: each owns its KV cache, graph context, compute buffer and
//! backend handle, so several can run on one model from different threads.

use std::sync::Arc;

use graft_ggml::{Backend, Context, GraphAllocator};
use half::f16;

use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model::llama::{self, BatchShape, GraphInputs};
use crate::model::Model;

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
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            n_ctx: 2048,
            n_batch: 512,
            n_threads: default_threads(),
            flash_attn: false,
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

/// Padding of the attended cache length, so that graphs keep one shape across many decode
/// steps (llama.cpp pads the same way).
const N_KV_PAD: usize = 256;

/// One conversation's state.
pub struct Session {
    model: Arc<Model>,
    cfg: SessionConfig,
    backend: Backend,
    alloc: GraphAllocator,
    graph_ctx: Context,
    kv: KvCache,
    tokens: Vec<u32>,
    // Reused input staging (no allocation per token once warm).
    scratch: Scratch,
}

#[derive(Default)]
struct Scratch {
    tokens: Vec<i32>,
    pos: Vec<i32>,
    mask_f32: Vec<f32>,
    mask_f16: Vec<u16>,
    k_idx: Vec<i64>,
    v_idx: Vec<i64>,
    out_ids: Vec<i32>,
}

impl Session {
    /// A new empty session on `model`.
    pub fn new(model: Arc<Model>, cfg: SessionConfig) -> Result<Self> {
        if cfg.n_ctx == 0 || cfg.n_batch == 0 {
            return Err(Error::InvalidRequest(
                "n_ctx and n_batch must be positive".into(),
            ));
        }
        let backend = Backend::cpu(cfg.n_threads)?;
        let kv = KvCache::new(model.config(), cfg.n_ctx, cfg.flash_attn, &backend)?;
        let graph_ctx = Context::new(llama::max_nodes(&model) + 64, llama::max_nodes(&model))?;
        let alloc = GraphAllocator::new(&backend)?;
        Ok(Self {
            model,
            cfg,
            backend,
            alloc,
            graph_ctx,
            kv,
            tokens: Vec::new(),
            scratch: Scratch::default(),
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

    /// Tokens currently in the KV cache, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Positions still free in the context.
    pub fn remaining(&self) -> usize {
        self.cfg.n_ctx - self.tokens.len()
    }

    /// Forgets everything (the cache is overwritten lazily).
    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    /// Drops cached positions from `n` on (e.g. to re-run a changed suffix).
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
    }

    /// Sets the number of CPU threads.
    pub fn set_threads(&mut self, n: usize) {
        self.cfg.n_threads = n.max(1);
        self.backend.set_threads(self.cfg.n_threads);
    }

    /// Appends `tokens` to the context and evaluates them in batches of `n_batch`.
    /// Returns the logits (`n_vocab` per row) for the last token or for every token.
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
        if tokens.len() > self.remaining() {
            return Err(Error::InvalidRequest(format!(
                "context full: {} tokens cached + {} new > n_ctx {}",
                self.tokens.len(),
                tokens.len(),
                self.cfg.n_ctx
            )));
        }
        let mut logits = Vec::with_capacity(match which {
            LogitsFor::Last => n_vocab,
            LogitsFor::All => n_vocab * tokens.len(),
        });
        let chunks: Vec<&[u32]> = tokens.chunks(self.cfg.n_batch).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let n_out = match which {
                LogitsFor::All => chunk.len(),
                LogitsFor::Last if i + 1 == chunks.len() => 1,
                LogitsFor::Last => 0,
            };
            self.eval_batch(chunk, n_out, &mut logits)?;
        }
        Ok(logits)
    }

    /// Evaluates one batch, appending the logits of its last `n_out` tokens to `out`.
    fn eval_batch(&mut self, batch: &[u32], n_out: usize, out: &mut Vec<f32>) -> Result<()> {
        let n = batch.len();
        let p0 = self.tokens.len();
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
        };
        self.fill_scratch(batch, p0, shape);

        self.graph_ctx.reset();
        let (graph, inp) = llama::build(&self.model, &self.kv, &self.graph_ctx, shape);
        self.alloc.alloc(&graph)?;
        set_inputs(&inp, &self.scratch, self.kv.v_trans())?;
        self.backend.compute(&graph)?;
        if n_out > 0 {
            let n_vocab = self.model.config().n_vocab;
            let start = out.len();
            out.resize(start + n_out * n_vocab, 0.0);
            let skip = shape.n_out - n_out;
            inp.logits.read_f32(skip * n_vocab, &mut out[start..])?;
        }
        self.tokens.extend_from_slice(batch);
        Ok(())
    }

    fn fill_scratch(&mut self, batch: &[u32], p0: usize, shape: BatchShape) {
        let s = &mut self.scratch;
        let n = batch.len();
        let n_kv = shape.n_kv;
        s.tokens.clear();
        s.tokens.extend(batch.iter().map(|&t| t as i32));
        s.pos.clear();
        s.pos.extend((p0..p0 + n).map(|p| p as i32));
        s.k_idx.clear();
        s.k_idx.extend((p0..p0 + n).map(|p| p as i64));
        s.v_idx.clear();
        if self.kv.v_trans() {
            // Element (c, t) of V [n_embd_kv, n] goes to cache element c * n_ctx + pos_t.
            let n_embd_kv = self.kv.n_embd_kv();
            let n_ctx = self.kv.n_ctx() as i64;
            for t in 0..n {
                for c in 0..n_embd_kv {
                    s.v_idx.push(c as i64 * n_ctx + (p0 + t) as i64);
                }
            }
        } else {
            s.v_idx.extend((p0..p0 + n).map(|p| p as i64));
        }
        // Causal mask: token t (at p0 + t) sees cache positions 0 ..= p0 + t.
        s.mask_f32.clear();
        s.mask_f32.resize(n_kv * n, f32::NEG_INFINITY);
        for t in 0..n {
            let row = &mut s.mask_f32[t * n_kv..(t + 1) * n_kv];
            row[..=(p0 + t)].fill(0.0);
        }
        if !self.kv.v_trans() {
            s.mask_f16.clear();
            s.mask_f16
                .extend(s.mask_f32.iter().map(|&x| f16::from_f32(x).to_bits()));
        }
        s.out_ids.clear();
        s.out_ids.extend(((n - shape.n_out)..n).map(|i| i as i32));
    }
}

fn set_inputs(inp: &GraphInputs<'_>, s: &Scratch, v_trans: bool) -> Result<()> {
    inp.tokens.write_i32(0, &s.tokens)?;
    inp.attn.pos.write_i32(0, &s.pos)?;
    inp.attn.k_idx.write_i64(0, &s.k_idx)?;
    inp.attn.v_idx.write_i64(0, &s.v_idx)?;
    if v_trans {
        inp.attn.mask.write_f32(0, &s.mask_f32)?;
    } else {
        let bytes: Vec<u8> = s.mask_f16.iter().flat_map(|b| b.to_le_bytes()).collect();
        inp.attn.mask.write_bytes(0, &bytes)?;
    }
    if let Some(ids) = inp.out_ids {
        ids.write_i32(0, &s.out_ids)?;
    }
    Ok(())
}
