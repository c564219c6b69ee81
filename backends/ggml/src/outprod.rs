//! ggml's F32 `out_prod` as a blocked GEMM (CPU training graphs).
//!
//! Autodiff spells the gradient of a matmul's first operand as `out_prod(x, g)`: the sum over
//! tokens of outer products. ggml's CPU kernel computes it as one axpy per (output row, token),
//! so every token reads and writes the whole output row again: memory-bound, 14 % of a LoRA
//! training step on SmolLM2 (the attention's key and value gradients and the adapters' own
//! gradients). The same sum is a matrix product, `D = S1ᵀ · S0` per batch, which a packed GEMM
//! kernel (the `matrixmultiply` crate, AVX2/AVX-512/NEON) runs near the CPU's FMA rate.
//!
//! [`Graph::use_gemm_out_prod`] turns the graph's F32 `out_prod` nodes into custom nodes
//! running [`out_prod_gemm`]: same sources, same output tensor, threads split the output rows.
//! Results differ from ggml's only in the order of the f32 sums.
//!
//! The input gradient through a frozen quantized weight, `Wᵀ g` (autodiff's
//! `out_prod(W, transpose(g))`), is a GEMM too: [`Graph::use_dequant_input_grads`] turns those
//! nodes into [`input_grad_gemm`], which dequantizes panels of `W` into f32 (`dequant.rs`:
//! ggml's `to_float` values bit for bit, so the values are exactly the weight's) and
//! multiplies them with `g` in f32. ggml's kernel dequantizes the whole matrix once per token;
//! here each weight is dequantized once per sequence.

use std::os::raw::{c_int, c_void};

use crate::context::{Context, Graph};
use crate::lowrank::CustomFn;
use crate::sys;

/// Whether `t` (an `OUT_PROD` node) is one [`out_prod_gemm`] computes: F32 everywhere, the
/// first source's rows and the output's rows contiguous, broadcasting as ggml's kernel does.
///
/// # Safety
/// `t` is a valid `OUT_PROD` node with both sources set.
unsafe fn fits(t: &sys::ggml_tensor) -> bool {
    let (a, b) = (&*t.src[0], &*t.src[1]);
    let f32 = sys::GGML_TYPE_F32;
    let f = std::mem::size_of::<f32>();
    t.type_ == f32
        && a.type_ == f32
        && b.type_ == f32
        && a.nb[0] == f
        && t.nb[0] == f
        && [
            a.nb[1], a.nb[2], a.nb[3], b.nb[0], b.nb[1], b.nb[2], b.nb[3],
        ]
        .iter()
        .all(|&s| s % f == 0)
        && [t.nb[1], t.nb[2], t.nb[3]].iter().all(|&s| s % f == 0)
        && t.ne[0] == a.ne[0]
        && t.ne[1] == b.ne[0]
        && a.ne[1] == b.ne[1]
        && t.ne[2] == b.ne[2]
        && t.ne[3] == b.ne[3]
        && broadcasts(a, t)
}

/// Whether `src`'s batches (dims 2 and 3) broadcast over `out`'s as ggml broadcasts a
/// product's first operand: none empty, each count dividing `out`'s.
pub(crate) fn broadcasts(src: &sys::ggml_tensor, out: &sys::ggml_tensor) -> bool {
    src.ne[2] > 0 && src.ne[3] > 0 && out.ne[2] % src.ne[2] == 0 && out.ne[3] % src.ne[3] == 0
}

/// `dst[i0, i1, i2, i3] = Σ_k a[i0, k, i2/r2, i3/r3] · b[i1, k, i2, i3]` (ggml's `out_prod`,
/// `a = src[0]`, `b = src[1]`), as one GEMM per (i2, i3) over this thread's part
/// ([`crate::lowrank::share_batched`]: whole batches, or rows `i1`, or columns `i0`).
///
/// # Safety
/// Called by ggml's CPU backend for a node that [`fits`] accepted, with allocated tensors.
unsafe extern "C" fn out_prod_gemm(
    dst: *mut sys::ggml_tensor,
    ith: c_int,
    nth: c_int,
    _userdata: *mut c_void,
) {
    // SAFETY: ggml passes the node it computes; its sources are allocated F32 tensors whose
    // shapes and strides `fits` checked, so every offset below stays inside them.
    unsafe {
        let d = &*dst;
        let (a, b) = (&*d.src[0], &*d.src[1]);
        let f = std::mem::size_of::<f32>();
        let [n, m, ne2, ne3] = d.ne.map(|v| v as usize);
        let k = a.ne[1] as usize;
        let (r2, r3) = (ne2 / a.ne[2] as usize, ne3 / a.ne[3] as usize);
        // Threads split the batches, or each batch's output rows, or its columns where there
        // are fewer rows (a LoRA's A gradient has rank-many rows).
        let work = crate::lowrank::share_batched(ne2 * ne3, m, n, true, ith, nth);
        if work.is_empty() {
            return;
        }
        let (rows, cols) = (work.rows, work.cols);
        let st = |s: usize| (s / f) as isize;
        for bi in work.batches {
            let (i2, i3) = (bi % ne2, bi / ne2);
            let pa = (a.data as *const u8)
                .add((i2 / r2) * a.nb[2] + (i3 / r3) * a.nb[3] + cols.start * f);
            let pb = (b.data as *const u8).add(i2 * b.nb[2] + i3 * b.nb[3] + rows.start * b.nb[0]);
            let pd = (d.data as *mut u8)
                .add(i2 * d.nb[2] + i3 * d.nb[3] + rows.start * d.nb[1] + cols.start * f);
            if k == 0 {
                for r in 0..rows.len() {
                    std::slice::from_raw_parts_mut(pd.add(r * d.nb[1]) as *mut f32, cols.len())
                        .fill(0.0);
                }
                continue;
            }
            // D (rows x n) = B' (rows x k) · A (k x n), B'[i1][k] = b[i1, k], A[k][i0] = a[i0, k].
            matrixmultiply::sgemm(
                rows.len(),
                k,
                cols.len(),
                1.0,
                pb as *const f32,
                st(b.nb[0]),
                st(b.nb[1]),
                pa as *const f32,
                st(a.nb[1]),
                1,
                0.0,
                pd as *mut f32,
                st(d.nb[1]),
                1,
            );
        }
    }
}

/// Rows of `W` dequantized and multiplied per GEMM call: bounds the f32 scratch to
/// `PANEL x (this thread's columns)` floats.
const PANEL: usize = 256;

/// Whether `t` (an `OUT_PROD` node) is an input gradient [`input_grad_gemm`] computes:
/// `out_prod(W, transpose(g))` with `W` a 2-D quantized (or F16/BF16) weight that ggml can
/// dequantize, `g` a contiguous F32 `[n_out, T]` tensor.
///
/// # Safety
/// `t` is a valid `OUT_PROD` node with both sources set.
unsafe fn input_grad_fits(t: &sys::ggml_tensor) -> bool {
    let (w, tr) = (&*t.src[0], &*t.src[1]);
    if tr.op != sys::GGML_OP_TRANSPOSE || tr.src[0].is_null() {
        return false;
    }
    let g = &*tr.src[0];
    let traits = &*sys::ggml_get_type_traits(w.type_);
    w.type_ != sys::GGML_TYPE_F32
        && traits.to_float.is_some()
        && w.ne[2] == 1
        && w.ne[3] == 1
        && sys::ggml_is_contiguous(w)
        && g.type_ == sys::GGML_TYPE_F32
        && sys::ggml_is_contiguous(g)
        && g.ne[0] == w.ne[1]
        && g.ne[2] == 1
        && g.ne[3] == 1
        && t.type_ == sys::GGML_TYPE_F32
        && t.ne == [w.ne[0], g.ne[1], 1, 1]
        && t.nb[0] == std::mem::size_of::<f32>()
}

/// `dst [n_in, T] = Wᵀ g` for `src = [W, g]`: threads split the columns (whole blocks of
/// `W`'s type); each dequantizes `PANEL` rows of its columns at a time and accumulates
/// `g_panelᵀ · W_panel` into its part of `dst`.
///
/// # Safety
/// Called by ggml's CPU backend for a node [`Graph::use_dequant_input_grads`] built, with
/// allocated tensors.
unsafe extern "C" fn input_grad_gemm(
    dst: *mut sys::ggml_tensor,
    ith: c_int,
    nth: c_int,
    _userdata: *mut c_void,
) {
    // SAFETY: ggml passes the node it computes; `input_grad_fits` checked that W is a
    // contiguous 2-D weight whose rows dequantize with `to_float`, g a contiguous F32
    // [n_out, T] tensor, and dst an F32 [n_in, T] tensor with contiguous rows.
    unsafe {
        let d = &*dst;
        let (w, g) = (&*d.src[0], &*d.src[1]);
        let dequant = crate::dequant::Dequant::new(w.type_).expect("checked by input_grad_fits");
        let blck = sys::ggml_blck_size(w.type_) as usize;
        let [n_in, n_out] = [w.ne[0] as usize, w.ne[1] as usize];
        let t = g.ne[1] as usize;
        let blocks = crate::lowrank::share(n_in / blck, ith, nth);
        let (c0, c1) = (blocks.start * blck, blocks.end * blck);
        if c0 == c1 || t == 0 {
            return;
        }
        let width = c1 - c0;
        let block_bytes = sys::ggml_row_size(w.type_, blck as i64);
        let mut panel = vec![0f32; PANEL.min(n_out) * width];
        for o0 in (0..n_out).step_by(PANEL) {
            let rows = PANEL.min(n_out - o0);
            for r in 0..rows {
                let src =
                    (w.data as *const u8).add((o0 + r) * w.nb[1] + blocks.start * block_bytes);
                dequant.row(src, panel.as_mut_ptr().add(r * width), width);
            }
            // D[t][c] (+)= Σ_o G[t][o] · W[o][c], G[t][o] = g[o, t].
            matrixmultiply::sgemm(
                t,
                rows,
                width,
                1.0,
                (g.data as *const f32).add(o0),
                (g.nb[1] / std::mem::size_of::<f32>()) as isize,
                1,
                panel.as_ptr(),
                width as isize,
                1,
                if o0 == 0 { 0.0 } else { 1.0 },
                (d.data as *mut f32).add(c0),
                (d.nb[1] / std::mem::size_of::<f32>()) as isize,
                1,
            );
        }
    }
}

impl<'ctx> Graph<'ctx> {
    /// Rewrites every F32 `out_prod` node (autodiff's gradient of a matmul's first operand:
    /// attention keys and values, adapter matrices, input gradients through F32 weights) into
    /// a custom node running [`out_prod_gemm`], the same sum as a packed GEMM; ggml's kernel
    /// is one axpy per output row and token. CPU backend only (custom nodes run nowhere else).
    /// Returns how many nodes were rewritten. Call after `build_backward_expand`, before
    /// allocation.
    pub fn use_gemm_out_prod(&mut self, ctx: &'ctx Context) -> usize {
        // SAFETY (of the closure's call): `rewrite_nodes` passes valid out_prod nodes.
        self.rewrite_nodes(
            ctx,
            sys::GGML_OP_OUT_PROD,
            out_prod_gemm,
            |t| unsafe { fits(t) }.then(std::ptr::null_mut),
            false,
        )
    }

    /// Rewrites the backward pass's `out_prod(W, transpose(g))` nodes whose `W` is a frozen
    /// quantized (or F16/BF16) 2-D weight, the input gradient `Wᵀ g` of `mul_mat(W, x)`, into
    /// custom nodes running [`input_grad_gemm`]: the weight's exact values, f32 products, no
    /// copy of the weights. CPU backend only. Returns how many nodes were rewritten. Call after
    /// `build_backward_expand`, before allocation.
    pub fn use_dequant_input_grads(&mut self, ctx: &'ctx Context) -> usize {
        // SAFETY (of the closure's call): `rewrite_nodes` passes valid out_prod nodes.
        self.rewrite_nodes(
            ctx,
            sys::GGML_OP_OUT_PROD,
            input_grad_gemm,
            |t| unsafe { input_grad_fits(t) }.then(std::ptr::null_mut),
            true,
        )
    }

    /// Turns each `op` node (with two sources) that `accept`s into a custom node running
    /// `fun` with the userdata `accept` returns for it; with `untranspose`, its second source
    /// (a transpose view) becomes the view's source.
    pub(crate) fn rewrite_nodes(
        &mut self,
        ctx: &'ctx Context,
        op: sys::ggml_op,
        fun: CustomFn,
        accept: impl Fn(&sys::ggml_tensor) -> Option<*mut c_void>,
        untranspose: bool,
    ) -> usize {
        // The params of the last userdata seen (the rewrites pass one value for every node).
        let mut made: Option<(*mut c_void, [i32; 16])> = None;
        let mut n = 0;
        for i in 0..self.n_nodes() {
            // SAFETY: i < n_nodes; nodes are valid tensors of this graph. The node keeps its
            // output; its op becomes a custom op computing the same values from the sources
            // `accept` checked (the untransposed view's source is computed before the view).
            unsafe {
                let t = &mut *sys::ggml_graph_node(self.ptr.as_ptr(), i);
                if t.op != op || t.src[0].is_null() || t.src[1].is_null() {
                    continue;
                }
                let Some(userdata) = accept(t) else {
                    continue;
                };
                let params = match made {
                    Some((u, p)) if u == userdata => p,
                    _ => {
                        let Some(p) = custom_params(ctx, fun, userdata) else {
                            return n;
                        };
                        made = Some((userdata, p));
                        p
                    }
                };
                if untranspose {
                    t.src[1] = (*t.src[1]).src[0];
                }
                t.op = sys::GGML_OP_CUSTOM;
                t.op_params = params;
                n += 1;
            }
        }
        n
    }
}

/// The op parameters ggml stores for a custom node running `fun` on all threads with
/// `userdata`: ggml lays them out itself, so they are taken from a node made for the purpose
/// (no sources, never computed). `None` if the context has no room.
pub(crate) fn custom_params(
    ctx: &Context,
    fun: CustomFn,
    userdata: *mut c_void,
) -> Option<[i32; 16]> {
    // SAFETY: valid context; no sources are passed (n_args 0).
    let t = unsafe {
        sys::ggml_custom_4d(
            ctx.raw(),
            sys::GGML_TYPE_F32,
            1,
            1,
            1,
            1,
            std::ptr::null_mut(),
            0,
            Some(fun),
            sys::GGML_N_TASKS_MAX,
            userdata,
        )
    };
    // SAFETY: a tensor ggml just made, when not null.
    (!t.is_null()).then(|| unsafe { (*t).op_params })
}
