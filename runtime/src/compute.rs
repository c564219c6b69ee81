//! The compute state a [`Session`](crate::Session) or the [`BatchDecoder`](crate::BatchDecoder)
//! owns (backend, graph allocator, graph context, KV cache, input staging) and the one way a
//! forward graph is run over it.

use std::sync::Arc;

use graft_ggml::{
    Backend, BackendChoice, ComputeStats, Context, Graph, GraphAllocator, GraphId, Scheduler,
    TensorId,
};
use half::f16;

use crate::adapter::ActiveAdapters;
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::model::device::DeviceWeights;
use crate::model::layers::{AttnInputs, AttnPiece, RowAdapters, RowGroup};
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

/// Where a session's graphs run, what of the model goes there, and how graphs are run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ExecConfig {
    /// The backend (see [`graft_ggml::select_device`]).
    pub backend: BackendChoice,
    /// On a device: how many of the last layers' weights go there (`None`: every weight); see
    /// [`SessionConfig::gpu_layers`](crate::SessionConfig::gpu_layers).
    pub gpu_layers: Option<usize>,
    /// On the CPU: run the weights ggml has repacked kernels for from a repacked copy.
    pub cpu_repack: bool,
    /// On the CPU: run the last graph again for a batch like the last one ([`Reusable`]).
    pub reuse_graphs: bool,
}

/// Where graphs run: the CPU backend alone (weights read in place from the map, or, those it
/// has, from the model's repacked copy), or a device holding the weights and the KV cache, with
/// the CPU taking the nodes the device cannot.
pub(crate) enum Executor {
    Cpu {
        backend: Backend,
        alloc: GraphAllocator,
        repacked: Option<Arc<DeviceWeights>>,
    },
    Device {
        name: Arc<str>,
        sched: Scheduler,
        weights: Arc<DeviceWeights>,
    },
}

impl Executor {
    /// The executor for `place` with `n_threads` CPU threads and room for graphs of
    /// `graph_size` nodes; on the CPU, with `cpu_repack`, over the model's repacked weights.
    pub fn new(
        model: &Model,
        place: ExecConfig,
        n_threads: usize,
        graph_size: usize,
    ) -> Result<Self> {
        let cpu = Backend::cpu(n_threads)?;
        Ok(match graft_ggml::select_device(place.backend)? {
            None => Self::Cpu {
                alloc: GraphAllocator::new(&cpu)?,
                backend: cpu,
                repacked: if place.cpu_repack {
                    Some(model.devices.cpu_repacked(model)?)
                } else {
                    None
                },
            },
            Some(dev) => {
                let device = Backend::on_device(&dev.name)?;
                let weights = model
                    .devices
                    .get(model, &dev.name, &device, place.gpu_layers)?;
                Self::Device {
                    name: dev.name.as_str().into(),
                    sched: Scheduler::new(device, cpu, graph_size)?,
                    weights,
                }
            }
        })
    }

    /// The backend whose memory holds the KV cache.
    fn memory(&self) -> &Backend {
        match self {
            Self::Cpu { backend, .. } => backend,
            Self::Device { sched, .. } => sched.device(),
        }
    }

    /// The CPU backend (thread settings).
    pub fn cpu_mut(&mut self) -> &mut Backend {
        match self {
            Self::Cpu { backend, .. } => backend,
            Self::Device { sched, .. } => sched.cpu_mut(),
        }
    }

    /// The CPU backend.
    pub fn cpu(&self) -> &Backend {
        match self {
            Self::Cpu { backend, .. } => backend,
            Self::Device { sched, .. } => sched.cpu(),
        }
    }

    /// The copy of the weights graphs read: the device's, or the CPU's repacked one.
    pub fn weights(&self) -> Option<Arc<DeviceWeights>> {
        match self {
            Self::Cpu { repacked, .. } => repacked.clone(),
            Self::Device { weights, .. } => Some(weights.clone()),
        }
    }

    /// Makes room for graphs of `graph_size` nodes.
    fn resize(&mut self, graph_size: usize) -> Result<()> {
        if let Self::Device { sched, .. } = self {
            sched.resize(graph_size)?;
        }
        Ok(())
    }

    /// Allocates `graph`'s tensors (and, on a device, splits it between device and CPU).
    pub fn alloc(&mut self, graph: &Graph<'_>) -> Result<()> {
        match self {
            Self::Cpu { alloc, .. } => alloc.alloc(graph)?,
            Self::Device { sched, .. } => sched.alloc(graph)?,
        }
        Ok(())
    }

    /// Computes a graph allocated by [`Executor::alloc`].
    pub fn compute(&mut self, graph: &Graph<'_>) -> Result<()> {
        match self {
            Self::Cpu { backend, .. } => backend.compute(graph)?,
            Self::Device { sched, .. } => sched.compute(graph)?,
        }
        Ok(())
    }

    /// Where graphs ran so far.
    pub fn report(&self) -> BackendReport {
        match self {
            Self::Cpu {
                backend, repacked, ..
            } => BackendReport {
                repacked_weights: repacked.as_ref().map_or(0, |r| r.len()),
                ..BackendReport::new(backend, backend.stats())
            },
            Self::Device { sched, .. } => BackendReport {
                cpu_fallback_ops: sched
                    .cpu_ops()
                    .iter()
                    .map(|(op, n)| (op.to_string(), *n))
                    .collect(),
                ..BackendReport::new(sched.device(), sched.stats())
            },
        }
    }

    /// The device graphs run on (`None`: the CPU backend alone).
    pub fn device_name(&self) -> Option<&Arc<str>> {
        match self {
            Self::Cpu { .. } => None,
            Self::Device { name, .. } => Some(name),
        }
    }

    /// The device backend (`None` on the CPU).
    pub fn device_backend(&self) -> Option<&Backend> {
        match self {
            Self::Cpu { .. } => None,
            Self::Device { sched, .. } => Some(sched.device()),
        }
    }

    /// Bytes of the compute buffers of the last graph allocated: the CPU allocator's, or on a
    /// device the device's and the CPU's together.
    pub fn compute_bytes(&self) -> usize {
        match self {
            Self::Cpu { alloc, .. } => alloc.buffer_size(),
            Self::Device { sched, .. } => sched.buffer_bytes(),
        }
    }
}

pub(crate) struct Compute {
    pub exec: Executor,
    graph_ctx: Context,
    graph_adapters: usize,
    pub kv: KvCache,
    pub scratch: Scratch,
    /// The last graph, while it can run again (see [`Reusable`]).
    last: Option<Reusable>,
    reuse_graphs: bool,
}

/// The last graph run on the CPU, kept allocated so that the next batch of the same shape and
/// adapters (decoding: token after token, until the attended length grows by a padding step)
/// runs it again with new inputs instead of building and allocating it anew, as llama.cpp
/// reuses its graphs. Building SmolLM2-135M's one-token graph (964 nodes) and allocating it
/// takes about 0.28 ms, 3.5 % of a token on 2 threads. Only this struct's owner allocates
/// graphs in the graph context and the allocator, and it drops this before doing so.
struct Reusable {
    shape: BatchShape,
    adapters: ActiveAdapters,
    graph: GraphId,
    tokens: TensorId,
    pos: TensorId,
    mask: TensorId,
    k_idx: Option<TensorId>,
    v_idx: Option<TensorId>,
    out_ids: Option<TensorId>,
    out: TensorId,
}

impl Reusable {
    fn new(
        shape: BatchShape,
        adapters: &ActiveAdapters,
        graph: &Graph<'_>,
        inp: &GraphInputs<'_>,
    ) -> Self {
        Self {
            shape,
            adapters: adapters.clone(),
            graph: graph.id(),
            tokens: inp.tokens.id(),
            pos: inp.attn.pos.id(),
            mask: inp.attn.mask.id(),
            k_idx: inp.attn.k_idx.map(|t| t.id()),
            v_idx: inp.attn.v_idx.map(|t| t.id()),
            out_ids: inp.out_ids.map(|t| t.id()),
            out: inp.out.id(),
        }
    }

    /// The graph and its inputs, resolved in `ctx` (where they were built).
    fn resolve<'c>(&self, ctx: &'c Context) -> Option<(Graph<'c>, GraphInputs<'c>)> {
        let opt = |id: Option<TensorId>| match id {
            Some(id) => ctx.get(id).map(Some),
            None => Some(None),
        };
        let inp = GraphInputs {
            tokens: ctx.get(self.tokens)?,
            attn: AttnInputs {
                pos: ctx.get(self.pos)?,
                mask: ctx.get(self.mask)?,
                k_idx: opt(self.k_idx)?,
                v_idx: opt(self.v_idx)?,
                n_kv: self.shape.n_kv,
                pieces: None,
            },
            out_ids: opt(self.out_ids)?,
            out: ctx.get(self.out)?,
        };
        Some((ctx.graph(self.graph)?, inp))
    }
}

impl Compute {
    /// Graphs placed by `place` (the CPU, or a device with the CPU behind it) with
    /// `n_threads` CPU threads and a KV cache of `n_cells` positions in the device's memory.
    pub fn new(
        model: &Model,
        n_cells: usize,
        n_threads: usize,
        flash_attn: bool,
        kv_f32: bool,
        place: ExecConfig,
    ) -> Result<Self> {
        let exec = Executor::new(model, place, n_threads, sched_size(model, 0))?;
        let kv = KvCache::new(model.config(), n_cells, flash_attn, kv_f32, exec.memory())?;
        if matches!(exec, Executor::Device { .. }) {
            kv.check_writable(exec.memory())?;
        }
        Ok(Self {
            graph_ctx: graph_context(model, 0)?,
            graph_adapters: 0,
            exec,
            kv,
            scratch: Scratch::default(),
            last: None,
            reuse_graphs: place.reuse_graphs,
        })
    }

    /// Makes the graph context big enough for graphs with `n_adapters` adapters.
    pub fn reserve(&mut self, model: &Model, n_adapters: usize) -> Result<()> {
        if n_adapters > self.graph_adapters {
            self.last = None;
            self.graph_ctx = graph_context(model, n_adapters)?;
            self.exec.resize(sched_size(model, n_adapters))?;
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
        // On a device, the adapters are made resident there (once each) and read from there.
        let on_device = match &self.exec {
            Executor::Device { name, sched, .. } => {
                Some(DeviceSets::new(adapters, name, sched.device())?)
            }
            Executor::Cpu { .. } => None,
        };
        let adapters = on_device.as_ref().map_or(adapters, |d| d.rows());
        // A batch like the last one (same shape and adapters, on the CPU) runs the last graph.
        let keep = match (adapters, pieces, &self.exec) {
            (RowAdapters::All(set), None, Executor::Cpu { .. }) if self.reuse_graphs => Some(set),
            _ => None,
        };
        let again = match (&self.last, keep) {
            (Some(last), Some(set)) => {
                last.shape == shape
                    && last.adapters.same_as(set)
                    && last.resolve(&self.graph_ctx).is_some()
            }
            _ => false,
        };
        if !again {
            self.last = None;
            self.graph_ctx.reset();
        }
        let weights = self.exec.weights();
        let (graph, inp) = match self.last.as_ref().and_then(|l| l.resolve(&self.graph_ctx)) {
            Some(built) => built,
            None => {
                let (graph, inp) = llama::build(
                    model,
                    weights.as_deref(),
                    Some(&self.kv),
                    adapters,
                    &self.graph_ctx,
                    shape,
                    pieces,
                    llama::Span::whole(model),
                );
                self.exec.alloc(&graph)?;
                if let Some(set) = keep {
                    self.last = Some(Reusable::new(shape, set, &graph, &inp));
                }
                (graph, inp)
            }
        };
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
        self.exec.compute(&graph)?;
        read(&inp)
    }
}

/// A batch's adapter sets as graphs on a device read them, every adapter resident there.
enum DeviceSets {
    All(ActiveAdapters),
    Groups(Vec<RowGroup>, Vec<RowGroup>),
}

impl DeviceSets {
    fn new(adapters: RowAdapters<'_>, device: &Arc<str>, backend: &Backend) -> Result<Self> {
        let place = |set: &ActiveAdapters| -> Result<ActiveAdapters> {
            for (a, _) in set.iter() {
                a.upload_to(device, backend)?;
            }
            Ok(set.on_device(device))
        };
        let groups = |gs: &[RowGroup]| -> Result<Vec<RowGroup>> {
            gs.iter()
                .map(|g| {
                    Ok(RowGroup {
                        adapters: place(&g.adapters)?,
                        start: g.start,
                        len: g.len,
                    })
                })
                .collect()
        };
        Ok(match adapters {
            RowAdapters::All(set) => Self::All(place(set)?),
            RowAdapters::Groups(g, out) => Self::Groups(groups(g)?, groups(out)?),
        })
    }

    fn rows(&self) -> RowAdapters<'_> {
        match self {
            Self::All(set) => RowAdapters::All(set),
            Self::Groups(g, out) => RowAdapters::Groups(g, out),
        }
    }
}

/// Tensors a scheduled graph may hold (nodes and leaves: weights, adapter tensors, inputs).
fn sched_size(model: &Model, n_adapters: usize) -> usize {
    2 * llama::max_nodes(model, n_adapters) + model.weight_ids().len()
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
    /// Weights read from the CPU's repacked copy (`cpu_repack`; 0 without it, on a device, or
    /// when this CPU has no repacked kernels for the model's types).
    pub repacked_weights: usize,
    /// On a device: the computing nodes that fell back to the CPU, by ggml op (`OUT_PROD`:
    /// 96, ...). Left out of the JSON when empty (the CPU backend, or nothing fell back).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub cpu_fallback_ops: std::collections::BTreeMap<String, u64>,
}

impl BackendReport {
    fn new(backend: &Backend, stats: ComputeStats) -> Self {
        Self {
            name: backend.kind().as_str().to_string(),
            device: backend.device_description(),
            nodes_on_device: stats.nodes_on_device,
            nodes_total: stats.nodes_total,
            repacked_weights: 0,
            cpu_fallback_ops: Default::default(),
        }
    }
}
