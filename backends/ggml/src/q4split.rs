//! Q4_1 weights split into a Q4_0 part and per-block offsets, for fast prompt-sized products
//! with the exact values of ggml's Q4_1 path (CPU training graphs).
//!
//! A Q4_1 block holds 32 weights `d·q + m` (`q` in 0..16). ggml multiplies it with activations
//! rounded to Q8_1 blocks (`d_x`, `q_x`, and `s_x = d_x·Σq_x` stored as F16) one row at a time:
//! `d·d_x·Σ q·q_x + m·s_x` per block, with no GEMM kernel for the type. Writing
//! `d·q + m = d·(q − 8) + (m + 8d)` splits the product in two:
//! - `d·(q − 8)` is a Q4_0 block with the same scale and the same nibbles (a byte copy), which
//!   ggml multiplies with activations rounded to Q8_0 blocks (the same `d_x` and `q_x` as Q8_1)
//!   in llamafile's tinyBLAS GEMM: `d·d_x·Σ (q − 8)·q_x`;
//! - the rest, `m·s_x + 8d·d_x·Σq_x`, is a small F32 product (1/16 of the work) of per-block
//!   offsets `[m, 8d]` with per-block sums of the rounded activations `[s_x, d_x·Σq_x]`, which
//!   [`q8_block_sums`] computes the way ggml's Q8_1 quantization does.
//!
//! The sum of the two is ggml's Q4_1 product up to the order of f32 additions (the integer
//! parts are exact), at about the speed of a Q8_0 matrix.

use std::collections::HashMap;
use std::os::raw::{c_int, c_void};
use std::ptr::NonNull;

use half::f16;

use crate::context::{Context, Graph, Tensor, TensorId};
use crate::sys;

/// Weights per Q4_1 / Q8 block.
pub const BLOCK: usize = 32;
/// Bytes of a Q4_1 block: `d`, `m` (F16) and 16 bytes of nibbles.
const Q4_1_BYTES: usize = 20;

/// Splits one Q4_1 row of `n` weights (`raw`, ggml's bytes) into its Q4_0 part (appended to
/// `q4_0`) and its offsets `[m, 8d]` per block (appended to `offsets`). `None` when `raw` is
/// not `n` weights of Q4_1.
pub fn split_q4_1_row(
    raw: &[u8],
    n: usize,
    q4_0: &mut Vec<u8>,
    offsets: &mut Vec<f32>,
) -> Option<()> {
    if !n.is_multiple_of(BLOCK) || raw.len() != n / BLOCK * Q4_1_BYTES {
        return None;
    }
    for b in raw.chunks_exact(Q4_1_BYTES) {
        let d = f16::from_le_bytes([b[0], b[1]]);
        let m = f16::from_le_bytes([b[2], b[3]]);
        q4_0.extend_from_slice(&b[0..2]); // the same scale
        q4_0.extend_from_slice(&b[4..]); // the same nibbles, now read as q − 8
        offsets.push(m.to_f32());
        offsets.push(8.0 * d.to_f32()); // exact: a power of two times an F16 value
    }
    Some(())
}

/// Whether `x` (the activations of a Q4_1 product) is a shape [`q8_block_sums`] reads: F32,
/// rows contiguous and a whole number of blocks, 2-D.
///
/// # Safety
/// `x` is a valid tensor.
unsafe fn sums_fit(x: &sys::ggml_tensor) -> bool {
    x.type_ == sys::GGML_TYPE_F32
        && x.nb[0] == std::mem::size_of::<f32>()
        && (x.ne[0] as usize).is_multiple_of(BLOCK)
        && x.ne[2] == 1
        && x.ne[3] == 1
}

/// Per block of 32 activations, rounded as ggml's Q8_1 quantization rounds them (`d = amax /
/// 127`, `q = round(x · 127 / amax)` ties to even), the pair `[f16(d·Σq), f16(d)·Σq]`: what
/// the offsets `[m, 8d]` multiply. `dst [2·n/32, T]`, `src[0] = x [n, T]`.
///
/// # Safety
/// Called by ggml's CPU backend for a node built by [`crate::Graph::use_q4_1_split`] (its
/// source passed [`sums_fit`]), with allocated tensors.
unsafe extern "C" fn q8_block_sums(
    dst: *mut sys::ggml_tensor,
    ith: c_int,
    nth: c_int,
    _userdata: *mut c_void,
) {
    // SAFETY: ggml passes the node it computes; `x` has T rows of n contiguous F32 values
    // (`sums_fit`) and `dst` is the contiguous F32 [2·n/32, T] tensor made for them.
    unsafe {
        let d = &*dst;
        let x = &*d.src[0];
        let n = x.ne[0] as usize;
        let t = x.ne[1] as usize;
        for row in crate::lowrank::share(t, ith, nth) {
            let xs = std::slice::from_raw_parts(
                (x.data as *const u8).add(row * x.nb[1]) as *const f32,
                n,
            );
            let out = std::slice::from_raw_parts_mut(
                (d.data as *mut u8).add(row * d.nb[1]) as *mut f32,
                2 * n / BLOCK,
            );
            for (blk, o) in xs.chunks_exact(BLOCK).zip(out.chunks_exact_mut(2)) {
                let [s, s8] = block_sums(blk);
                o[0] = s;
                o[1] = s8;
            }
        }
    }
}

/// `[f16(d·Σq), f16(d)·Σq]` of one block, as ggml's `quantize_row_q8_1` rounds it (its x86
/// and NEON versions; ties to even, as both round).
fn block_sums(x: &[f32]) -> [f32; 2] {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    // The reciprocal as ggml's quantizer of this architecture computes it (its x86 code
    // divides 127 by amax, its NEON code 1 by d: they can differ in the last bit).
    let id = if amax == 0.0 {
        0.0
    } else if cfg!(any(target_arch = "x86_64", target_arch = "x86")) {
        127.0 / amax
    } else {
        1.0 / d
    };
    // |v·id| <= 127: adding and subtracting 1.5·2^23 rounds to an integer in the FPU's
    // round-to-nearest-even mode, as ggml's `_mm256_round_ps(_MM_ROUND_NEAREST)` does, and
    // vectorizes (`round_ties_even` is a libm call on baseline x86-64).
    const MAGIC: f32 = 12_582_912.0;
    let sum: f32 = x.iter().map(|v| (v * id + MAGIC) - MAGIC).sum();
    let sum = sum as i32 as f32; // an exact integer (|sum| <= 32·127)
    [
        f16::from_f32(d * sum).to_f32(),
        f16::from_f32(d).to_f32() * sum,
    ]
}

impl<'ctx> Graph<'ctx> {
    /// Rewrites each `mul_mat(W, x)` whose weight `lookup` maps to its split `(q4_0, offsets)`
    /// (see the module doc; `q4_0` ne = W's, `offsets` F32 `[2·n_in/32, n_out]`) into
    /// `mul_mat(q4_0, x) + mul_mat(offsets, sums(x))`, the block sums computed once per
    /// activation tensor. The node keeps its identity (an `add` of the two new products), so the
    /// backward pass, built before from `W`, is untouched. CPU backend only. Returns how many
    /// products were rewritten; none when the graph or the context has no room for the new
    /// nodes. Call after `build_backward_expand`, before allocation.
    pub fn use_q4_1_split<'w>(
        &mut self,
        ctx: &'ctx Context,
        mut lookup: impl FnMut(TensorId) -> Option<(Tensor<'w>, Tensor<'w>)>,
    ) -> usize
    where
        'w: 'ctx,
    {
        let g = self.ptr.as_ptr();
        // SAFETY: valid graph; the node array holds n_nodes valid tensors. The new nodes read
        // only tensors computed before the node they replace the sources of, and go right
        // before it (`splice`), within the graph's capacity (checked first).
        unsafe {
            let n_nodes = sys::ggml_graph_n_nodes(g) as usize;
            let cap = sys::ggml_graph_size(g) as usize;
            let nodes = sys::ggml_graph_nodes(g);
            let mut plan = Vec::new();
            for i in 0..n_nodes {
                let t = &**nodes.add(i);
                if t.op != sys::GGML_OP_MUL_MAT || t.src[0].is_null() || t.src[1].is_null() {
                    continue;
                }
                let (w, x) = (&*t.src[0], &*t.src[1]);
                let Some((q, off)) = lookup(TensorId(NonNull::new_unchecked(t.src[0]))) else {
                    continue;
                };
                let nb = w.ne[0] / BLOCK as i64;
                if q.ne() != w.ne
                    || q.ty().0 != sys::GGML_TYPE_Q4_0
                    || off.ty().0 != sys::GGML_TYPE_F32
                    || off.ne() != [2 * nb, w.ne[1], 1, 1]
                    || w.ne[2] != 1
                    || w.ne[3] != 1
                    || !sums_fit(x)
                {
                    continue;
                }
                plan.push((i, q, off));
            }
            // At most four new tensors per product (sums, two products; the node itself is
            // reused), three of them nodes.
            let room = sys::ggml_get_mem_size(ctx.raw()) - sys::ggml_used_mem(ctx.raw());
            if plan.is_empty()
                || n_nodes + 3 * plan.len() > cap
                || room < 4 * plan.len() * (sys::ggml_tensor_overhead() + 64)
            {
                return 0;
            }
            let mut inserts = Vec::with_capacity(plan.len());
            let mut sums: HashMap<*mut sys::ggml_tensor, *mut sys::ggml_tensor> = HashMap::new();
            for &(i, q, off) in &plan {
                let node = *nodes.add(i);
                let x = (*node).src[1];
                let mut new = Vec::with_capacity(3);
                let s = match sums.get(&x) {
                    Some(&s) => s,
                    None => {
                        let ne = [2 * (*x).ne[0] / BLOCK as i64, (*x).ne[1]];
                        let s = ctx.custom_f32(&mut [x], ne, q8_block_sums, 0.0).raw();
                        sums.insert(x, s);
                        new.push(s);
                        s
                    }
                };
                let main = sys::ggml_mul_mat(ctx.raw(), q.raw(), x);
                let rest = sys::ggml_mul_mat(ctx.raw(), off.raw(), s);
                new.extend([main, rest]);
                let t = &mut *node;
                t.op = sys::GGML_OP_ADD;
                t.src[0] = main;
                t.src[1] = rest;
                t.op_params = [0; 16];
                inserts.push((i, new));
            }
            self.splice(&inserts);
            plan.len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_recovers_the_q4_1_values() {
        // one block: d = 0.5, m = -1.25, nibbles 0..16 twice
        let mut raw = Vec::new();
        raw.extend(f16::from_f32(0.5).to_le_bytes());
        raw.extend(f16::from_f32(-1.25).to_le_bytes());
        raw.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let (mut q, mut off) = (Vec::new(), Vec::new());
        split_q4_1_row(&raw, 32, &mut q, &mut off).unwrap();
        assert_eq!(q.len(), 18);
        assert_eq!(off, vec![-1.25, 4.0]);
        let d = f16::from_le_bytes([q[0], q[1]]).to_f32();
        for (j, &byte) in q[2..].iter().enumerate() {
            for (k, nib) in [(j, byte & 15), (j + 16, byte >> 4)] {
                let q41 = if k < 16 { k as f32 } else { (31 - k) as f32 };
                let want = 0.5 * q41 - 1.25;
                let got = d * (nib as f32 - 8.0) + off[0] + off[1];
                assert_eq!(got, want, "weight {k}");
            }
        }
        assert!(split_q4_1_row(&raw[..19], 32, &mut q, &mut off).is_none());
    }
}
