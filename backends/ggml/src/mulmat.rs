//! ggml's `mul_mat` as a packed f32 GEMM over dequantized weight panels (CPU training graphs).
//!
//! A training step multiplies every weight by a whole sequence of activations (256 tokens
//! and more), so its forward products are GEMMs. On the CPU, ggml runs them as tinyBLAS's
//! integer kernels (Q4_0, Q8_0: the activations quantized to Q8 first), as one dot product per
//! output for the types tinyBLAS lacks (Q4_1), for F32 products whose inner dimension is not a
//! multiple of the vector width (a LoRA's `B · (A x)` with rank 8), and for F32 products whose
//! second operand is a strided view (attention scores over permuted queries). On these cores
//! an f32 GEMM over the weight's dequantized rows is faster than all of them: measured on
//! SmolLM2's 576 x 1536 layers with 256 tokens, 1.4x tinyBLAS's Q4_0 kernel, including the
//! dequantization.
//!
//! [`Graph::use_gemm_mul_mat`] turns such `mul_mat` nodes into custom nodes running
//! [`mul_mat_gemm`]: threads split the weight's rows (or whole batches, or the tokens); each
//! dequantizes `PANEL` of its rows at a time (`dequant.rs`: ggml's `to_float` values, bit for
//! bit, so the weights' values are exact) and multiplies them with the f32 activations (the
//! `matrixmultiply` crate). F32 weights are read in place.
//!
//! The values differ from ggml's in rounding only: for F32 weights in the order of the sums;
//! for quantized and F16 weights also because the activations are not rounded to the weights'
//! dot-product type (Q8_0/Q8_1 blocks, F16) first, which is what QLoRA-style trainers do
//! (dequantize, multiply in floating point). The backward pass, built from the original graph,
//! is unchanged. Inference keeps ggml's kernels: its tokens must match llama.cpp's.

use std::os::raw::{c_int, c_void};

use crate::context::{Context, Graph};
use crate::sys;

/// Weight rows dequantized per GEMM call: bounds the f32 scratch to `PANEL x k` floats.
const PANEL: usize = 256;

/// Whether `t` (a `MUL_MAT` node) is one [`mul_mat_gemm`] computes: F32 activations with
/// contiguous rows, an F32 output with contiguous rows, and a weight that is F32 with
/// contiguous rows or a type ggml can dequantize (`to_float`) with whole contiguous rows;
/// batches broadcast as ggml's `mul_mat` broadcasts them.
///
/// # Safety
/// `t` is a valid `MUL_MAT` node with both sources set.
unsafe fn fits(t: &sys::ggml_tensor) -> bool {
    let (w, x) = (&*t.src[0], &*t.src[1]);
    let f = std::mem::size_of::<f32>();
    let f32 = sys::GGML_TYPE_F32;
    let weight_ok = if w.type_ == f32 {
        w.nb[0] == f
    } else {
        (*sys::ggml_get_type_traits(w.type_)).to_float.is_some()
            && w.nb[0] == sys::ggml_type_size(w.type_)
            && w.ne[0] % sys::ggml_blck_size(w.type_) == 0
    };
    weight_ok
        && x.type_ == f32
        && t.type_ == f32
        && x.nb[0] == f
        && t.nb[0] == f
        && [x.nb[1], x.nb[2], x.nb[3], t.nb[1], t.nb[2], t.nb[3]]
            .iter()
            .all(|&s| s % f == 0)
        && (w.type_ != f32 || [w.nb[1], w.nb[2], w.nb[3]].iter().all(|&s| s % f == 0))
        && w.ne[0] == x.ne[0]
        && t.ne[0] == w.ne[1]
        && t.ne[1] == x.ne[1]
        && t.ne[2] == x.ne[2]
        && t.ne[3] == x.ne[3]
        && crate::outprod::broadcasts(w, x)
}

/// `dst[i0, i1, i2, i3] = Σ_k w[k, i0, i2/r2, i3/r3] · x[k, i1, i2, i3]` (ggml's `mul_mat`,
/// `w = src[0]`, `x = src[1]`), over this thread's part ([`crate::lowrank::share_batched`]:
/// whole batches, or weight rows `i0`, or tokens `i1`).
///
/// # Safety
/// Called by ggml's CPU backend for a node that [`fits`] accepted, with allocated tensors.
unsafe extern "C" fn mul_mat_gemm(
    dst: *mut sys::ggml_tensor,
    ith: c_int,
    nth: c_int,
    _userdata: *mut c_void,
) {
    // SAFETY: ggml passes the node it computes; its sources are allocated tensors whose types,
    // shapes and strides `fits` checked, so every row read and written below is inside them.
    unsafe {
        let d = &*dst;
        let (w, x) = (&*d.src[0], &*d.src[1]);
        let f = std::mem::size_of::<f32>();
        let [m, n, ne2, ne3] = d.ne.map(|v| v as usize);
        let k = w.ne[0] as usize;
        let (r2, r3) = (ne2 / w.ne[2] as usize, ne3 / w.ne[3] as usize);
        // Threads split the batches, or each batch's weight rows, or, for F32 weights with
        // fewer rows than there are tokens (a LoRA's A, one head's values), its tokens.
        let f32_weight = w.type_ == sys::GGML_TYPE_F32;
        let work = crate::lowrank::share_batched(ne2 * ne3, m, n, f32_weight, ith, nth);
        if work.is_empty() {
            return;
        }
        let (rows, toks) = (work.rows, work.cols);
        let n = toks.len();
        let st = |s: usize| (s / f) as isize;
        let dequant =
            (!f32_weight).then(|| crate::dequant::Dequant::new(w.type_).expect("checked by fits"));
        let mut panel = match dequant {
            Some(_) => vec![0f32; PANEL.min(rows.len()) * k],
            None => Vec::new(),
        };
        for bi in work.batches {
            let (i2, i3) = (bi % ne2, bi / ne2);
            let pw = (w.data as *const u8).add((i2 / r2) * w.nb[2] + (i3 / r3) * w.nb[3]);
            let px = (x.data as *const u8).add(i2 * x.nb[2] + i3 * x.nb[3] + toks.start * x.nb[1])
                as *const f32;
            let pd = (d.data as *mut u8).add(i2 * d.nb[2] + i3 * d.nb[3] + toks.start * d.nb[1])
                as *mut f32;
            if k == 0 {
                for i1 in 0..n {
                    let row = pd.add(i1 * st(d.nb[1]) as usize + rows.start);
                    std::slice::from_raw_parts_mut(row, rows.len()).fill(0.0);
                }
                continue;
            }
            // D (n x m) = X (n x k) · Wᵀ (k x m): D[i1][i0] = Σ_k x[k, i1] · w[k, i0].
            let Some(dequant) = dequant else {
                matrixmultiply::sgemm(
                    n,
                    k,
                    rows.len(),
                    1.0,
                    px,
                    st(x.nb[1]),
                    1,
                    (pw as *const f32).add(rows.start * st(w.nb[1]) as usize),
                    1,
                    st(w.nb[1]),
                    0.0,
                    pd.add(rows.start),
                    st(d.nb[1]),
                    1,
                );
                continue;
            };
            for r0 in rows.clone().step_by(PANEL) {
                let len = PANEL.min(rows.end - r0);
                for r in 0..len {
                    let src = pw.add((r0 + r) * w.nb[1]);
                    dequant.row(src, panel.as_mut_ptr().add(r * k), k);
                }
                matrixmultiply::sgemm(
                    n,
                    k,
                    len,
                    1.0,
                    px,
                    st(x.nb[1]),
                    1,
                    panel.as_ptr(),
                    1,
                    k as isize,
                    0.0,
                    pd.add(r0),
                    st(d.nb[1]),
                    1,
                );
            }
        }
    }
}

impl<'ctx> Graph<'ctx> {
    /// Rewrites the graph's `mul_mat` nodes with F32 activations (F32 weights, or any weight
    /// type ggml dequantizes) into custom nodes running [`mul_mat_gemm`]: an f32 GEMM over
    /// dequantized weight panels. CPU backend only (custom nodes run nowhere else). Returns how
    /// many nodes were rewritten. Call after `build_backward_expand` (the backward pass is
    /// built from the original ops), before allocation.
    pub fn use_gemm_mul_mat(&mut self, ctx: &'ctx Context) -> usize {
        // SAFETY (of the closure's call): `rewrite_nodes` passes valid mul_mat nodes.
        self.rewrite_nodes(
            ctx,
            sys::GGML_OP_MUL_MAT,
            mul_mat_gemm,
            |t| unsafe { fits(t) }.then(std::ptr::null_mut),
            false,
        )
    }
}
