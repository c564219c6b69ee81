//! ggml's cross-entropy loss forward with a vectorizable exponential (CPU training graphs).
//!
//! ggml's CPU `cross_entropy_loss` computes each row's log-sum-exp with libm's scalar `expf`:
//! over SmolLM2's 49152-wide logits at ctx 256 that is 3 % of a training step. Its threads
//! then meet at a barrier to add their partial sums, which a custom op cannot do. So
//! [`Graph::use_fast_cross_entropy`] splits the node in two: a custom node computing each
//! row's share of the loss ([`xent_rows`], all threads, rows split), spliced in before it, and
//! the node itself turned into a `sum` of those rows. The backward pass (ggml's
//! `cross_entropy_loss_back`, already vectorized) was built from the original node and is
//! unchanged.
//!
//! Training labels are one-hot, and a dense `[n_vocab, rows]` label tensor (50 MB for SmolLM2
//! at ctx 256) is zeroed, written and read twice every step for one value per row.
//! [`Graph::use_sparse_cross_entropy`] rewrites the loss and its backward node to read the
//! label ids instead (`I32 [rows]`): the loss from each row's log-sum-exp and its label's logit,
//! the gradient `(softmax(l) - onehot) · d / rows` in one exponential pass per row.

use std::os::raw::{c_int, c_void};

use crate::context::{Context, Graph};
use crate::simd::LANES;
use crate::sys;

/// `e^x`, within 3e-7 relative of libm's for `x` in [-87, 88] (clamped outside): a
/// Cody-Waite reduction `x = n·ln2 + r` and a degree-6 polynomial for `e^r`, branch-free so
/// that a loop over it vectorizes.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    // ln 2 in two parts, so that n·LN2_HI is exact
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_52 + r * 0.001_388_89)))));
    // 2^n from t's low mantissa bits (n as an integer), without a float-to-int conversion
    let bits = t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23;
    p * f32::from_bits(bits)
}

/// The largest value of a row (-inf for none), in `LANES` partial maxima so that the loop
/// vectorizes.
#[inline(always)]
pub(crate) fn row_max(l: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = l.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in m.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    tail.iter()
        .chain(&m)
        .fold(f32::NEG_INFINITY, |a, &v| a.max(v))
}

/// `log Σ_j e^(l_j - max)` and `max` of one row.
fn log_sum_exp(l: &[f32]) -> (f32, f32) {
    let max = row_max(l);
    let tail = &l[l.len() - l.len() % LANES..];
    let mut s = [0f32; LANES];
    let chunks = l.chunks_exact(LANES);
    for c in chunks {
        for (a, &v) in s.iter_mut().zip(c) {
            *a += exp(v - max);
        }
    }
    let sum: f64 = s.iter().map(|&v| v as f64).sum::<f64>()
        + tail.iter().map(|&v| exp(v - max) as f64).sum::<f64>();
    ((sum as f32).ln(), max)
}

/// Whether `t` (a `CROSS_ENTROPY_LOSS` node) is one [`xent_rows`] computes: F32 logits and
/// labels of the same shape with contiguous rows, a scalar F32 output.
///
/// # Safety
/// `t` is a valid `CROSS_ENTROPY_LOSS` node with both sources set.
unsafe fn fits(t: &sys::ggml_tensor) -> bool {
    let (a, b) = (&*t.src[0], &*t.src[1]);
    let f = std::mem::size_of::<f32>();
    let f32 = sys::GGML_TYPE_F32;
    a.type_ == f32
        && b.type_ == f32
        && t.type_ == f32
        && a.ne == b.ne
        && a.nb[0] == f
        && b.nb[0] == f
        && a.ne[0] > 0
        && t.ne == [1, 1, 1, 1]
}

/// `dst[r] = -Σ_j labels[j, r] · log_softmax(logits[·, r])_j / rows` for this thread's rows
/// (`src = [logits, labels]`, rows over ne1..ne3): ggml's loss is the sum of `dst`.
///
/// # Safety
/// Called by ggml's CPU backend for a node built by [`Graph::use_fast_cross_entropy`] (its
/// sources passed [`fits`]), with allocated tensors.
unsafe extern "C" fn xent_rows(
    dst: *mut sys::ggml_tensor,
    ith: c_int,
    nth: c_int,
    _userdata: *mut c_void,
) {
    // SAFETY: ggml passes the node it computes; `fits` checked that logits and labels are F32
    // tensors of one shape with contiguous rows, and `dst` is the F32 vector of one value per
    // row made for them.
    unsafe {
        let d = &*dst;
        let (a, b) = (&*d.src[0], &*d.src[1]);
        let nc = a.ne[0] as usize;
        let rows = sys::ggml_nrows(a) as usize;
        let out = std::slice::from_raw_parts_mut(d.data as *mut f32, rows);
        for r in crate::lowrank::share(rows, ith, nth) {
            let (l, lab) = (f32_row(a, r, nc), f32_row(b, r, nc));
            let (lse, max) = log_sum_exp(l);
            // Σ lab·(l - max - lse) = Σ lab·(l - max) - lse·Σ lab
            let (mut dot, mut mass) = ([0f32; LANES], [0f32; LANES]);
            for (cl, cb) in l.chunks_exact(LANES).zip(lab.chunks_exact(LANES)) {
                for k in 0..LANES {
                    dot[k] += cb[k] * (cl[k] - max);
                    mass[k] += cb[k];
                }
            }
            let tail = nc - nc % LANES;
            let dot: f64 = dot.iter().map(|&v| v as f64).sum::<f64>()
                + (tail..nc)
                    .map(|j| (lab[j] * (l[j] - max)) as f64)
                    .sum::<f64>();
            let mass: f64 = mass.iter().map(|&v| v as f64).sum::<f64>()
                + lab[tail..].iter().map(|&v| v as f64).sum::<f64>();
            out[r] = (-(dot - lse as f64 * mass) / rows as f64) as f32;
        }
    }
}

/// `dst[r] = -(l[id_r] - max_r - lse_r) / rows`, the sparse-label [`xent_rows`]
/// (`src = [logits, ids]`, `ids` I32 with one label per row).
///
/// # Safety
/// Called by ggml's CPU backend for a node built by [`Graph::use_sparse_cross_entropy`] (its
/// sources passed [`sparse_fits`]), with allocated tensors.
unsafe extern "C" fn xent_rows_sparse(
    dst: *mut sys::ggml_tensor,
    ith: c_int,
    nth: c_int,
    _userdata: *mut c_void,
) {
    // SAFETY: ggml passes the node it computes; `sparse_fits` checked the logits (F32,
    // contiguous rows) and the ids (I32, contiguous, one per row); `dst` has one F32 per row.
    unsafe {
        let d = &*dst;
        let (a, ids) = (&*d.src[0], &*d.src[1]);
        let nc = a.ne[0] as usize;
        let rows = sys::ggml_nrows(a) as usize;
        let ids = std::slice::from_raw_parts(ids.data as *const i32, rows);
        let out = std::slice::from_raw_parts_mut(d.data as *mut f32, rows);
        for r in crate::lowrank::share(rows, ith, nth) {
            // A row without a label adds nothing, as an all-zero row of dense labels.
            out[r] = label(ids[r], nc).map_or(0.0, |j| {
                let l = f32_row(a, r, nc);
                let (lse, max) = log_sum_exp(l);
                (-((l[j] - max) as f64 - lse as f64) / rows as f64) as f32
            });
        }
    }
}

/// `dst[·, r] = (softmax(l[·, r]) - onehot(id_r)) · d / rows`, ggml's
/// `cross_entropy_loss_back` for one-hot labels given as ids (`src = [d, logits, ids]`, `d`
/// the loss's F32 scalar gradient).
///
/// # Safety
/// As [`xent_rows_sparse`]; `dst` is F32 with the logits' shape and contiguous rows.
unsafe extern "C" fn xent_back_sparse(
    dst: *mut sys::ggml_tensor,
    ith: c_int,
    nth: c_int,
    _userdata: *mut c_void,
) {
    // SAFETY: as in `xent_rows_sparse`; `dst` is the rewritten backward node, F32, contiguous,
    // with the logits' shape, and `d` an F32 scalar (checked by `use_sparse_cross_entropy`).
    unsafe {
        let t = &*dst;
        let (g, a, ids) = (&*t.src[0], &*t.src[1], &*t.src[2]);
        let nc = a.ne[0] as usize;
        let rows = sys::ggml_nrows(a) as usize;
        let d_by_rows = *(g.data as *const f32) / rows as f32;
        let ids = std::slice::from_raw_parts(ids.data as *const i32, rows);
        for r in crate::lowrank::share(rows, ith, nth) {
            let l = f32_row(a, r, nc);
            let out = std::slice::from_raw_parts_mut(
                (t.data as *mut u8).add(row_offset(t, r)) as *mut f32,
                nc,
            );
            let max = row_max(l);
            let mut s = [0f32; LANES];
            let (oc, lc) = (out.chunks_exact_mut(LANES), l.chunks_exact(LANES));
            let tail = nc - nc % LANES;
            for (o, v) in oc.zip(lc) {
                for k in 0..LANES {
                    o[k] = exp(v[k] - max);
                    s[k] += o[k];
                }
            }
            let mut sum: f64 = s.iter().map(|&v| v as f64).sum();
            for j in tail..nc {
                out[j] = exp(l[j] - max);
                sum += out[j] as f64;
            }
            let k = (d_by_rows as f64 / sum) as f32;
            for o in out.iter_mut() {
                *o *= k;
            }
            if let Some(j) = label(ids[r], nc) {
                out[j] -= d_by_rows;
            }
        }
    }
}

/// Turns loss node `t` into the `sum` of a new custom node that computes its per-row losses from
/// `args` (the logits first) with `fun`, one F32 per row; returns that node, which the caller
/// splices in before `t`.
///
/// # Safety
/// `t` is a valid `CROSS_ENTROPY_LOSS` node, `args` valid tensors of `ctx`'s graph that `fun`
/// accepts, and `ctx` has room for one more tensor.
unsafe fn into_sum_of_rows(
    ctx: &Context,
    t: &mut sys::ggml_tensor,
    args: &mut [*mut sys::ggml_tensor],
    fun: crate::lowrank::CustomFn,
) -> *mut sys::ggml_tensor {
    // SAFETY: per the contract; the loss stays a scalar, now the sum of the rows' shares.
    unsafe {
        let rows = sys::ggml_nrows(args[0]);
        let per_row = ctx.custom_f32(args, [rows, 1], fun, 0.0).raw();
        t.op = sys::GGML_OP_SUM;
        t.src[0] = per_row;
        t.src[1] = std::ptr::null_mut();
        t.op_params = [0; 16];
        per_row
    }
}

/// Row `r` (over ne1..ne3) of a tensor with contiguous rows: its byte offset.
fn row_offset(t: &sys::ggml_tensor, r: usize) -> usize {
    let (n1, n2) = (t.ne[1] as usize, t.ne[2] as usize);
    (r % n1) * t.nb[1] + ((r / n1) % n2) * t.nb[2] + (r / (n1 * n2)) * t.nb[3]
}

/// Row `r` (over ne1..ne3) of an F32 tensor, `nc` values.
///
/// # Safety
/// `a` is an allocated F32 tensor with contiguous rows of `nc` values and more than `r` rows.
unsafe fn f32_row(a: &sys::ggml_tensor, r: usize, nc: usize) -> &[f32] {
    // SAFETY: per the contract.
    unsafe {
        std::slice::from_raw_parts(
            (a.data as *const u8).add(row_offset(a, r)) as *const f32,
            nc,
        )
    }
}

/// A label id as a column (`None` out of range: that row then has no label, as an all-zero
/// row of dense labels).
fn label(id: i32, nc: usize) -> Option<usize> {
    usize::try_from(id).ok().filter(|&j| j < nc)
}

/// Whether `ids` holds one I32 label per row of the F32 `logits` (with contiguous rows) for the
/// sparse rewrite.
///
/// # Safety
/// Valid tensors.
unsafe fn sparse_fits(logits: &sys::ggml_tensor, ids: &sys::ggml_tensor) -> bool {
    let f = std::mem::size_of::<f32>();
    // SAFETY: valid tensors (the caller's promise).
    unsafe {
        logits.type_ == sys::GGML_TYPE_F32
            && logits.nb[0] == f
            && logits.ne[0] > 0
            && ids.type_ == sys::GGML_TYPE_I32
            && sys::ggml_is_contiguous(ids)
            && sys::ggml_nelements(ids) == sys::ggml_nrows(logits)
    }
}

impl<'ctx> Graph<'ctx> {
    /// Rewrites the cross entropy of logits against the one-hot `labels` to read the label ids
    /// `ids` instead (I32, one per row; an id outside the vocabulary gives its row no label):
    /// the forward as per-row losses and their `sum` (as [`Graph::use_fast_cross_entropy`]),
    /// each `cross_entropy_loss_back` that reads `labels` as a custom node computing the
    /// logits' gradient in place of it. CPU backend only. Returns whether `labels` is still
    /// read by the graph (then it must be written too; when a node could not be rewritten).
    /// Call after `build_backward_expand`, before allocation.
    pub fn use_sparse_cross_entropy(
        &mut self,
        ctx: &'ctx Context,
        labels: crate::Tensor<'ctx>,
        ids: crate::Tensor<'ctx>,
    ) -> bool {
        let (labels, ids) = (labels.raw(), ids.raw());
        let g = self.ptr.as_ptr();
        // SAFETY: valid graph, context and tensors; every node index is below n_nodes. The
        // forward node becomes a sum of a new custom node spliced in before it (reading the
        // logits and the ids, both computed or set before it); a backward node becomes a
        // custom node with the same output and shape, reading the same gradient and logits.
        unsafe {
            let n_nodes = sys::ggml_graph_n_nodes(g) as usize;
            let nodes = sys::ggml_graph_nodes(g);
            let mut inserts = Vec::new();
            let mut back_params = None;
            for i in 0..n_nodes {
                let t = &mut **nodes.add(i);
                if t.op == sys::GGML_OP_CROSS_ENTROPY_LOSS
                    && t.src[1] == labels
                    && !t.src[0].is_null()
                    && sparse_fits(&*t.src[0], &*ids)
                    && n_nodes + inserts.len() < sys::ggml_graph_size(g) as usize
                    && sys::ggml_get_mem_size(ctx.raw()) - sys::ggml_used_mem(ctx.raw())
                        > 2 * (sys::ggml_tensor_overhead() + 64)
                {
                    let per_row = into_sum_of_rows(ctx, t, &mut [t.src[0], ids], xent_rows_sparse);
                    inserts.push((i, vec![per_row]));
                } else if t.op == sys::GGML_OP_CROSS_ENTROPY_LOSS_BACK
                    && t.src[2] == labels
                    && !t.src[0].is_null()
                    && !t.src[1].is_null()
                    && (*t.src[0]).type_ == sys::GGML_TYPE_F32
                    && sys::ggml_nelements(t.src[0]) == 1
                    && t.type_ == sys::GGML_TYPE_F32
                    && sys::ggml_are_same_shape(t, t.src[1])
                    && sys::ggml_is_contiguous(t)
                    && sparse_fits(&*t.src[1], &*ids)
                {
                    let params = match back_params {
                        Some(p) => p,
                        None => match crate::outprod::custom_params(
                            ctx,
                            xent_back_sparse,
                            std::ptr::null_mut(),
                        ) {
                            Some(p) => *back_params.insert(p),
                            None => continue,
                        },
                    };
                    t.op = sys::GGML_OP_CUSTOM;
                    t.op_params = params;
                    t.src[2] = ids;
                }
            }
            if !inserts.is_empty() {
                self.splice(&inserts);
            }
            let n_nodes = sys::ggml_graph_n_nodes(g) as usize;
            (0..n_nodes).any(|i| (**nodes.add(i)).src.contains(&labels))
        }
    }

    /// Rewrites each `cross_entropy_loss(logits, labels)` node into a `sum` over a new custom
    /// node of per-row losses ([`xent_rows`], a vectorizable exponential instead of libm's
    /// scalar one), spliced in before it: the same loss up to f32 rounding (the exponential is
    /// within 3e-7 of libm's). CPU backend only. Returns how many nodes were rewritten; none
    /// when the graph or the context has no room. Call after `build_backward_expand` (the
    /// backward pass, built from the original node, is unchanged), before allocation.
    pub fn use_fast_cross_entropy(&mut self, ctx: &'ctx Context) -> usize {
        let g = self.ptr.as_ptr();
        // SAFETY: valid graph and context; every node index is below n_nodes. Each new node
        // reads the logits and labels, computed before the loss node it goes in front of, and
        // the loss node becomes a sum of it (a scalar, as before).
        unsafe {
            let n_nodes = sys::ggml_graph_n_nodes(g) as usize;
            let nodes = sys::ggml_graph_nodes(g);
            let plan: Vec<usize> = (0..n_nodes)
                .filter(|&i| {
                    let t = &**nodes.add(i);
                    t.op == sys::GGML_OP_CROSS_ENTROPY_LOSS
                        && !t.src[0].is_null()
                        && !t.src[1].is_null()
                        && fits(t)
                })
                .collect();
            let room = sys::ggml_get_mem_size(ctx.raw()) - sys::ggml_used_mem(ctx.raw());
            if plan.is_empty()
                || n_nodes + plan.len() > sys::ggml_graph_size(g) as usize
                || room < plan.len() * (sys::ggml_tensor_overhead() + 64)
            {
                return 0;
            }
            let mut inserts = Vec::with_capacity(plan.len());
            for &i in &plan {
                let t = &mut **nodes.add(i);
                let per_row = into_sum_of_rows(ctx, t, &mut [t.src[0], t.src[1]], xent_rows);
                inserts.push((i, vec![per_row]));
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
    fn exp_is_within_3e_7_of_libm() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -87.0 + i as f32 * (175.0 / 200_000.0);
            let (a, b) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(1000.0).is_finite());
    }
}
