//! Graphs split between a device and the CPU by ggml's backend scheduler.
//!
//! A [`Scheduler`] owns a device backend (graft's wgpu, or ggml's CUDA/Metal/Vulkan) and the CPU
//! backend. For each graph, ggml's `ggml_backend_sched` runs a node on the device when the
//! device supports it and its weights live there (or in no buffer at all), and on the CPU
//! otherwise, copying tensors between the two where the graph crosses; it also allocates the
//! graph's intermediate tensors in each backend's memory. Graph inputs live in CPU memory.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::ptr::NonNull;

use crate::backend::{Backend, ComputeStats};
use crate::context::Graph;
use crate::sys;
use crate::{Error, Result};

/// A device backend with the CPU behind it, and ggml's scheduler over the two.
pub struct Scheduler {
    ptr: NonNull<sys::ggml_backend_sched>,
    device: Backend,
    cpu: Backend,
    stats: ComputeStats,
    /// Computing nodes that ran on the CPU, by op (ggml's name: `OUT_PROD`, `SILU_BACK`...;
    /// ggml's static strings, so counting allocates nothing per graph).
    cpu_ops: BTreeMap<&'static str, u64>,
}

// SAFETY: used from one thread at a time (&mut for everything that touches the scheduler).
unsafe impl Send for Scheduler {}

impl Scheduler {
    /// A scheduler for graphs of up to `graph_size` tensors over `device`, falling back to
    /// `cpu`.
    pub fn new(device: Backend, cpu: Backend, graph_size: usize) -> Result<Self> {
        let ptr = new_sched(&device, &cpu, graph_size)?;
        Ok(Self {
            ptr,
            device,
            cpu,
            stats: ComputeStats::default(),
            cpu_ops: BTreeMap::new(),
        })
    }

    /// Makes room for graphs of up to `graph_size` tensors (a new scheduler over the same
    /// backends).
    pub fn resize(&mut self, graph_size: usize) -> Result<()> {
        let ptr = new_sched(&self.device, &self.cpu, graph_size)?;
        // SAFETY: we own the old scheduler; nothing refers to it any more.
        unsafe { sys::ggml_backend_sched_free(self.ptr.as_ptr()) };
        self.ptr = ptr;
        Ok(())
    }

    /// The device backend.
    pub fn device(&self) -> &Backend {
        &self.device
    }

    /// The CPU backend (its thread count applies to the nodes that fall back to it).
    pub fn cpu_mut(&mut self) -> &mut Backend {
        &mut self.cpu
    }

    /// The CPU backend.
    pub fn cpu(&self) -> &Backend {
        &self.cpu
    }

    /// Splits `graph` between the backends and allocates its tensors (the previous graph's
    /// allocation is dropped). Inputs can be written after this.
    pub fn alloc(&mut self, graph: &Graph<'_>) -> Result<()> {
        // SAFETY: valid scheduler and graph; the graph outlives its use in `compute`.
        let ok = unsafe {
            sys::ggml_backend_sched_reset(self.ptr.as_ptr());
            sys::ggml_backend_sched_alloc_graph(self.ptr.as_ptr(), graph.raw())
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Alloc(
                "scheduling the graph over the device and the CPU".into(),
            ))
        }
    }

    /// Computes `graph` (allocated by [`Scheduler::alloc`]) to completion.
    pub fn compute(&mut self, graph: &Graph<'_>) -> Result<()> {
        self.cpu.update_threads();
        // SAFETY: an allocated graph of this scheduler.
        let status =
            unsafe { sys::ggml_backend_sched_graph_compute(self.ptr.as_ptr(), graph.raw()) };
        if status != sys::GGML_STATUS_SUCCESS {
            return Err(crate::backend::compute_error(self.device.kind(), status));
        }
        let n = graph.n_nodes().max(0);
        let mut on_device = 0u64;
        for i in 0..n {
            // SAFETY: i < n_nodes; the scheduler assigned every node of the graph it split.
            let (node, b) = unsafe {
                let node = sys::ggml_graph_node(graph.raw(), i);
                let b = sys::ggml_backend_sched_get_tensor_backend(self.ptr.as_ptr(), node);
                (node, b)
            };
            if b == self.device.raw() {
                on_device += 1;
                continue;
            }
            // SAFETY: a node of the graph; ggml_op_desc returns a static C string.
            let (op, desc): (_, &'static CStr) =
                unsafe { ((*node).op, CStr::from_ptr(sys::ggml_op_desc(node))) };
            if !is_layout_op(op) {
                *self
                    .cpu_ops
                    .entry(desc.to_str().unwrap_or("?"))
                    .or_default() += 1;
            }
        }
        self.stats.graphs += 1;
        self.stats.nodes_total += n as u64;
        self.stats.nodes_on_device += on_device;
        Ok(())
    }

    /// What this scheduler has computed so far, nodes counted by where they ran.
    pub fn stats(&self) -> ComputeStats {
        self.stats
    }

    /// The computing nodes (views, reshapes and permutes left out) that ran on the CPU so far,
    /// counted by ggml op name: what the device declined.
    pub fn cpu_ops(&self) -> &BTreeMap<&'static str, u64> {
        &self.cpu_ops
    }

    /// Bytes of the compute buffers the last graph was allocated in, over both backends.
    pub fn buffer_bytes(&self) -> usize {
        [&self.device, &self.cpu]
            .iter()
            // SAFETY: valid scheduler and one of its two backends.
            .map(|b| unsafe { sys::ggml_backend_sched_get_buffer_size(self.ptr.as_ptr(), b.raw()) })
            .sum()
    }

    /// Graph splits and tensor copies of the last graph.
    pub fn splits(&self) -> (usize, usize) {
        // SAFETY: valid scheduler.
        unsafe {
            (
                sys::ggml_backend_sched_get_n_splits(self.ptr.as_ptr()).max(0) as usize,
                sys::ggml_backend_sched_get_n_copies(self.ptr.as_ptr()).max(0) as usize,
            )
        }
    }
}

/// Ops that only describe memory (no computation): a graph's leaves made nodes (parameters),
/// views, reshapes and permutes.
fn is_layout_op(op: sys::ggml_op) -> bool {
    matches!(
        op,
        sys::GGML_OP_NONE
            | sys::GGML_OP_VIEW
            | sys::GGML_OP_RESHAPE
            | sys::GGML_OP_PERMUTE
            | sys::GGML_OP_TRANSPOSE
    )
}

/// ggml's scheduler over `device` and `cpu` for graphs of up to `graph_size` tensors.
fn new_sched(
    device: &Backend,
    cpu: &Backend,
    graph_size: usize,
) -> Result<NonNull<sys::ggml_backend_sched>> {
    let mut backends = [device.raw(), cpu.raw()];
    // SAFETY: two live backends, the CPU last as ggml requires; default buffer types;
    // no pipeline parallelism; op offload lets large prompt matmuls use the device even
    // for weights in host memory, where the device says it wants them.
    let p = unsafe {
        sys::ggml_backend_sched_new(
            backends.as_mut_ptr(),
            std::ptr::null_mut(),
            2,
            graph_size,
            false,
            true,
        )
    };
    NonNull::new(p).ok_or_else(|| Error::Alloc("ggml_backend_sched_new".into()))
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: we own the scheduler; the backends it uses are dropped after it.
        unsafe { sys::ggml_backend_sched_free(self.ptr.as_ptr()) }
    }
}
