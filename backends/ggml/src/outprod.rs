//! ggml's F32 `out_prod` as a blocked GEMM (CPU training graphs).
//!
//! Autodiff spells the gradient of a matmul's first operand as `out_prod(x, g)`: the sum over
//! tokens of outer products. ggml's CPU kernel computes it as one axpy per (output row, token),
//! so every token reads and writes the whole output row again: memory-bound, 14 % of a LoRA
//! training step on SmolLM2 (the attention's key and value gradients and the adapters' own
//! gradients). The same sum is a matrix product, `D = S1ᵀ · S0` per batch, which a packed GEMM
//! kernel (the `matrixmultiply` crate, AVX2/AVX-512/NEON) runs near the CPU's FMA rate.
//!
//! [`crate::Graph::use_gemm_out_prod`] turns the graph's F32 `out_prod` nodes into custom nodes
//! running [`out_prod_gemm`]: same sources, same output tensor, threads split the output rows.
//! Results differ from ggml's only in the order of the f32 sums.

use std::os::raw::{c_int, c_void};

use crate::sys;

/// Whether `t` (an `OUT_PROD` node) is one [`out_prod_gemm`] computes: F32 everywhere, the
/// first source's rows and the output's rows contiguous, broadcasting as ggml's kernel does.
///
/// # Safety
/// `t` is a valid `OUT_PROD` node with both sources set.
pub(crate) unsafe fn fits(t: &sys::ggml_tensor) -> bool {
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
        && a.ne[2] > 0
        && a.ne[3] > 0
        && t.ne[2] % a.ne[2] == 0
        && t.ne[3] % a.ne[3] == 0
}

/// `dst[i0, i1, i2, i3] = Σ_k a[i0, k, i2/r2, i3/r3] · b[i1, k, i2, i3]` (ggml's `out_prod`,
/// `a = src[0]`, `b = src[1]`), as one GEMM per (i2, i3) over this thread's rows `i1`.
///
/// # Safety
/// Called by ggml's CPU backend for a node that [`fits`] accepted, with allocated tensors.
pub(crate) unsafe extern "C" fn out_prod_gemm(
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
        let rows = crate::lowrank::share(m, ith, nth);
        if rows.is_empty() || n == 0 {
            return;
        }
        let st = |s: usize| (s / f) as isize;
        for i3 in 0..ne3 {
            for i2 in 0..ne2 {
                let pa = (a.data as *const u8).add((i2 / r2) * a.nb[2] + (i3 / r3) * a.nb[3]);
                let pb =
                    (b.data as *const u8).add(i2 * b.nb[2] + i3 * b.nb[3] + rows.start * b.nb[0]);
                let pd =
                    (d.data as *mut u8).add(i2 * d.nb[2] + i3 * d.nb[3] + rows.start * d.nb[1]);
                if k == 0 {
                    for r in 0..rows.len() {
                        std::slice::from_raw_parts_mut(pd.add(r * d.nb[1]) as *mut f32, n)
                            .fill(0.0);
                    }
                    continue;
                }
                // D (rows x n) = B' (rows x k) · A (k x n), B'[i1][k] = b[i1, k], A[k][i0] = a[i0, k].
                matrixmultiply::sgemm(
                    rows.len(),
                    k,
                    n,
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
}
