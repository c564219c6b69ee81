//! Batched decoding of many sequences, each with its own adapters (S-LoRA-style heterogeneous
//! batching), over one shared KV cache.
//!
//! Every [`BatchDecoder::step`] evaluates the next tokens of any number of sequences in one
//! graph: prompt chunks and single decode tokens mixed (continuous batching). The rows of the
//! batch are grouped by adapter set; every linear layer runs the base matmul once over all
//! rows and each set's deltas on its rows only (`RowAdapters::Groups`), so the weights are read
//! once per step whatever the mix of adapters.
//!
//! The KV cache holds one region (slot) of `n_ctx_seq` cells per sequence; a sequence's
//! position `p` is cell `slot · n_ctx_seq + p`. In each layer every sequence's rows attend over
//! their own region only, with the same shapes, padding and mask a [`Session`] uses, so each
//! sequence's logits are bitwise those of the same sequence decoded alone (with quantized
//! activations even a last-bit difference would move them by tenths), and no row pays for the
//! other sequences' cache. Removing a sequence frees its slot.
//! A LoPA sequence's soft prompt is evaluated at its first step, in a graph of its own (its
//! rows are embeddings, not tokens); after that it batches like any other.
//!
//! [`Session`]: crate::Session

use std::sync::Arc;

use crate::adapter::lopa::mean_embedding;
use crate::adapter::ActiveAdapters;
use crate::compute::{Compute, ExecConfig};
use crate::error::{Error, Result};
use crate::model::layers::{AttnPiece, RowAdapters, RowGroup};
use crate::model::llama::BatchShape;
use crate::model::Model;
use crate::session::N_KV_PAD;
use graft_ggml::BackendChoice;

/// Settings of a [`BatchDecoder`].
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Most sequences at once (KV cache slots).
    pub n_seq_max: usize,
    /// Positions per sequence (the context length of each; rounded up to a multiple of 256).
    pub n_ctx_seq: usize,
    /// Most rows (tokens) one graph evaluates; longer work is split over several graphs.
    pub n_batch: usize,
    /// CPU threads.
    pub n_threads: usize,
    /// Use ggml's flash-attention kernel.
    pub flash_attn: bool,
    /// Keep the KV cache in F32.
    pub kv_f32: bool,
    /// Run the weights ggml has repacked CPU kernels for from a repacked copy (see
    /// [`SessionConfig::cpu_repack`](crate::SessionConfig::cpu_repack)).
    pub cpu_repack: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            n_seq_max: 8,
            n_ctx_seq: 2048,
            n_batch: 512,
            n_threads: crate::session::default_threads(),
            flash_attn: false,
            kv_f32: false,
            cpu_repack: false,
        }
    }
}

/// A sequence of a [`BatchDecoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqId(u64);

struct Sequence {
    id: SeqId,
    adapters: ActiveAdapters,
    /// Its KV cache region.
    slot: usize,
    /// Positions held (soft prompt included).
    len: usize,
}

/// Many sequences, each with its own adapters, decoded together over one model.
pub struct BatchDecoder {
    model: Arc<Model>,
    cfg: BatchConfig,
    c: Compute,
    slots: Vec<bool>,
    seqs: Vec<Sequence>,
    next_id: u64,
}

/// One run of rows in a graph: `tokens` of sequence `seq` (an index into `seqs`), whose
/// logits are wanted for the last row when `out` is set.
struct Piece<'t> {
    seq: usize,
    tokens: &'t [u32],
    out: Option<usize>,
}

impl BatchDecoder {
    /// A decoder over `model` with room for `n_seq_max` sequences of `n_ctx_seq` positions.
    pub fn new(model: Arc<Model>, mut cfg: BatchConfig) -> Result<Self> {
        if cfg.n_seq_max == 0 || cfg.n_ctx_seq == 0 || cfg.n_batch == 0 || cfg.n_threads == 0 {
            return Err(Error::InvalidRequest(
                "n_seq_max, n_ctx_seq, n_batch and n_threads must be positive".into(),
            ));
        }
        cfg.n_ctx_seq = cfg.n_ctx_seq.div_ceil(N_KV_PAD) * N_KV_PAD;
        let cells = cfg
            .n_seq_max
            .checked_mul(cfg.n_ctx_seq)
            .ok_or_else(|| Error::InvalidRequest("n_seq_max x n_ctx_seq overflows".into()))?;
        let c = Compute::new(
            &model,
            cells,
            cfg.n_threads,
            cfg.flash_attn,
            cfg.kv_f32,
            ExecConfig {
                backend: BackendChoice::Auto,
                gpu_layers: None,
                cpu_repack: cfg.cpu_repack,
                reuse_graphs: false,
            },
        )?;
        Ok(Self {
            slots: vec![false; cfg.n_seq_max],
            model,
            cfg,
            c,
            seqs: Vec::new(),
            next_id: 0,
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The settings (`n_ctx_seq` rounded up).
    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    /// Starts an empty sequence that will run with `adapters` (empty: the base model).
    /// Fails when all `n_seq_max` slots are taken.
    pub fn add_sequence(&mut self, adapters: ActiveAdapters) -> Result<SeqId> {
        adapters.check_base(&self.model)?;
        let slot = self.slots.iter().position(|used| !used).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "all {} sequence slots are in use",
                self.cfg.n_seq_max
            ))
        })?;
        self.slots[slot] = true;
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.seqs.push(Sequence {
            id,
            adapters,
            slot,
            len: 0,
        });
        Ok(id)
    }

    /// Ends a sequence and frees its cache slot; false if there was no such sequence.
    pub fn remove_sequence(&mut self, id: SeqId) -> bool {
        let Some(i) = self.seqs.iter().position(|s| s.id == id) else {
            return false;
        };
        let s = self.seqs.swap_remove(i);
        self.slots[s.slot] = false;
        true
    }

    /// Running sequences.
    pub fn n_sequences(&self) -> usize {
        self.seqs.len()
    }

    /// Positions a sequence holds (soft prompt included), or `None` for an unknown id.
    pub fn seq_len(&self, id: SeqId) -> Option<usize> {
        self.seqs.iter().find(|s| s.id == id).map(|s| s.len)
    }

    /// Appends `tokens` to each named sequence and evaluates them all, in as few graphs as
    /// `n_batch` allows. Returns, for each entry in order, the logits (`n_vocab`) after its
    /// last token. A step refused for its input (an unknown or repeated sequence, no tokens, a
    /// token outside the vocabulary, a sequence's context full) changes nothing.
    pub fn step(&mut self, work: &[(SeqId, &[u32])]) -> Result<Vec<Vec<f32>>> {
        let n_vocab = self.model.config().n_vocab;
        let mut idx = Vec::with_capacity(work.len());
        let mut soft: Vec<(usize, Vec<f32>)> = Vec::new();
        for (k, &(id, tokens)) in work.iter().enumerate() {
            let i = self
                .seqs
                .iter()
                .position(|s| s.id == id)
                .ok_or_else(|| Error::InvalidRequest(format!("no sequence {id:?}")))?;
            if work[..k].iter().any(|(other, _)| *other == id) {
                return Err(Error::InvalidRequest(format!(
                    "sequence {id:?} appears twice in one step"
                )));
            }
            if tokens.is_empty() {
                return Err(Error::InvalidRequest(format!(
                    "nothing to decode for sequence {id:?}: no tokens"
                )));
            }
            if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
                return Err(Error::InvalidRequest(format!(
                    "token id {bad} is outside the vocabulary (n_vocab {n_vocab})"
                )));
            }
            let seq = &self.seqs[i];
            let mut new = tokens.len();
            if seq.len == 0 && seq.adapters.has_soft_prompt() {
                let e = mean_embedding(&self.model, tokens)?;
                let mut z = Vec::new();
                for (a, s) in seq.adapters.iter() {
                    if let Some(l) = a.lopa() {
                        z.extend(l.soft_prompt(&e, s));
                    }
                }
                new += z.len() / self.model.config().n_embd;
                soft.push((i, z));
            }
            if seq.len + new > self.cfg.n_ctx_seq {
                return Err(Error::ContextFull {
                    cached: seq.len,
                    new,
                    n_ctx: self.cfg.n_ctx_seq,
                });
            }
            idx.push(i);
        }
        // Soft prompts first, each in a graph of its own (embedding rows).
        for (i, z) in &soft {
            let n_embd = self.model.config().n_embd;
            for chunk in z.chunks(self.cfg.n_batch * n_embd) {
                self.eval(&[], Some((*i, chunk)), &mut Vec::new())?;
            }
        }
        // Then every entry's tokens, split into graphs of at most n_batch rows; an entry's
        // logits come from the graph that holds its last token.
        let mut pieces: Vec<Piece<'_>> = Vec::new();
        for (k, (&i, &(_, tokens))) in idx.iter().zip(work).enumerate() {
            let n_chunks = tokens.len().div_ceil(self.cfg.n_batch);
            for (c, chunk) in tokens.chunks(self.cfg.n_batch).enumerate() {
                pieces.push(Piece {
                    seq: i,
                    tokens: chunk,
                    out: (c + 1 == n_chunks).then_some(k),
                });
            }
        }
        let mut out = vec![Vec::new(); work.len()];
        let mut graph: Vec<Piece<'_>> = Vec::new();
        let mut rows = 0;
        for p in pieces {
            // A sequence appears once per graph (its next piece starts where this one ends).
            if rows + p.tokens.len() > self.cfg.n_batch || graph.iter().any(|q| q.seq == p.seq) {
                self.eval(&graph, None, &mut out)?;
                graph.clear();
                rows = 0;
            }
            rows += p.tokens.len();
            graph.push(p);
        }
        if !graph.is_empty() {
            self.eval(&graph, None, &mut out)?;
        }
        Ok(out)
    }

    /// Evaluates one graph: `pieces` (token rows), or one sequence's soft-prompt embeddings.
    /// Logits of the pieces that want them go to `out[piece.out]`.
    fn eval(
        &mut self,
        pieces: &[Piece<'_>],
        soft: Option<(usize, &[f32])>,
        out: &mut [Vec<f32>],
    ) -> Result<()> {
        let n_embd = self.model.config().n_embd;
        let n_vocab = self.model.config().n_vocab;
        // Rows grouped by adapter set (contiguous per group), pieces in their order within.
        let mut groups: Vec<(ActiveAdapters, Vec<usize>)> = Vec::new();
        let entries: Vec<(usize, usize)> = match soft {
            Some((i, z)) => vec![(i, z.len() / n_embd)],
            None => pieces.iter().map(|p| (p.seq, p.tokens.len())).collect(),
        };
        for (k, &(i, _)) in entries.iter().enumerate() {
            let set = &self.seqs[i].adapters;
            match groups.iter_mut().find(|(g, _)| g.same_as(set)) {
                Some((_, members)) => members.push(k),
                None => groups.push((set.clone(), vec![k])),
            }
        }
        let order: Vec<usize> = groups.iter().flat_map(|(_, m)| m.clone()).collect();
        let mut row_groups = Vec::with_capacity(groups.len());
        let mut start = 0;
        for (set, members) in groups {
            let len: usize = members.iter().map(|&k| entries[k].1).sum();
            row_groups.push(RowGroup {
                adapters: set,
                start,
                len,
            });
            start += len;
        }
        let n = start;

        // Inputs: rows in group order; each entry's rows are one attention piece over its
        // sequence's region, masked as a session masks it.
        let s = &mut self.c.scratch;
        s.tokens.clear();
        s.embd.clear();
        s.pos.clear();
        s.k_idx.clear();
        s.mask_f32.clear();
        let mut attn = Vec::with_capacity(order.len());
        let mut outs: Vec<(usize, usize)> = Vec::new(); // (row, out slot)
        let mut row = 0;
        for &k in &order {
            let (i, len) = entries[k];
            let seq = &self.seqs[i];
            let p0 = seq.len;
            let cell0 = seq.slot * self.cfg.n_ctx_seq;
            let n_kv = (p0 + len)
                .div_ceil(N_KV_PAD)
                .saturating_mul(N_KV_PAD)
                .min(self.cfg.n_ctx_seq);
            attn.push(AttnPiece {
                row_start: row,
                rows: len,
                cell_start: cell0,
                n_kv,
                mask_offset: s.mask_f32.len(),
            });
            for t in 0..len {
                s.pos.push((p0 + t) as i32);
                s.k_idx.push((cell0 + p0 + t) as i64);
                let m = s.mask_f32.len();
                s.mask_f32.resize(m + n_kv, f32::NEG_INFINITY);
                s.mask_f32[m..=m + p0 + t].fill(0.0);
            }
            match soft {
                Some((_, z)) => s.embd.extend_from_slice(z),
                None => {
                    let p = &pieces[k];
                    s.tokens.extend(p.tokens.iter().map(|&t| t as i32));
                    if let Some(slot) = p.out {
                        outs.push((row + len - 1, slot));
                    }
                }
            }
            row += len;
        }
        let n_kv = attn.iter().map(|p| p.n_kv).max().unwrap_or(N_KV_PAD);
        let n_out = outs.len().max(1);
        s.out_ids.clear();
        if outs.is_empty() {
            s.out_ids.push(n as i32 - 1);
        } else {
            s.out_ids.extend(outs.iter().map(|&(r, _)| r as i32));
        }
        let shape = BatchShape {
            n_tokens: n,
            n_kv,
            n_out,
            embeddings: soft.is_some(),
            input_grad: false,
        };
        // The rows kept for logits, grouped the same way (outputs are in row order).
        let out_rows: Vec<usize> = if n_out == n {
            (0..n).collect()
        } else {
            s.out_ids.iter().map(|&r| r as usize).collect()
        };
        let mut out_groups = Vec::new();
        let mut start = 0;
        for g in &row_groups {
            let len = out_rows
                .iter()
                .filter(|&&r| (g.start..g.start + g.len).contains(&r))
                .count();
            if len > 0 {
                out_groups.push(RowGroup {
                    adapters: g.adapters.clone(),
                    start,
                    len,
                });
                start += len;
            }
        }
        let groups = RowAdapters::Groups(&row_groups, &out_groups);
        let result = self.c.run(&self.model, groups, shape, Some(&attn), |inp| {
            for (k, &(_, slot)) in outs.iter().enumerate() {
                let mut l = vec![0f32; n_vocab];
                inp.out.read_f32(k * n_vocab, &mut l)?;
                out[slot] = l;
            }
            Ok(())
        });
        if result.is_ok() {
            for &(i, len) in &entries {
                self.seqs[i].len += len;
            }
        }
        result
    }
}
