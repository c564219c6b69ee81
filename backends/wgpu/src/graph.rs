//! From ggml nodes to compute dispatches: which kernel computes a node (and so whether the
//! backend supports it), its parameter block, and the encoding of a whole graph into one
//! submission.

use graft_ggml_sys as sys;

use crate::buffer::{self, Binding};
use crate::gpu::{Gpu, PARAM_SLOT};
use crate::shaders::{readable, Family, Kernel};

/// Workgroups of one dispatch dimension, the WebGPU minimum every device has.
const MAX_GROUPS_X: u32 = 65535;

/// How one node is computed: its kernel, the tensors bound (the node first), how many
/// workgroups run, and the values the host computes for the kernel.
pub(crate) struct Plan {
    pub kernel: Kernel,
    pub tensors: Vec<*const sys::ggml_tensor>,
    pub groups: u64,
    pub extra: [u32; 12],
}

/// Ops that only describe another tensor's memory differently: nothing runs for them.
pub(crate) fn is_view(op: sys::ggml_op) -> bool {
    matches!(
        op,
        sys::GGML_OP_NONE
            | sys::GGML_OP_VIEW
            | sys::GGML_OP_RESHAPE
            | sys::GGML_OP_PERMUTE
            | sys::GGML_OP_TRANSPOSE
    )
}

fn nelements(t: &sys::ggml_tensor) -> u64 {
    t.ne.iter().map(|&n| n as u64).product()
}

fn op_f32(t: &sys::ggml_tensor, i: usize) -> f32 {
    f32::from_bits(t.op_params[i] as u32)
}

/// Plans `node` for a hardware GPU or a software renderer (`software`), or says why this
/// backend cannot compute it.
///
/// # Safety
/// `node` and its sources must be valid tensors.
pub(crate) unsafe fn plan(node: *const sys::ggml_tensor, software: bool) -> Result<Plan, String> {
    // SAFETY: valid per the contract.
    let t = unsafe { &*node };
    // SAFETY: sources of a valid tensor are valid or null.
    let src = |i: usize| unsafe { t.src[i].as_ref() };
    let ty = |s: Option<&sys::ggml_tensor>| s.map(|s| s.type_);
    let f32_ = sys::GGML_TYPE_F32;
    let f16_ = sys::GGML_TYPE_F16;
    let float = |s: Option<&sys::ggml_tensor>| matches!(ty(s), Some(x) if x == f32_ || x == f16_);
    let n = nelements(t);
    let mut extra = [0u32; 12];
    extra[0] = u32::try_from(n).map_err(|_| "more than 2^32 elements")?;
    let mut tensors = vec![node];
    let mut push = |s: Option<&sys::ggml_tensor>| {
        if let Some(s) = s {
            tensors.push(s as *const _);
        }
    };
    let unsupported = || Err(format!("op {} on these types", op_name(t.op)));
    let (family, variant, groups) = match t.op {
        sys::GGML_OP_ADD | sys::GGML_OP_SUB | sys::GGML_OP_MUL | sys::GGML_OP_DIV => {
            let (a, b) = (src(0), src(1));
            if t.type_ != f32_ || ty(a) != Some(f32_) || ty(b) != Some(f32_) {
                return unsupported();
            }
            push(a);
            push(b);
            let v = match t.op {
                sys::GGML_OP_ADD => 0,
                sys::GGML_OP_SUB => 1,
                sys::GGML_OP_MUL => 2,
                _ => 3,
            };
            (Family::Elementwise, v, n.div_ceil(256))
        }
        sys::GGML_OP_ACC => {
            let (a, b) = (src(0).ok_or("no src0")?, src(1).ok_or("no src1")?);
            let [nb1, nb2, nb3, offset] = [0, 1, 2, 3].map(|i| t.op_params[i] as i64);
            // SAFETY: valid tensors.
            let contiguous = unsafe { sys::ggml_is_contiguous(t) && sys::ggml_is_contiguous(a) };
            if t.type_ != f32_
                || a.type_ != f32_
                || b.type_ != f32_
                || !contiguous
                || t.op_params[4] != 0
                || offset < 0
                || b.ne[0] * 4 > nb1
                || b.ne[1] * nb1 > nb2
                || b.ne[2] * nb2 > nb3
            {
                return unsupported();
            }
            push(Some(a));
            push(Some(b));
            (Family::Elementwise, 7, n.div_ceil(256))
        }
        sys::GGML_OP_SCALE => {
            if t.type_ != f32_ || ty(src(0)) != Some(f32_) {
                return unsupported();
            }
            push(src(0));
            (Family::Elementwise, 4, n.div_ceil(256))
        }
        sys::GGML_OP_CPY | sys::GGML_OP_DUP | sys::GGML_OP_CONT => {
            if !float(Some(t)) || !float(src(0)) || nelements(src(0).unwrap()) != n {
                return unsupported();
            }
            push(src(0));
            (Family::Elementwise, 5, n.div_ceil(256))
        }
        sys::GGML_OP_UNARY | sys::GGML_OP_SILU_BACK => {
            let (a, b) = (src(0), src(1));
            let silu = t.op == sys::GGML_OP_UNARY
                // SAFETY: a valid unary node.
                && unsafe { sys::ggml_get_unary_op(t) } == sys::GGML_UNARY_OP_SILU;
            let back = t.op == sys::GGML_OP_SILU_BACK && ty(b) == Some(f32_);
            if t.type_ != f32_ || ty(a) != Some(f32_) || !(silu || back) {
                return unsupported();
            }
            push(a);
            if back {
                push(b);
            }
            (
                Family::Elementwise,
                if back { 9 } else { 8 },
                n.div_ceil(256),
            )
        }
        sys::GGML_OP_GLU => {
            let (a, b) = (src(0), src(1));
            let op = t.op_params[0] as u32;
            if op != sys::GGML_GLU_OP_SWIGLU
                || t.type_ != f32_
                || ty(a) != Some(f32_)
                || b.is_some_and(|b| b.type_ != f32_)
            {
                return unsupported();
            }
            push(a);
            push(b);
            extra[1] = b.is_some() as u32;
            (Family::Elementwise, 6, n.div_ceil(256))
        }
        sys::GGML_OP_RMS_NORM_BACK | sys::GGML_OP_SOFT_MAX_BACK => {
            let (a, b) = (src(0).ok_or("no src0")?, src(1).ok_or("no src1")?);
            // SAFETY: valid tensors.
            let same = unsafe { sys::ggml_are_same_shape(a, t) && sys::ggml_are_same_shape(b, t) };
            let back_of_softmax = t.op == sys::GGML_OP_SOFT_MAX_BACK;
            if t.type_ != f32_
                || a.type_ != f32_
                || b.type_ != f32_
                || !same
                || (back_of_softmax && op_f32(t, 1) != 0.0)
            {
                return unsupported();
            }
            push(Some(a));
            push(Some(b));
            let rows = n / t.ne[0].max(1) as u64;
            extra[0] = u32::try_from(rows).map_err(|_| "too many rows")?;
            (Family::Rows, if back_of_softmax { 4 } else { 3 }, rows)
        }
        sys::GGML_OP_CROSS_ENTROPY_LOSS | sys::GGML_OP_CROSS_ENTROPY_LOSS_BACK => {
            let back = t.op == sys::GGML_OP_CROSS_ENTROPY_LOSS_BACK;
            // The forward pass: logits and targets; the backward one: the loss's gradient
            // first.
            let srcs: Vec<_> = (0..2 + back as usize).map(src).collect();
            let [logits, targets] = [srcs[back as usize], srcs[back as usize + 1]];
            let (Some(x), Some(y)) = (logits, targets) else {
                return unsupported();
            };
            // SAFETY: valid tensors.
            let plain = unsafe {
                sys::ggml_is_contiguous(x)
                    && sys::ggml_is_contiguous(y)
                    && sys::ggml_are_same_shape(x, y)
            };
            if t.type_ != f32_
                || srcs.iter().any(|s| ty(*s) != Some(f32_))
                || !plain
                || (back && nelements(srcs[0].unwrap()) != 1)
            {
                return unsupported();
            }
            for s in &srcs {
                push(*s);
            }
            let rows = nelements(x) / x.ne[0].max(1) as u64;
            extra[0] = u32::try_from(rows).map_err(|_| "too many rows")?;
            if back {
                (Family::Rows, 6, rows)
            } else {
                (Family::Rows, 5, 1)
            }
        }
        sys::GGML_OP_GET_ROWS_BACK => {
            let (a, b) = (src(0).ok_or("no src0")?, src(1).ok_or("no src1")?);
            if t.type_ != f32_
                || a.type_ != f32_
                || b.type_ != sys::GGML_TYPE_I32
                || a.ne[2] * a.ne[3] != 1
                || t.ne[2] * t.ne[3] != 1
                || b.ne[0] != a.ne[1]
            {
                return unsupported();
            }
            push(Some(a));
            push(Some(b));
            (Family::Index, 2, n.div_ceil(256))
        }
        sys::GGML_OP_REPEAT | sys::GGML_OP_SUM => {
            let a = src(0).ok_or("no src0")?;
            let repeat = t.op == sys::GGML_OP_REPEAT;
            // SAFETY: valid tensors.
            let fits = !repeat || unsafe { sys::ggml_can_repeat(a, t) };
            if t.type_ != f32_ || a.type_ != f32_ || !fits {
                return unsupported();
            }
            push(Some(a));
            if repeat {
                (Family::Elementwise, 11, n.div_ceil(256))
            } else {
                extra[0] = u32::try_from(nelements(a)).map_err(|_| "more than 2^32 elements")?;
                (Family::Rows, 7, 1)
            }
        }
        sys::GGML_OP_REPEAT_BACK => {
            let a = src(0).ok_or("no src0")?;
            // SAFETY: valid tensors.
            if t.type_ != f32_ || a.type_ != f32_ || !unsafe { sys::ggml_can_repeat(t, a) } {
                return unsupported();
            }
            push(Some(a));
            (Family::Elementwise, 10, n.div_ceil(256))
        }
        sys::GGML_OP_RMS_NORM | sys::GGML_OP_SOFT_MAX | sys::GGML_OP_ARGMAX => {
            let a = src(0);
            let rows = a.map(|a| nelements(a) / a.ne[0].max(1) as u64).unwrap_or(0);
            let variant = match t.op {
                sys::GGML_OP_RMS_NORM if t.type_ == f32_ && ty(a) == Some(f32_) => 0,
                sys::GGML_OP_SOFT_MAX
                    if t.type_ == f32_
                        && ty(a) == Some(f32_)
                        && (src(1).is_none() || float(src(1)))
                        && src(2).is_none()
                        && op_f32(t, 1) == 0.0 =>
                {
                    1
                }
                sys::GGML_OP_ARGMAX if t.type_ == sys::GGML_TYPE_I32 && ty(a) == Some(f32_) => 2,
                _ => return unsupported(),
            };
            push(a);
            if variant == 1 {
                push(src(1));
                extra[1] = src(1).is_some() as u32;
            }
            extra[0] = u32::try_from(rows).map_err(|_| "too many rows")?;
            (Family::Rows, variant, rows)
        }
        sys::GGML_OP_MUL_MAT => {
            let (a, b) = (src(0).ok_or("no src0")?, src(1).ok_or("no src1")?);
            if t.type_ != f32_
                || b.type_ != f32_
                || !readable(a.type_)
                || b.nb[0] != 4
                // SAFETY: a valid type.
                || a.nb[0] != unsafe { sys::ggml_type_size(a.type_) }
                || b.ne[2] % a.ne[2] != 0
                || b.ne[3] % a.ne[3] != 0
            {
                return unsupported();
            }
            push(Some(a));
            push(Some(b));
            let cooperative = match crate::matvec() {
                crate::MatVec::Auto => !software,
                crate::MatVec::Cooperative => true,
                crate::MatVec::PerOutput => false,
            };
            extra[1] = (a.ne[0] as u64 / block(a.type_)) as u32;
            if t.ne[1] == 1 {
                (
                    Family::MulMat,
                    if cooperative { 0 } else { 1 },
                    if cooperative { n } else { n.div_ceil(64) },
                )
            } else {
                // Tiles of 4 rows by 4 columns (see mul_mat.wgsl).
                let tiles = (t.ne[0] as u64).div_ceil(4)
                    * (t.ne[1] as u64).div_ceil(4)
                    * (t.ne[2] * t.ne[3]) as u64;
                extra[0] = u32::try_from(tiles).map_err(|_| "more than 2^32 tiles")?;
                (Family::MulMat, 2, tiles.div_ceil(64))
            }
        }
        sys::GGML_OP_OUT_PROD => {
            let (a, b) = (src(0).ok_or("no src0")?, src(1).ok_or("no src1")?);
            if t.type_ != f32_
                || b.type_ != f32_
                || !readable(a.type_)
                // SAFETY: a valid type.
                || a.nb[0] != unsafe { sys::ggml_type_size(a.type_) }
                || a.ne[1] != b.ne[1]
                || b.ne[2] % a.ne[2] != 0
                || b.ne[3] % a.ne[3] != 0
            {
                return unsupported();
            }
            push(Some(a));
            push(Some(b));
            // Tiles of one row by 4 columns (see mul_mat.wgsl).
            let tiles = t.ne[0] as u64 * (t.ne[1] as u64).div_ceil(4) * (t.ne[2] * t.ne[3]) as u64;
            extra[0] = u32::try_from(tiles).map_err(|_| "more than 2^32 tiles")?;
            (Family::MulMat, 3, tiles.div_ceil(64))
        }
        sys::GGML_OP_GET_ROWS => {
            let (a, b) = (src(0).ok_or("no src0")?, src(1).ok_or("no src1")?);
            if t.type_ != f32_ || !readable(a.type_) || b.type_ != sys::GGML_TYPE_I32 {
                return unsupported();
            }
            push(Some(a));
            push(Some(b));
            (Family::Index, 0, n.div_ceil(256))
        }
        sys::GGML_OP_SET_ROWS => {
            let (a, b) = (src(0).ok_or("no src0")?, src(1).ok_or("no src1")?);
            if !float(Some(t))
                || a.type_ != f32_
                || !matches!(b.type_, sys::GGML_TYPE_I64 | sys::GGML_TYPE_I32)
            {
                return unsupported();
            }
            push(Some(a));
            push(Some(b));
            let m = nelements(a);
            extra[0] = u32::try_from(m).map_err(|_| "more than 2^32 elements")?;
            (Family::Index, 1, m.div_ceil(256))
        }
        sys::GGML_OP_ROPE | sys::GGML_OP_ROPE_BACK => {
            let (a, pos) = (src(0).ok_or("no src0")?, src(1).ok_or("no src1")?);
            let n_dims = t.op_params[1];
            let mode = t.op_params[2] as u32;
            if t.type_ != f32_
                || a.type_ != f32_
                || pos.type_ != sys::GGML_TYPE_I32
                || !(mode == 0 || mode == sys::GGML_ROPE_TYPE_NEOX)
                || t.op_params[15] != 0
                || n_dims <= 0
                || n_dims % 2 != 0
                || n_dims as i64 > t.ne[0]
                || t.ne[0] % 2 != 0
                || src(2).is_some_and(|f| f.type_ != f32_)
            {
                return unsupported();
            }
            push(Some(a));
            push(Some(pos));
            push(src(2));
            extra[1] = src(2).is_some() as u32;
            let freq_base = op_f32(t, 5);
            extra[2] = freq_base.powf(-2.0 / n_dims as f32).to_bits();
            let mut corr = [0f32; 2];
            // SAFETY: plain arithmetic on the node's parameters into a local array.
            unsafe {
                sys::ggml_rope_yarn_corr_dims(
                    n_dims,
                    t.op_params[4],
                    freq_base,
                    op_f32(t, 9),
                    op_f32(t, 10),
                    corr.as_mut_ptr(),
                )
            };
            extra[3] = corr[0].to_bits();
            extra[4] = corr[1].to_bits();
            extra[0] = (n / 2) as u32;
            let back = t.op == sys::GGML_OP_ROPE_BACK;
            (Family::Rope, back as u32, (n / 2).div_ceil(256))
        }
        _ => return unsupported(),
    };
    let mut types = Vec::with_capacity(tensors.len());
    for &p in &tensors {
        // SAFETY: node and its sources, valid per the contract.
        types.push(unsafe { (*p).type_ });
    }
    Ok(Plan {
        kernel: Kernel {
            name: op_name(t.op),
            family,
            variant,
            types,
        },
        tensors,
        groups,
        extra,
    })
}

/// Elements per block of a format the kernels read.
fn block(ty: sys::ggml_type) -> u64 {
    match ty {
        sys::GGML_TYPE_Q4_0 | sys::GGML_TYPE_Q4_1 | sys::GGML_TYPE_Q8_0 => 32,
        _ => 1,
    }
}

fn op_name(op: sys::ggml_op) -> &'static str {
    // SAFETY: ggml returns a static string for every op.
    let p = unsafe { sys::ggml_op_name(op) };
    if p.is_null() {
        return "op";
    }
    // SAFETY: NUL-terminated and static.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_str()
        .unwrap_or("op")
}

/// Whether the node can run here: planned, and every tensor it binds fits in one binding.
///
/// # Safety
/// `node` and its sources must be valid tensors.
pub(crate) unsafe fn supports(node: *const sys::ggml_tensor, max_binding: u64) -> bool {
    // SAFETY: valid per the contract.
    if is_view(unsafe { (*node).op }) {
        return true;
    }
    // SAFETY: as above.
    match unsafe { plan(node, false) } {
        Ok(p) => p.tensors.iter().all(|&t| {
            // SAFETY: planned tensors are the node and its sources.
            (unsafe { sys::ggml_nbytes(t) } as u64) + 256 <= max_binding
        }),
        Err(_) => false,
    }
}

/// Packs the node's parameter block (see kernels/common.wgsl).
fn params(plan: &Plan, bindings: &[Binding]) -> [u32; 64] {
    let mut p = [0u32; 64];
    for (i, (&t, b)) in plan.tensors.iter().zip(bindings).enumerate() {
        // SAFETY: planned tensors are valid.
        let t = unsafe { &*t };
        for d in 0..4 {
            p[i * 8 + d] = t.ne[d] as u32;
            p[i * 8 + 4 + d] = t.nb[d] as u32;
        }
        p[32 + i] = b.offset_in_binding;
    }
    // SAFETY: the node is valid.
    let node = unsafe { &*plan.tensors[0] };
    for i in 0..16 {
        p[36 + i] = node.op_params[i] as u32;
    }
    p[52..64].copy_from_slice(&plan.extra);
    p
}

/// Computes every node of `graph` in one submission and waits for it.
///
/// # Safety
/// `graph` must be a valid graph whose tensors are allocated in this device's buffers.
pub(crate) unsafe fn compute(gpu: &Gpu, graph: *mut sys::ggml_cgraph) -> Result<(), String> {
    // SAFETY: valid graph.
    let n = unsafe { sys::ggml_graph_n_nodes(graph) };
    let mut plans = Vec::new();
    let mut binds = Vec::new();
    let align = gpu.limits.min_storage_buffer_offset_alignment as u64;
    for i in 0..n {
        // SAFETY: i < n.
        let node = unsafe { sys::ggml_graph_node(graph, i) };
        // SAFETY: nodes of a valid graph.
        if is_view(unsafe { (*node).op }) || unsafe { sys::ggml_nelements(node) } == 0 {
            continue;
        }
        // SAFETY: as above.
        let plan = unsafe { plan(node, gpu.software) }?;
        let b = plan
            .tensors
            .iter()
            // SAFETY: planned tensors are valid and allocated (the contract).
            .map(|&t| unsafe { buffer::binding(t, align) })
            .collect::<Result<Vec<_>, _>>()?;
        binds.push(b);
        plans.push(plan);
    }
    if plans.is_empty() {
        return Ok(());
    }
    let mut block = Vec::with_capacity(plans.len() * PARAM_SLOT as usize);
    for (plan, b) in plans.iter().zip(&binds) {
        let p = params(plan, b);
        for w in p {
            block.extend_from_slice(&w.to_le_bytes());
        }
    }
    let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let params = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("graft-wgpu params"),
        size: block.len() as u64,
        usage: if gpu.params_in_storage {
            wgpu::BufferUsages::STORAGE
        } else {
            wgpu::BufferUsages::UNIFORM
        } | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    gpu.queue.write_buffer(&params, 0, &block);
    let mut pipelines = Vec::with_capacity(plans.len());
    let mut groups = Vec::with_capacity(plans.len());
    for (plan, b) in plans.iter().zip(&binds) {
        pipelines.push(gpu.pipeline(&plan.kernel)?);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &params,
                offset: 0,
                size: wgpu::BufferSize::new(PARAM_SLOT),
            }),
        }];
        for (i, bind) in b.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: 1 + i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: bind.buffer,
                    offset: bind.offset,
                    size: wgpu::BufferSize::new(bind.size),
                }),
            });
        }
        groups.push(gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: gpu.layout(b.len()),
            entries: &entries,
        }));
    }
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        for (i, plan) in plans.iter().enumerate() {
            if plan.groups == 0 {
                continue;
            }
            pass.set_pipeline(&pipelines[i]);
            pass.set_bind_group(0, &groups[i], &[(i as u64 * PARAM_SLOT) as u32]);
            let x = plan.groups.min(MAX_GROUPS_X as u64) as u32;
            let y = plan.groups.div_ceil(x as u64);
            if y > MAX_GROUPS_X as u64 {
                return Err(format!("{} needs too many workgroups", plan.kernel.name));
            }
            pass.dispatch_workgroups(x, y as u32, 1);
        }
    }
    gpu.queue.submit([enc.finish()]);
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(format!("encoding the graph: {e}"));
    }
    gpu.wait()?;
    if let Some(e) = gpu.take_errors().into_iter().next() {
        return Err(e);
    }
    Ok(())
}
