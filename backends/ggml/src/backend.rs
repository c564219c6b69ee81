//! Backends, buffers and graph allocation.
//!
//! A [`Backend`] runs graphs (CPU here; CUDA/Metal/Vulkan behind cargo features). A
//! [`Buffer`] holds tensor data: either allocated by the backend (KV cache, adapters) or
//! wrapping host memory that something else owns (the memory-mapped model file). A
//! [`GraphAllocator`] places a graph's intermediate tensors in one reusable compute buffer.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::context::{Context, Graph, Tensor};
use crate::sys;
use crate::threads::ThreadGovernor;
use crate::{Error, Result};

/// A compute backend.
pub struct Backend {
    ptr: NonNull<sys::ggml_backend>,
    kind: BackendKind,
    threads: ThreadGovernor,
    stats: ComputeStats,
}

/// What a [`Backend`] has computed so far: graphs, and their nodes by where they ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ComputeStats {
    /// Graphs computed.
    pub graphs: u64,
    /// Nodes of those graphs.
    pub nodes_total: u64,
    /// Nodes that ran on the backend's own device (all of them on the CPU backend; with a
    /// scheduler over a GPU, the rest fell back to the CPU).
    pub nodes_on_device: u64,
}

/// Which device a [`Backend`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// ggml's CPU backend.
    Cpu,
    /// graft's wgpu backend.
    Wgpu,
    /// ggml's CUDA backend.
    Cuda,
    /// ggml's Metal backend.
    Metal,
    /// ggml's Vulkan backend.
    Vulkan,
    /// ggml's BLAS backend (matrix products of prompt-sized batches beside the CPU).
    Blas,
}

impl BackendKind {
    /// The name `--backend` and reports use (`cpu`, `wgpu`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
            Self::Metal => "metal",
            Self::Vulkan => "vulkan",
            Self::Blas => "blas",
        }
    }

    fn from_registry(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "cpu" => Self::Cpu,
            "wgpu" => Self::Wgpu,
            "cuda" => Self::Cuda,
            "metal" => Self::Metal,
            "vulkan" => Self::Vulkan,
            "blas" => Self::Blas,
            _ => return None,
        })
    }
}

// SAFETY: a ggml backend may be used from any thread, one at a time (&mut for compute).
unsafe impl Send for Backend {}

impl Backend {
    /// The CPU backend with at most `n_threads` worker threads: fewer while other processes
    /// keep cores busy (see [`crate::threads`]; [`Backend::set_adaptive_threads`] turns that
    /// off).
    pub fn cpu(n_threads: usize) -> Result<Self> {
        crate::log::install();
        // SAFETY: plain constructor.
        let p = unsafe { sys::ggml_backend_cpu_init() };
        let ptr = NonNull::new(p).ok_or_else(|| Error::Alloc("ggml_backend_cpu_init".into()))?;
        let mut b = Self {
            ptr,
            kind: BackendKind::Cpu,
            threads: ThreadGovernor::new(n_threads),
            stats: ComputeStats::default(),
        };
        b.set_threads(n_threads);
        Ok(b)
    }

    /// A backend on device `name` of ggml's registry (`WGPU0`, `CUDA0`, ...; see
    /// [`crate::devices`]).
    pub fn on_device(name: &str) -> Result<Self> {
        let dev = crate::device::find(name)
            .ok_or_else(|| Error::Unsupported(format!("no device named {name}")))?;
        // SAFETY: a device of the registry, which lives as long as the process.
        let reg = unsafe { sys::ggml_backend_dev_backend_reg(dev) };
        // SAFETY: as above; the name is a static string of the registry.
        let reg_name = crate::device::c_str(unsafe { sys::ggml_backend_reg_name(reg) });
        let kind = BackendKind::from_registry(&reg_name)
            .ok_or_else(|| Error::Unsupported(format!("unknown backend {reg_name}")))?;
        // SAFETY: as above; no parameters.
        let p = unsafe { sys::ggml_backend_dev_init(dev, std::ptr::null()) };
        let ptr = NonNull::new(p).ok_or_else(|| {
            Error::Alloc(format!(
                "starting device {name}{}",
                device_error(kind)
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ))
        })?;
        Ok(Self {
            ptr,
            kind,
            threads: ThreadGovernor::new(1),
            stats: ComputeStats::default(),
        })
    }

    /// Which device this is.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// ggml's description of the device this backend runs on (the CPU's model name).
    pub fn device_description(&self) -> String {
        // SAFETY: a valid backend; ggml returns a device owned by its registry (or null).
        let dev = unsafe { sys::ggml_backend_get_device(self.raw()) };
        if dev.is_null() {
            return String::new();
        }
        // SAFETY: a valid device; the string lives as long as the registry.
        let p = unsafe { sys::ggml_backend_dev_description(dev) };
        if p.is_null() {
            return String::new();
        }
        // SAFETY: NUL-terminated, owned by ggml.
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    }

    /// Sets the (largest) number of CPU threads used by graph computation.
    pub fn set_threads(&mut self, n: usize) {
        self.threads.set_max(n);
        self.apply_threads(self.threads.current());
    }

    /// Whether the thread count follows the cores other processes leave free (on by default,
    /// unless `GRAFT_ADAPTIVE_THREADS=0`), or stays at the number set.
    pub fn set_adaptive_threads(&mut self, on: bool) {
        self.threads.set_adaptive(on);
        self.apply_threads(self.threads.current());
    }

    /// The thread count the last graph ran with (or the next will, before any ran).
    pub fn threads(&self) -> usize {
        self.threads.current()
    }

    fn apply_threads(&self, n: usize) {
        if self.kind == BackendKind::Cpu {
            // SAFETY: a CPU backend made by ggml_backend_cpu_init.
            unsafe { sys::ggml_backend_cpu_set_n_threads(self.ptr.as_ptr(), n.max(1) as i32) }
        }
    }

    pub(crate) fn raw(&self) -> *mut sys::ggml_backend {
        self.ptr.as_ptr()
    }

    /// Allocates every tensor of `ctx` in one new buffer of this backend (zero-filled).
    pub fn alloc_ctx_tensors(&self, ctx: &Context) -> Result<Buffer> {
        // SAFETY: valid context and backend.
        let p = unsafe { sys::ggml_backend_alloc_ctx_tensors(ctx.raw(), self.raw()) };
        let ptr = NonNull::new(p)
            .ok_or_else(|| Error::Alloc("backend buffer for context tensors".into()))?;
        // SAFETY: buffer just made.
        unsafe { sys::ggml_backend_buffer_clear(ptr.as_ptr(), 0) };
        Ok(Buffer::from_raw(ptr))
    }

    /// Runs `graph` to completion.
    pub fn compute(&mut self, graph: &Graph<'_>) -> Result<()> {
        self.update_threads();
        // SAFETY: the graph's tensors are all allocated (callers use GraphAllocator) and
        // outlive this call.
        let status = unsafe { sys::ggml_backend_graph_compute(self.raw(), graph.raw()) };
        if status != sys::GGML_STATUS_SUCCESS {
            return Err(compute_error(self.kind, status));
        }
        let n = graph.n_nodes().max(0) as u64;
        self.stats.graphs += 1;
        self.stats.nodes_total += n;
        self.stats.nodes_on_device += n;
        Ok(())
    }

    /// Lets the thread governor pick the thread count for the next graph (CPU backends).
    pub(crate) fn update_threads(&mut self) {
        if self.kind == BackendKind::Cpu {
            if let Some(n) = self.threads.update() {
                self.apply_threads(n);
            }
        }
    }

    /// Allocates every tensor of `ctx` in one new buffer of this backend, marked as holding
    /// weights (so the scheduler runs the ops that use them on this backend), and zero-filled.
    pub fn alloc_weights(&self, ctx: &Context) -> Result<Buffer> {
        let buf = self.alloc_ctx_tensors(ctx)?;
        // SAFETY: a buffer just made.
        unsafe {
            sys::ggml_backend_buffer_set_usage(
                buf.ptr.as_ptr(),
                sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS,
            )
        };
        Ok(buf)
    }

    /// Whether this backend can compute node `t` (ggml's `supports_op`).
    pub fn supports_op(&self, t: Tensor<'_>) -> bool {
        // SAFETY: valid backend and tensor.
        unsafe { sys::ggml_backend_supports_op(self.raw(), t.raw()) }
    }

    /// What this backend has computed so far.
    pub fn stats(&self) -> ComputeStats {
        self.stats
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: we own the backend.
        unsafe { sys::ggml_backend_free(self.ptr.as_ptr()) }
    }
}

/// The error of a graph computation that ended with `status` on a backend of `kind`: what the
/// device said, when it keeps its last failure, else the status.
pub(crate) fn compute_error(kind: BackendKind, status: i32) -> Error {
    match device_error(kind) {
        Some(message) => Error::DeviceCompute {
            backend: kind.as_str(),
            message,
        },
        None => Error::Compute(status),
    }
}

/// What a device backend said about its last failure (graft's own backends keep it).
pub(crate) fn device_error(kind: BackendKind) -> Option<String> {
    match kind {
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => graft_wgpu::last_error(),
        _ => None,
    }
}

/// A backend buffer holding tensor data.
pub struct Buffer {
    ptr: NonNull<sys::ggml_backend_buffer>,
    // Keeps host memory wrapped by `from_host` alive as long as the buffer.
    _owner: Option<Arc<dyn HostMemory>>,
}

/// Host memory that a [`Buffer`] can wrap without copying (a memory map, a Vec).
pub trait HostMemory: Send + Sync {
    /// The bytes; the address must stay fixed for the object's life.
    fn bytes(&self) -> &[u8];
}

// SAFETY: the buffer is only mutated through &mut or by graph computation, which callers
// serialise.
unsafe impl Send for Buffer {}
// SAFETY: as above; shared access only reads metadata.
unsafe impl Sync for Buffer {}

impl Buffer {
    /// Takes ownership of a buffer ggml just allocated.
    pub(crate) fn from_raw(ptr: NonNull<sys::ggml_backend_buffer>) -> Self {
        Self { ptr, _owner: None }
    }

    /// A CPU buffer over `mem` without copying. Tensors placed in it read from `mem` in place;
    /// ggml never writes to weight tensors during inference.
    pub fn from_host(mem: Arc<dyn HostMemory>) -> Result<Self> {
        let bytes = mem.bytes();
        if !(bytes.as_ptr() as usize).is_multiple_of(32) {
            return Err(Error::Shape("host memory must be 32-byte aligned".into()));
        }
        // SAFETY: the bytes stay alive and fixed while `mem` (kept in the Buffer) lives.
        // ggml takes a *mut pointer but only reads weights; no op writes to them.
        let p =
            unsafe { sys::ggml_backend_cpu_buffer_from_ptr(bytes.as_ptr() as *mut _, bytes.len()) };
        let ptr =
            NonNull::new(p).ok_or_else(|| Error::Alloc("cpu buffer from host memory".into()))?;
        // SAFETY: buffer just made.
        unsafe {
            sys::ggml_backend_buffer_set_usage(ptr.as_ptr(), sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS)
        };
        Ok(Self {
            ptr,
            _owner: Some(mem),
        })
    }

    /// Places `t` at byte `offset` of this buffer (a host buffer from [`Buffer::from_host`]).
    pub fn place(&self, t: Tensor<'_>, offset: usize) -> Result<()> {
        let size = self.size();
        let end = offset.checked_add(t.nbytes());
        if end.is_none_or(|e| e > size) || t.is_allocated() {
            return Err(Error::Shape(format!(
                "tensor {} ({} bytes at {offset}) does not fit buffer of {size} bytes or is already placed",
                t.name(),
                t.nbytes()
            )));
        }
        // SAFETY: valid buffer; base + offset .. + nbytes is inside it (checked above).
        let status = unsafe {
            let base = sys::ggml_backend_buffer_get_base(self.ptr.as_ptr()) as *mut u8;
            sys::ggml_backend_tensor_alloc(self.ptr.as_ptr(), t.raw(), base.add(offset).cast())
        };
        if status != sys::GGML_STATUS_SUCCESS {
            return Err(Error::Alloc(format!("placing tensor {}", t.name())));
        }
        Ok(())
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        // SAFETY: valid buffer.
        unsafe { sys::ggml_backend_buffer_get_size(self.ptr.as_ptr()) }
    }

    /// Fills the buffer with `value`.
    pub fn clear(&mut self, value: u8) {
        // SAFETY: valid buffer, exclusively borrowed.
        unsafe { sys::ggml_backend_buffer_clear(self.ptr.as_ptr(), value) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: we own the buffer; the host memory (if any) is dropped after it.
        unsafe { sys::ggml_backend_buffer_free(self.ptr.as_ptr()) }
    }
}

/// Allocates graph intermediates in one compute buffer that grows to the largest graph seen
/// and is then reused (no allocation per token).
pub struct GraphAllocator {
    ptr: NonNull<sys::ggml_gallocr>,
}

// SAFETY: the allocator is plain host state used under &mut.
unsafe impl Send for GraphAllocator {}

impl GraphAllocator {
    /// An allocator for `backend`'s default buffer type.
    pub fn new(backend: &Backend) -> Result<Self> {
        // SAFETY: valid backend.
        let p = unsafe {
            sys::ggml_gallocr_new(sys::ggml_backend_get_default_buffer_type(backend.raw()))
        };
        let ptr = NonNull::new(p).ok_or_else(|| Error::Alloc("ggml_gallocr_new".into()))?;
        Ok(Self { ptr })
    }

    /// Reserves the compute buffer for the worst-case `graph` so later graphs need no
    /// reallocation.
    pub fn reserve(&mut self, graph: &Graph<'_>) -> Result<()> {
        // SAFETY: valid allocator and graph.
        if unsafe { sys::ggml_gallocr_reserve(self.ptr.as_ptr(), graph.raw()) } {
            Ok(())
        } else {
            Err(Error::Alloc("reserving the compute buffer".into()))
        }
    }

    /// Allocates every unallocated tensor of `graph`.
    pub fn alloc(&mut self, graph: &Graph<'_>) -> Result<()> {
        // SAFETY: valid allocator and graph.
        if unsafe { sys::ggml_gallocr_alloc_graph(self.ptr.as_ptr(), graph.raw()) } {
            Ok(())
        } else {
            Err(Error::Alloc("allocating the compute graph".into()))
        }
    }

    /// Bytes currently held by the compute buffer.
    pub fn buffer_size(&self) -> usize {
        // SAFETY: valid allocator.
        unsafe { sys::ggml_gallocr_get_buffer_size(self.ptr.as_ptr(), 0) }
    }
}

impl Drop for GraphAllocator {
    fn drop(&mut self) {
        // SAFETY: we own the allocator.
        unsafe { sys::ggml_gallocr_free(self.ptr.as_ptr()) }
    }
}
