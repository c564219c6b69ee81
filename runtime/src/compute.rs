//! The compute state a [`Session`](crate::Session) or the [`BatchDecoder`](crate::BatchDecoder)
//! owns (backend, graph allocator, graph context, KV cache, input staging) and the one way a
//! forward graph is run over it.

use graft_ggml::{Backend, BackendChoice, Context, GraphAllocator};
use half::f16;

use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::model::layers::{AttnPiece, RowAdapters};
use crate::model::llama::{self, BatchShape, GraphInputs};
use crate::model::Model;

/// Host-side inputs of one graph, reused between graphs (no allocation per token once warm).
/// The caller fills tokens or embeddings, positions, `k_idx` (the cache cell of each row),
/// the F32 mask and `out_ids`; [`Compute::run`] derives the value indices and the F16 mask.
#[derive(Default)]
pub(crate) struct Scratch {
    pub tokens: Vec<i32>,
    pub embd: Vec<f32>,
    pub pos: Vec<i32>,
    pub mask_f32: Vec<f32>,
    mask_f16: Vec<u8>,
    pub k_idx: Vec<i64>,
    v_idx: Vec<i64>,
    pub out_ids: Vec<i32>,
}

pub(crate) struct Compute {
    pub backend: Backend,
    alloc: GraphAllocator,
    graph_ctx: Context,
    graph_adapters: usize,
    pub kv: KvCache,
    pub scratch: Scratch,
}

impl Compute {
    /// The backend `choice` (the CPU in this version; anything else is a clear error) with
    /// `n_threads` and a KV cache of `n_cells` positions.
    pub fn new(
        model: &Model,
        n_cells: usize,
        n_threads: usize,
        flash_attn: bool,
        kv_f32: bool,
        choice: BackendChoice,
    ) -> Result<Self> {
        graft_ggml::check_choice(choice)?;
        let backend = Backend::cpu(n_threads)?;
        let kv = KvCache::new(model.config(), n_cells, flash_attn, kv_f32, &backend)?;
        Ok(Self {
            graph_ctx: graph_context(model, 0)?,
            alloc: GraphAllocator::new(&backend)?,
            graph_adapters: 0,
            backend,
            kv,
            scratch: Scratch::default(),
        })
    }

    /// Makes the graph context big enough for graphs with `n_adapters` adapters.
    pub fn reserve(&mut self, model: &Model, n_adapters: usize) -> Result<()> {
        if n_adapters > self.graph_adapters {
            self.graph_ctx = graph_context(model, n_adapters)?;
            self.graph_adapters = n_adapters;
        }
        Ok(())
    }

    /// Builds the forward graph for `shape`, fills its inputs from the scratch, computes it
    /// and hands the inputs (logits included) to `read`.
    pub fn run(
        &mut self,
        model: &Model,
        adapters: RowAdapters<'_>,
        shape: BatchShape,
        pieces: Option<&[AttnPiece]>,
        read: impl FnOnce(&GraphInputs<'_>) -> Result<()>,
    ) -> Result<()> {
        self.reserve(model, adapters.count())?;
        let s = &mut self.scratch;
        s.v_idx.clear();
        if self.kv.v_trans() {
            // Element (c, t) of V [n_embd_kv, n] goes to cache element c * n_ctx + cell_t.
            let (n_embd_kv, n_ctx) = (self.kv.n_embd_kv() as i64, self.kv.n_ctx() as i64);
            for &cell in &s.k_idx {
                s.v_idx.extend((0..n_embd_kv).map(|c| c * n_ctx + cell));
            }
        } else {
            s.v_idx.extend_from_slice(&s.k_idx);
            s.mask_f16.clear();
            s.mask_f16.extend(
                s.mask_f32
                    .iter()
                    .flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes()),
            );
        }
        self.graph_ctx.reset();
        let (graph, inp) = llama::build(
            model,
            Some(&self.kv),
            adapters,
            &self.graph_ctx,
            shape,
            pieces,
        );
        self.alloc.alloc(&graph)?;
        let s = &self.scratch;
        if shape.embeddings {
            inp.tokens.write_f32(0, &s.embd)?;
        } else {
            inp.tokens.write_i32(0, &s.tokens)?;
        }
        inp.attn.pos.write_i32(0, &s.pos)?;
        if let (Some(k), Some(v)) = (inp.attn.k_idx, inp.attn.v_idx) {
            k.write_i64(0, &s.k_idx)?;
            v.write_i64(0, &s.v_idx)?;
        }
        if self.kv.v_trans() {
            inp.attn.mask.write_f32(0, &s.mask_f32)?;
        } else {
            inp.attn.mask.write_bytes(0, &s.mask_f16)?;
        }
        if let Some(ids) = inp.out_ids {
            ids.write_i32(0, &s.out_ids)?;
        }
        self.backend.compute(&graph)?;
        read(&inp)
    }
}

fn graph_context(model: &Model, n_adapters: usize) -> Result<Context> {
    let nodes = llama::max_nodes(model, n_adapters);
    Ok(Context::new(nodes + 64, nodes)?)
}

/// Where graphs ran, for reports (`generate --json`, the bench and train summaries): the
/// backend, its device, and how many graph nodes ran on that device out of all, so that a
/// fall-back to the CPU is visible.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BackendReport {
    /// `cpu` (and, with GPU backends, `cuda`, `vulkan`, ...).
    pub name: String,
    /// The device's description (the CPU's model name).
    pub device: String,
    /// Graph nodes that ran on that device.
    pub nodes_on_device: u64,
    /// All graph nodes computed.
    pub nodes_total: u64,
}

impl BackendReport {
    pub(crate) fn of(backend: &Backend) -> Self {
        let stats = backend.stats();
        Self {
            name: backend.kind().as_str().to_string(),
            device: backend.device_description(),
            nodes_on_device: stats.nodes_on_device,
            nodes_total: stats.nodes_total,
        }
    }
}
