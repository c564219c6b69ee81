//! Contexts, tensors and graphs.
//!
//! All contexts made here are `no_alloc`: they hold tensor metadata and graph nodes only;
//! tensor data lives in backend [`Buffer`](crate::Buffer)s.

use std::cell::RefCell;
use std::ffi::CString;
use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::sys;
use crate::{Error, Result, Type};

/// A ggml context holding tensor metadata and graphs (never tensor data).
pub struct Context {
    ptr: NonNull<sys::ggml_context>,
    // The metadata arena, owned here so that re-initialising a context never mallocs.
    _mem: Vec<u8>,
    // Tensors derived once per source (`Context::derived`), until the next reset.
    derived: RefCell<Vec<Derived>>,
}

/// A key of [`Context::derived`]: the source tensor, a name for the derivation and its one
/// parameter; the derived tensor.
type Derived = (
    NonNull<sys::ggml_tensor>,
    &'static str,
    i64,
    NonNull<sys::ggml_tensor>,
);

// SAFETY: a ggml context is plain memory with no thread affinity; `&Context` methods mutate
// it (adding tensors), so it is Send but deliberately not Sync.
unsafe impl Send for Context {}

/// A tensor in some [`Context`], valid while `'ctx` lives.
#[derive(Clone, Copy)]
pub struct Tensor<'ctx> {
    pub(crate) ptr: NonNull<sys::ggml_tensor>,
    _ctx: PhantomData<&'ctx Context>,
}

/// A lifetime-free handle to a tensor, resolved against its owning context with
/// [`Context::get`]. Used by owners (model weights, KV cache) that keep their context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorId(pub(crate) NonNull<sys::ggml_tensor>);

// SAFETY: the handle is an address; it is only dereferenced after `Context::get` checks it
// lies inside a live context's arena.
unsafe impl Send for TensorId {}
// SAFETY: as above.
unsafe impl Sync for TensorId {}

/// A lifetime-free handle to a graph, resolved against its context with [`Context::graph`].
/// Like a [`TensorId`], it is only meaningful until its context is reset: the owner that keeps
/// one (to run a graph again) drops it when it resets the context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphId(NonNull<sys::ggml_cgraph>);

// SAFETY: the handle is an address; it is only dereferenced after `Context::graph` checks it
// lies inside a live context's arena.
unsafe impl Send for GraphId {}
// SAFETY: as above.
unsafe impl Sync for GraphId {}

impl Context {
    /// A metadata-only context with room for `max_tensors` tensors and graphs of up to
    /// `graph_nodes` nodes (0 for none).
    pub fn new(max_tensors: usize, graph_nodes: usize) -> Result<Self> {
        Self::with_graph(max_tensors, graph_nodes, false)
    }

    /// Like [`Context::new`], with room for a graph that holds gradients (`grads`).
    pub fn with_graph(max_tensors: usize, graph_nodes: usize, grads: bool) -> Result<Self> {
        crate::log::install();
        // SAFETY: pure size queries.
        let size = unsafe {
            max_tensors * sys::ggml_tensor_overhead()
                + if graph_nodes > 0 {
                    sys::ggml_graph_overhead_custom(graph_nodes, grads)
                } else {
                    0
                }
        } + 1024;
        let mut mem = vec![0u8; size];
        let params = sys::ggml_init_params {
            mem_size: size,
            mem_buffer: mem.as_mut_ptr().cast(),
            no_alloc: true,
        };
        // SAFETY: mem outlives the context (both owned by Self; the Vec's heap block does
        // not move when Self moves).
        let ptr = unsafe { sys::ggml_init(params) };
        let ptr = NonNull::new(ptr).ok_or_else(|| Error::Alloc("ggml_init".into()))?;
        Ok(Self {
            ptr,
            _mem: mem,
            derived: RefCell::default(),
        })
    }

    /// Drops every tensor and graph made in this context, keeping its arena (no allocation).
    pub fn reset(&mut self) {
        self.derived.get_mut().clear();
        // SAFETY: &mut self guarantees no Tensor or Graph borrowed from this context lives.
        unsafe { sys::ggml_reset(self.raw()) }
    }

    /// The tensor `make` derives from `src`, made once per (`src`, `what`, `param`) until the
    /// next reset and shared after that. Graph builders use it where several consumers would
    /// each make the same copy of one input (the projections that read one normed
    /// activation): one node instead of several, and in a training graph their gradients meet
    /// at that one node.
    pub fn derived<'a>(
        &'a self,
        src: Tensor<'a>,
        what: &'static str,
        param: i64,
        make: impl FnOnce() -> Tensor<'a>,
    ) -> Tensor<'a> {
        let found = self
            .derived
            .borrow()
            .iter()
            .find(|&&(s, w, p, _)| s == src.ptr && w == what && p == param)
            .map(|e| e.3);
        if let Some(ptr) = found {
            return Tensor {
                ptr,
                _ctx: PhantomData,
            };
        }
        let t = make();
        self.derived
            .borrow_mut()
            .push((src.ptr, what, param, t.ptr));
        t
    }

    pub(crate) fn raw(&self) -> *mut sys::ggml_context {
        self.ptr.as_ptr()
    }

    pub(crate) fn wrap(&self, p: *mut sys::ggml_tensor) -> Tensor<'_> {
        Tensor {
            ptr: NonNull::new(p).expect("ggml returned a null tensor (context out of memory)"),
            _ctx: PhantomData,
        }
    }

    /// A new tensor of `ty` with dimensions `ne` (ne[0] contiguous, 1 to 4 dims).
    pub fn new_tensor(&self, ty: Type, ne: &[i64]) -> Tensor<'_> {
        assert!((1..=4).contains(&ne.len()), "1 to 4 dimensions");
        // SAFETY: valid context; ne has ne.len() elements.
        self.wrap(unsafe { sys::ggml_new_tensor(self.raw(), ty.0, ne.len() as i32, ne.as_ptr()) })
    }

    /// Resolves a handle made by [`Tensor::id`]. Returns `None` if it was not made in this
    /// context.
    pub fn get(&self, id: TensorId) -> Option<Tensor<'_>> {
        self.in_arena(id.0.as_ptr() as usize).then_some(Tensor {
            ptr: id.0,
            _ctx: PhantomData,
        })
    }

    /// Resolves a graph handle made in this context (since its last reset: see [`GraphId`]).
    pub fn graph(&self, id: GraphId) -> Option<Graph<'_>> {
        self.in_arena(id.0.as_ptr() as usize).then_some(Graph {
            ptr: id.0,
            _ctx: PhantomData,
        })
    }

    /// Whether address `a` lies in this context's memory.
    fn in_arena(&self, a: usize) -> bool {
        // SAFETY: pure queries on a valid context.
        let (base, size) = unsafe {
            (
                sys::ggml_get_mem_buffer(self.raw()) as usize,
                sys::ggml_get_mem_size(self.raw()),
            )
        };
        a >= base && a < base + size
    }

    /// Looks a tensor up by name.
    pub fn get_by_name(&self, name: &str) -> Option<Tensor<'_>> {
        let c = CString::new(name).ok()?;
        // SAFETY: valid context and NUL-terminated name.
        let p = unsafe { sys::ggml_get_tensor(self.raw(), c.as_ptr()) };
        NonNull::new(p).map(|ptr| Tensor {
            ptr,
            _ctx: PhantomData,
        })
    }

    /// A new graph with room for `nodes` nodes; `grads` reserves gradient slots (training).
    pub fn new_graph(&self, nodes: usize, grads: bool) -> Graph<'_> {
        // SAFETY: valid context with graph overhead reserved by the caller.
        let p = unsafe { sys::ggml_new_graph_custom(self.raw(), nodes, grads) };
        Graph {
            ptr: NonNull::new(p).expect("graph did not fit in the context"),
            _ctx: PhantomData,
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: we own the context; tensors borrowed from it cannot outlive `self`.
        unsafe { sys::ggml_free(self.ptr.as_ptr()) }
    }
}

impl<'ctx> Tensor<'ctx> {
    fn t(&self) -> &sys::ggml_tensor {
        // SAFETY: the tensor lives as long as its context, which outlives 'ctx.
        unsafe { self.ptr.as_ref() }
    }

    pub(crate) fn raw(&self) -> *mut sys::ggml_tensor {
        self.ptr.as_ptr()
    }

    /// A lifetime-free handle for [`Context::get`].
    pub fn id(&self) -> TensorId {
        TensorId(self.ptr)
    }

    /// Dimensions (always 4, padded with 1).
    pub fn ne(&self) -> [i64; 4] {
        self.t().ne
    }

    /// Strides in bytes.
    pub fn nb(&self) -> [usize; 4] {
        self.t().nb
    }

    /// Element type.
    pub fn ty(&self) -> Type {
        Type(self.t().type_)
    }

    /// Whether the data is laid out contiguously (no view strides).
    pub fn is_contiguous(&self) -> bool {
        // SAFETY: valid tensor.
        unsafe { sys::ggml_is_contiguous(self.raw()) }
    }

    /// Number of elements.
    pub fn nelements(&self) -> i64 {
        self.ne().iter().product()
    }

    /// Size of the tensor data in bytes.
    pub fn nbytes(&self) -> usize {
        // SAFETY: valid tensor.
        unsafe { sys::ggml_nbytes(self.raw()) }
    }

    /// Sets the node name (shown by debugging tools); names longer than ggml's 63 bytes are
    /// cut.
    pub fn set_name(self, name: &str) -> Self {
        let mut bytes: Vec<u8> = name.bytes().filter(|&b| b != 0).take(63).collect();
        bytes.push(0);
        // SAFETY: valid tensor; bytes is NUL-terminated and at most 64 bytes.
        unsafe { sys::ggml_set_name(self.raw(), bytes.as_ptr().cast()) };
        self
    }

    /// The node name.
    pub fn name(&self) -> String {
        let n = &self.t().name;
        let len = n.iter().position(|&c| c == 0).unwrap_or(n.len());
        String::from_utf8_lossy(&n[..len].iter().map(|&c| c as u8).collect::<Vec<_>>()).into()
    }

    /// Marks the tensor as a graph input (so allocators never reuse its memory early).
    pub fn set_input(self) -> Self {
        // SAFETY: valid tensor.
        unsafe { sys::ggml_set_input(self.raw()) };
        self
    }

    /// Marks the tensor as a graph output (its memory survives the whole computation).
    pub fn set_output(self) -> Self {
        // SAFETY: valid tensor.
        unsafe { sys::ggml_set_output(self.raw()) };
        self
    }

    /// Whether the tensor is a trainable parameter ([`Tensor::set_param`]).
    pub fn is_param(&self) -> bool {
        self.t().flags & sys::GGML_TENSOR_FLAG_PARAM as i32 != 0
    }

    /// Marks the tensor as a trainable parameter (gradients will be computed for it).
    pub fn set_param(self) -> Self {
        // SAFETY: valid tensor.
        unsafe { sys::ggml_set_param(self.raw()) };
        self
    }

    /// Asks for F32 accumulation in this node (matmul / attention), as llama.cpp does for
    /// attention scores.
    pub fn accumulate_f32(self) -> Self {
        // SAFETY: valid tensor; returns whether the op honours it, which we do not need.
        unsafe { sys::ggml_prec_set_acc(self.raw(), sys::GGML_PREC_F32) };
        self
    }

    /// Marks the tensor as the training loss (a scalar).
    pub fn set_loss(self) -> Self {
        // SAFETY: valid tensor.
        unsafe { sys::ggml_set_loss(self.raw()) };
        self
    }

    /// Whether the tensor has backing memory.
    pub fn is_allocated(&self) -> bool {
        !self.t().data.is_null() || !self.t().buffer.is_null()
    }

    /// Copies `data` into the tensor (which must be allocated in a backend buffer) at byte
    /// `offset`.
    pub fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<()> {
        if !self.is_allocated() || offset + data.len() > self.nbytes() {
            return Err(Error::Shape(format!(
                "write of {} bytes at {offset} into {} ({} bytes, allocated: {})",
                data.len(),
                self.name(),
                self.nbytes(),
                self.is_allocated()
            )));
        }
        // SAFETY: range checked above; the tensor has a buffer.
        unsafe {
            sys::ggml_backend_tensor_set(self.raw(), data.as_ptr().cast(), offset, data.len())
        };
        Ok(())
    }

    /// Sets every byte of the tensor (which must be allocated in a backend buffer) to zero.
    pub fn zero(&self) -> Result<()> {
        if !self.is_allocated() {
            return Err(Error::Shape(format!(
                "zeroing {}: not allocated",
                self.name()
            )));
        }
        // SAFETY: the tensor has a buffer; the range is the whole tensor.
        unsafe { sys::ggml_backend_tensor_memset(self.raw(), 0, 0, self.nbytes()) };
        Ok(())
    }

    /// Copies f32 values into the tensor from element `offset` (tensor must be F32).
    pub fn write_f32(&self, offset: usize, data: &[f32]) -> Result<()> {
        self.expect_type(Type::F32)?;
        self.write_bytes(offset * 4, as_bytes(data))
    }

    /// Copies i32 values into the tensor from element `offset` (tensor must be I32).
    pub fn write_i32(&self, offset: usize, data: &[i32]) -> Result<()> {
        self.expect_type(Type::I32)?;
        self.write_bytes(offset * 4, as_bytes(data))
    }

    /// Copies i64 values into the tensor from element `offset` (tensor must be I64).
    pub fn write_i64(&self, offset: usize, data: &[i64]) -> Result<()> {
        self.expect_type(Type::I64)?;
        self.write_bytes(offset * 8, as_bytes(data))
    }

    /// Reads `out.len()` bytes from byte `offset`.
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        if !self.is_allocated() || offset + out.len() > self.nbytes() {
            return Err(Error::Shape(format!(
                "read of {} bytes at {offset} from {} ({} bytes)",
                out.len(),
                self.name(),
                self.nbytes()
            )));
        }
        // SAFETY: range checked above; the tensor (or the tensor it views) has a buffer, and
        // ggml calls its get_tensor, which buffers of private layouts (CPU_REPACK) lack.
        unsafe {
            let t = &*self.raw();
            let buf = if t.view_src.is_null() {
                t.buffer
            } else {
                (*t.view_src).buffer
            };
            if !buf.is_null() && (*buf).iface.get_tensor.is_none() {
                return Err(Error::Shape(format!(
                    "{} is in a buffer that cannot be read back (a repacked weight)",
                    self.name()
                )));
            }
            sys::ggml_backend_tensor_get(self.raw(), out.as_mut_ptr().cast(), offset, out.len())
        };
        Ok(())
    }

    /// Reads f32 values starting at element `offset` (tensor must be F32 and contiguous).
    pub fn read_f32(&self, offset: usize, out: &mut [f32]) -> Result<()> {
        self.expect_type(Type::F32)?;
        let bytes = out.len() * 4;
        // SAFETY: f32 has no invalid bit patterns; the byte view covers exactly `out`.
        let view = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), bytes) };
        self.read_bytes(offset * 4, view)
    }

    /// Reads the whole tensor as f32.
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        let mut v = vec![0f32; self.nelements() as usize];
        self.read_f32(0, &mut v)?;
        Ok(v)
    }

    fn expect_type(&self, ty: Type) -> Result<()> {
        if self.ty() != ty {
            return Err(Error::Shape(format!(
                "{} is {}, expected {}",
                self.name(),
                self.ty().name(),
                ty.name()
            )));
        }
        Ok(())
    }
}

/// Views plain numeric slices as bytes.
fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: T is a plain numeric type (f32/i32/i64 here) with no padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

/// A computation graph built in a [`Context`].
pub struct Graph<'ctx> {
    pub(crate) ptr: NonNull<sys::ggml_cgraph>,
    _ctx: PhantomData<&'ctx Context>,
}

impl<'ctx> Graph<'ctx> {
    /// Adds `t` and everything it depends on to the graph.
    pub fn build_forward_expand(&mut self, t: Tensor<'ctx>) {
        // SAFETY: valid graph and tensor from a context that outlives the graph.
        unsafe { sys::ggml_build_forward_expand(self.ptr.as_ptr(), t.raw()) }
    }

    /// Adds the backward pass for every parameter (`set_param`) reachable from the loss
    /// (`set_loss`); the graph must have been made with `grads = true`. Gradient tensors are
    /// created in `ctx`.
    pub fn build_backward_expand(&mut self, ctx: &'ctx Context) {
        // SAFETY: valid context and graph with gradient slots; ggml asserts a loss and
        // parameters exist (callers set both).
        unsafe {
            sys::ggml_build_backward_expand(ctx.raw(), self.ptr.as_ptr(), std::ptr::null_mut())
        }
    }

    /// Zeroes the gradients and sets the loss gradient to 1 (after allocation, before compute).
    pub fn reset_grads(&mut self) {
        // SAFETY: valid, allocated graph.
        unsafe { sys::ggml_graph_reset(self.ptr.as_ptr()) }
    }

    /// The gradient of `t` in this graph, if it has one.
    pub fn grad(&self, t: Tensor<'ctx>) -> Option<Tensor<'ctx>> {
        // SAFETY: valid graph and tensor.
        let p = unsafe { sys::ggml_graph_get_grad(self.ptr.as_ptr(), t.raw()) };
        NonNull::new(p).map(|ptr| Tensor {
            ptr,
            _ctx: PhantomData,
        })
    }

    /// Puts new nodes into the node array right before existing ones: `inserts` holds, in
    /// increasing order of index, the index of an existing node and the new nodes that go
    /// right before it, in order. New nodes get ggml's compute flag (the CPU backend skips
    /// nodes without it; the graph's own nodes have it). Returns `false`, with the graph
    /// unchanged, when the graph has no room for them.
    ///
    /// # Safety
    /// The new nodes are valid tensors of this graph's context that read only tensors computed
    /// before the node they go in front of (so the array stays a topological order).
    pub(crate) unsafe fn splice(
        &mut self,
        inserts: &[(usize, Vec<*mut sys::ggml_tensor>)],
    ) -> bool {
        let g = self.ptr.as_ptr();
        // SAFETY: valid graph; its node array holds n_nodes valid tensors and has room for
        // `size` (checked below); the new nodes are valid (the caller's promise).
        unsafe {
            let n_nodes = sys::ggml_graph_n_nodes(g) as usize;
            let added: usize = inserts.iter().map(|(_, v)| v.len()).sum();
            if n_nodes + added > sys::ggml_graph_size(g) as usize {
                return false;
            }
            let nodes = sys::ggml_graph_nodes(g);
            let compute = sys::GGML_TENSOR_FLAG_COMPUTE as i32;
            let mut order = Vec::with_capacity(n_nodes + added);
            let mut next = inserts.iter().peekable();
            for i in 0..n_nodes {
                while let Some((_, new)) = next.next_if(|p| p.0 == i) {
                    for &t in new {
                        (*t).flags |= compute;
                        order.push(t);
                    }
                }
                order.push(*nodes.add(i));
            }
            // The first n_nodes slots are rewritten in place; the rest are appended.
            for (i, &t) in order.iter().enumerate() {
                if i < n_nodes {
                    *nodes.add(i) = t;
                } else {
                    sys::ggml_graph_add_node(g, t);
                }
            }
            true
        }
    }

    /// A lifetime-free handle to this graph.
    pub fn id(&self) -> GraphId {
        GraphId(self.ptr)
    }

    /// Number of nodes.
    pub fn n_nodes(&self) -> i32 {
        // SAFETY: valid graph.
        unsafe { sys::ggml_graph_n_nodes(self.ptr.as_ptr()) }
    }

    pub(crate) fn raw(&self) -> *mut sys::ggml_cgraph {
        self.ptr.as_ptr()
    }
}

/// A context whose tensor set is complete (model weights): shareable across threads, it only
/// resolves [`TensorId`]s.
pub struct FrozenContext(Context);

// SAFETY: a frozen context is never mutated again (no method adds tensors); resolving ids
// only reads its arena bounds.
unsafe impl Sync for FrozenContext {}

impl FrozenContext {
    /// Freezes `ctx`.
    pub fn new(ctx: Context) -> Self {
        Self(ctx)
    }

    /// Resolves a handle made in this context.
    pub fn get(&self, id: TensorId) -> Option<Tensor<'_>> {
        self.0.get(id)
    }
}
