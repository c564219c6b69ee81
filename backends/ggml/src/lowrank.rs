//! Adapter updates as single graph nodes (CPU backend): a low-rank update of one token
//! (WeGeFT) and a block-diagonal one of any number of tokens (DiaBlo).
//!
//! `base + s · m2 (m1 x)` is what a LoRA delta (`y + s·B(Ax)`) and a WeGeFT input update
//! (`x + s·φᵀ(ψx)`) compute. In standard ops that is four nodes (two matmuls, a scale, an add);
//! at decode, with one token, each does a few thousand multiply-adds and then waits at ggml's
//! thread barrier, so an adapter on every target costs more in barriers than in arithmetic.
//! [`Context::low_rank_update`] does it in one custom node: every thread computes the rank-r
//! vector `m1 x` (a few microseconds) and then its share of the output rows.
//!
//! Rounding follows ggml's `mul_mat`: when a matrix is F16, the vector it multiplies is
//! rounded to F16 first (ggml converts `src1` to the weights' `vec_dot_type`), and products
//! are summed in f32. Only the summation order differs from the four-node path.
//!
//! ggml's custom ops run on the CPU backend only and have no backward pass: callers use this
//! for inference on the CPU and keep the standard-op path for training and other backends.
//! [`Context::block_diag_update`] does the same for DiaBlo's `y + s·blockdiag(D) x` (a batched
//! matmul and an add), for prompts too: ggml's batched matmul spends a function call per
//! bs_in-long dot product (9 values for SmolLM2 at N=64), which cost more than the arithmetic.
//! graft uses both for the kinds whose reference is a merged-weight model (WeGeFT, DiaBlo),
//! not for LoRA:
//! a different summation order moves LoRA's results off llama.cpp's bit for bit, and through
//! an F16 KV cache such last-bit changes can grow to a flipped greedy token.

use std::borrow::Cow;
use std::os::raw::{c_int, c_void};

use half::f16;

use crate::context::{Context, Tensor};
use crate::simd::{dot, vectorized, Kernel};
use crate::sys;

/// The most multiply-adds (`r · (n_in + n_out)`) an update may have to be fused.
pub const MAX_FUSED_MACS: i64 = 65_536;

/// Element types the update reads its matrices in.
fn supported(t: u32) -> bool {
    t == sys::GGML_TYPE_F32 || t == sys::GGML_TYPE_F16
}

impl Context {
    /// `base + s · m2 (m1 x)` for one token, as one node: `x [n_in, 1]`, `m1 [n_in, r]`
    /// (ggml layout: rows of length n_in), `m2 [r, n_out]`, `base [n_out, 1]`, all of them
    /// contiguous, `x` and `base` F32, the matrices F32 or F16, at most [`MAX_FUSED_MACS`]
    /// multiply-adds. `None` when the shapes or types do not fit (or a matrix is a trainable
    /// parameter: the node has no gradient), so the caller builds the standard-op graph
    /// instead.
    pub fn low_rank_update<'a>(
        &'a self,
        base: Tensor<'a>,
        x: Tensor<'a>,
        m1: Tensor<'a>,
        m2: Tensor<'a>,
        s: f32,
    ) -> Option<Tensor<'a>> {
        if !Self::fits_update(base, x, m1, m2) {
            return None;
        }
        Some(self.custom_f32(
            &mut [base.raw(), x.raw(), m1.raw(), m2.raw()],
            [m2.ne()[1], 1],
            update,
            s,
        ))
    }

    /// Whether [`Context::low_rank_update`] takes these operands.
    fn fits_update(base: Tensor<'_>, x: Tensor<'_>, m1: Tensor<'_>, m2: Tensor<'_>) -> bool {
        let [n_in, n, ..] = x.ne();
        let [k1, r, ..] = m1.ne();
        let [k2, n_out, ..] = m2.ne();
        let shapes_fit = n == 1
            && k1 == n_in
            && k2 == r
            && base.ne() == [n_out, 1, 1, 1]
            && x.ne()[2..] == [1, 1]
            && m1.ne()[2..] == [1, 1]
            && m2.ne()[2..] == [1, 1];
        let types_fit = x.ty().0 == sys::GGML_TYPE_F32
            && base.ty().0 == sys::GGML_TYPE_F32
            && supported(m1.ty().0)
            && supported(m2.ty().0);
        // Small updates only: every thread computes `m1 x` itself, which pays while the
        // arithmetic is cheaper than the three barriers it saves (a rank-16 update of a
        // 576 x 1536 layer is 34k multiply-adds; rank 64 is measured slower fused).
        let small = r * (n_in + n_out) <= MAX_FUSED_MACS;
        let all = [base, x, m1, m2];
        shapes_fit
            && small
            && types_fit
            && all.iter().all(|t| t.is_contiguous())
            && !m1.is_param()
            && !m2.is_param()
    }

    /// [`Context::low_rank_update`] of several targets that read the same one-token input, as
    /// one node: column j of the `[n_in, k]` result is `x + s · m2_j (m1_j x)` for the j-th
    /// pair `(m1_j [n_in, r_j], m2_j [r_j, n_in])` of `pairs` (WeGeFT's `W(x + s φᵀψx)` inputs
    /// of q, k, v, or of gate and up, whose base products then read views of the columns). Each
    /// column equals the single update's result bit for bit. `None` unless every pair fits
    /// [`Context::low_rank_update`] with `base = x`, and for more than four pairs.
    pub fn low_rank_updates<'a>(
        &'a self,
        x: Tensor<'a>,
        pairs: &[(Tensor<'a>, Tensor<'a>)],
        s: f32,
    ) -> Option<Tensor<'a>> {
        let n_in = x.ne()[0];
        if pairs.is_empty()
            || pairs.len() > 4
            || !pairs
                .iter()
                .all(|&(m1, m2)| m2.ne()[1] == n_in && Self::fits_update(x, x, m1, m2))
        {
            return None;
        }
        let mut args = vec![x.raw()];
        for (m1, m2) in pairs {
            args.extend([m1.raw(), m2.raw()]);
        }
        Some(self.custom_f32(&mut args, [n_in, pairs.len() as i64], update_stacked, s))
    }

    /// `base + s · blockdiag(D) x` for `n` tokens, as one node: `d [bs_in, bs_out, N]` (F32 or
    /// F16, contiguous) whose N blocks tile `x [N·bs_in, n]` and `base [N·bs_out, n]` (F32)
    /// exactly: DiaBlo's update at decode and over a prompt. `None` when they do not tile, for
    /// trainable blocks, and for other types, so the caller builds the standard-op graph.
    /// Threads split the (token, block) pairs; a block's products are rounded as ggml's
    /// batched `mul_mat` rounds them.
    pub fn block_diag_update<'a>(
        &'a self,
        base: Tensor<'a>,
        x: Tensor<'a>,
        d: Tensor<'a>,
        s: f32,
    ) -> Option<Tensor<'a>> {
        let [bi, bo, nb, one] = d.ne();
        let n = x.ne()[1];
        let fits = one == 1
            && x.ne() == [nb * bi, n, 1, 1]
            && base.ne() == [nb * bo, n, 1, 1]
            && x.ty().0 == sys::GGML_TYPE_F32
            && base.ty().0 == sys::GGML_TYPE_F32
            && supported(d.ty().0)
            && [base, x, d].iter().all(|t| t.is_contiguous())
            && !d.is_param();
        if !fits {
            return None;
        }
        Some(self.custom_f32(
            &mut [base.raw(), x.raw(), d.raw()],
            [nb * bo, n],
            block_diag,
            s,
        ))
    }

    /// A custom node computing an F32 `[ne0, ne1]` tensor from `args` with `fun`, all
    /// threads, the scale `s` carried in the userdata pointer's bits (nothing to keep alive).
    pub(crate) fn custom_f32(
        &self,
        args: &mut [*mut sys::ggml_tensor],
        [ne0, ne1]: [i64; 2],
        fun: CustomFn,
        s: f32,
    ) -> Tensor<'_> {
        // The scale travels in the userdata pointer's bits; `scale_of` reads it back.
        let userdata = s.to_bits() as usize as *mut c_void;
        // SAFETY: valid context and tensors (the callers checked them); `args` is read during
        // the call only; ggml keeps the tensors as the node's sources and calls `fun` with them
        // during compute.
        let p = unsafe {
            sys::ggml_custom_4d(
                self.raw(),
                sys::GGML_TYPE_F32,
                ne0,
                ne1,
                1,
                1,
                args.as_mut_ptr(),
                args.len() as c_int,
                Some(fun),
                sys::GGML_N_TASKS_MAX,
                userdata,
            )
        };
        self.wrap(p)
    }
}

/// A custom op's compute function as ggml calls it: the node, this thread's index, the
/// thread count, the node's userdata.
pub(crate) type CustomFn = unsafe extern "C" fn(*mut sys::ggml_tensor, c_int, c_int, *mut c_void);

/// The scale [`Context::custom_f32`] stored in the userdata pointer's bits.
fn scale_of(userdata: *mut c_void) -> f32 {
    f32::from_bits(userdata as usize as u32)
}

/// The part of `0..n` that thread `ith` of `nth` computes.
pub(crate) fn share(n: usize, ith: c_int, nth: c_int) -> std::ops::Range<usize> {
    let (ith, nth) = (ith.max(0) as usize, nth.max(1) as usize);
    n * ith / nth..n * (ith + 1) / nth
}

/// A thread's part of a batched product: which batches, and which rows and columns of each.
pub(crate) struct Share {
    pub batches: std::ops::Range<usize>,
    pub rows: std::ops::Range<usize>,
    pub cols: std::ops::Range<usize>,
}

impl Share {
    /// Whether this thread has nothing to do.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty() || self.rows.is_empty() || self.cols.is_empty()
    }
}

/// Thread `ith`'s part of `batches` outputs of `rows x cols`. Whole batches where they divide
/// evenly among the threads or are many (DiaBlo's 64 small blocks: one GEMM call per block
/// and thread costs more than the block's arithmetic); else its share of every batch's rows,
/// or, where there are fewer rows than columns and `cols_ok`, of its columns (so that a
/// rank-sized side is not cut into slivers).
pub(crate) fn share_batched(
    batches: usize,
    rows: usize,
    cols: usize,
    cols_ok: bool,
    ith: c_int,
    nth: c_int,
) -> Share {
    let threads = nth.max(1) as usize;
    if batches >= threads && (batches.is_multiple_of(threads) || batches >= 8 * threads) {
        return Share {
            batches: share(batches, ith, nth),
            rows: 0..rows,
            cols: 0..cols,
        };
    }
    let (rows, cols) = match cols_ok && rows < cols {
        true => (0..rows, share(cols, ith, nth)),
        false => (share(rows, ith, nth), 0..cols),
    };
    Share {
        batches: 0..batches,
        rows,
        cols,
    }
}

/// A contiguous F32 or F16 tensor's elements.
#[derive(Clone, Copy)]
enum Elems<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// A contiguous tensor of one of the element types [`supported`] admits, row by row.
#[derive(Clone, Copy)]
struct Matrix<'a> {
    elems: Elems<'a>,
    cols: usize,
}

impl<'a> Matrix<'a> {
    /// # Safety
    /// `t` is an allocated, contiguous F32 or F16 tensor that nothing writes while the value
    /// lives.
    unsafe fn of(t: &'a sys::ggml_tensor) -> Self {
        let len = t.ne.iter().product::<i64>() as usize;
        // SAFETY: per the contract, `len` elements of the tensor's type lie at `data`.
        let elems = unsafe {
            match t.type_ == sys::GGML_TYPE_F16 {
                true => Elems::F16(std::slice::from_raw_parts(t.data as *const f16, len)),
                false => Elems::F32(std::slice::from_raw_parts(t.data as *const f32, len)),
            }
        };
        Matrix {
            elems,
            cols: t.ne[0] as usize,
        }
    }

    fn is_f16(&self) -> bool {
        matches!(self.elems, Elems::F16(_))
    }

    /// Row `i`: borrowed (F32) or converted into `buf` (F16).
    #[inline(always)]
    fn row<'b>(&'b self, i: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
        self.rows(i..i + 1, buf)
    }

    /// Rows `rows`, one after the other: borrowed (F32) or converted into `buf` (F16) in one
    /// go (short rows converted one by one cost more in calls than in conversion).
    #[inline(always)]
    fn rows<'b>(&'b self, rows: std::ops::Range<usize>, buf: &'b mut Vec<f32>) -> &'b [f32] {
        let span = rows.start * self.cols..rows.end * self.cols;
        match self.elems {
            Elems::F32(v) => &v[span],
            Elems::F16(h) => {
                buf.resize(span.len(), 0.0);
                f16_to_f32(&h[span], buf);
                buf
            }
        }
    }
}

/// The vector a matrix of this type multiplies, rounded as ggml's `mul_mat` rounds it.
fn as_operand(v: &[f32], f16_matrix: bool) -> Cow<'_, [f32]> {
    if f16_matrix {
        let mut out = vec![0f32; v.len()];
        round_to_f16(v, &mut vec![f16::ZERO; v.len()], &mut out);
        Cow::Owned(out)
    } else {
        Cow::Borrowed(v)
    }
}

/// `out = f32(f16(v))` (round to nearest even) through the scratch `h`, with ggml's
/// converters, as its `mul_mat` rounds a vector for F16 weights.
fn round_to_f16(v: &[f32], h: &mut [f16], out: &mut [f32]) {
    assert!(h.len() == v.len() && out.len() == v.len());
    // SAFETY: both buffers hold v.len() elements (checked); f16 is ggml_fp16_t's u16 bits.
    unsafe { sys::ggml_cpu_fp32_to_fp16(v.as_ptr(), h.as_mut_ptr().cast(), v.len() as i64) };
    f16_to_f32(h, out);
}

/// `out = f32(h)` with ggml's converter: one call for the whole slice, vectorized (F16C,
/// AVX-512) where the CPU has it (half's slice conversion calls a function per 8 values).
fn f16_to_f32(h: &[f16], out: &mut [f32]) {
    assert_eq!(h.len(), out.len());
    // SAFETY: both buffers hold h.len() elements (checked); f16 is ggml_fp16_t's u16 bits.
    unsafe { sys::ggml_cpu_fp16_to_fp32(h.as_ptr().cast(), out.as_mut_ptr(), h.len() as i64) };
}

/// Rows `rows` of `base + s · m2 (m1 x)` into `out` (one value per row), `u = m1 x` computed
/// here (r dot products of n_in; each thread computes the `u` of the updates it has rows of).
/// `m1` is `[x.len(), r]`, `m2` `[r, base.len()]`, and `rows` lies within `base`.
struct LowRankRows<'a, 'o> {
    x: &'a [f32],
    base: &'a [f32],
    m1: Matrix<'a>,
    m2: Matrix<'a>,
    s: f32,
    rows: std::ops::Range<usize>,
    out: &'o mut [f32],
}

impl Kernel for LowRankRows<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            x,
            base,
            m1,
            m2,
            s,
            rows,
            out,
        } = self;
        let r = m2.cols;
        let mut buf = Vec::with_capacity(x.len().max(r));
        let xo = as_operand(x, m1.is_f16());
        // (A loop, not an iterator's closure, which might be compiled outside this context.)
        let mut u = Vec::with_capacity(r);
        for j in 0..r {
            u.push(dot(m1.row(j, &mut buf), &xo));
        }
        let uo = as_operand(&u, m2.is_f16());
        let m2_rows = m2.rows(rows.clone(), &mut buf);
        for ((o, b), row) in out.iter_mut().zip(&base[rows]).zip(m2_rows.chunks_exact(r)) {
            *o = b + s * dot(row, &uo);
        }
    }
}

/// The slice of thread-owned output elements `range` of `dst`'s F32 data.
///
/// # Safety
/// `dst` is an allocated F32 tensor of at least `range.end` elements, and no other slice of
/// these elements lives while the returned one does (each thread its own range).
unsafe fn out_range<'a>(
    dst: *mut sys::ggml_tensor,
    range: std::ops::Range<usize>,
) -> &'a mut [f32] {
    // SAFETY: per the contract.
    unsafe {
        std::slice::from_raw_parts_mut(((*dst).data as *mut f32).add(range.start), range.len())
    }
}

/// The node's compute function: thread `ith` of `nth` writes its share of the output rows.
unsafe extern "C" fn update(
    dst: *mut sys::ggml_tensor,
    ith: c_int,
    nth: c_int,
    userdata: *mut c_void,
) {
    let s = scale_of(userdata);
    // SAFETY: ggml calls this during compute with the node built by `low_rank_update`: its
    // sources are the four allocated, contiguous tensors checked there, and `dst` is an
    // allocated F32 [n_out] tensor that only this node writes (each thread its own rows).
    unsafe {
        let d = &*dst;
        let (base, x, m1, m2) = (&*d.src[0], &*d.src[1], &*d.src[2], &*d.src[3]);
        let n_out = m2.ne[1] as usize;
        let mine = share(n_out, ith, nth);
        vectorized(LowRankRows {
            x: std::slice::from_raw_parts(x.data as *const f32, x.ne[0] as usize),
            base: std::slice::from_raw_parts(base.data as *const f32, n_out),
            m1: Matrix::of(m1),
            m2: Matrix::of(m2),
            s,
            rows: mine.clone(),
            out: out_range(dst, mine),
        });
    }
}

/// The stacked node's compute function: thread `ith` of `nth` writes its share of the `k`
/// columns' rows, each computed as [`update`] computes it.
unsafe extern "C" fn update_stacked(
    dst: *mut sys::ggml_tensor,
    ith: c_int,
    nth: c_int,
    userdata: *mut c_void,
) {
    let s = scale_of(userdata);
    // SAFETY: ggml calls this during compute with the node built by `low_rank_updates`: src 0
    // is the allocated, contiguous F32 x [n_in], srcs 1.. the k checked (m1, m2) pairs, and
    // `dst` an allocated F32 [n_in, k] tensor that only this node writes (each thread its own
    // rows).
    unsafe {
        let d = &*dst;
        let x = &*d.src[0];
        let n_in = x.ne[0] as usize;
        let k = d.ne[1] as usize;
        let xv = std::slice::from_raw_parts(x.data as *const f32, n_in);
        let mine = share(n_in * k, ith, nth);
        for j in 0..k {
            let (lo, hi) = (mine.start.max(j * n_in), mine.end.min((j + 1) * n_in));
            if lo < hi {
                vectorized(LowRankRows {
                    x: xv,
                    base: xv,
                    m1: Matrix::of(&*d.src[1 + 2 * j]),
                    m2: Matrix::of(&*d.src[2 + 2 * j]),
                    s,
                    rows: lo - j * n_in..hi - j * n_in,
                    out: out_range(dst, lo..hi),
                });
            }
        }
    }
}

/// Units `units` (unit u: block `u % nb` of token `u / nb`) of `base + s · blockdiag(d) x`
/// into `out` (`bo` values per unit, from the first unit's): `d` holds the `nb` blocks of
/// `bo` rows of `d.cols` values.
struct BlockDiagUnits<'a, 'o> {
    d: Matrix<'a>,
    nb: usize,
    bo: usize,
    s: f32,
    x: &'a [f32],
    base: &'a [f32],
    units: std::ops::Range<usize>,
    out: &'o mut [f32],
}

impl Kernel for BlockDiagUnits<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            d,
            nb,
            bo,
            s,
            x,
            base,
            units,
            out,
        } = self;
        let bi = d.cols;
        let size = bo * bi;
        let first = units.start;
        // Unit u's rows of its block against its token's slice of x.
        #[inline(always)]
        fn unit(block: &[f32], xb: &[f32], s: f32, base: &[f32], out: &mut [f32]) {
            for ((v, b), row) in out.iter_mut().zip(base).zip(block.chunks_exact(xb.len())) {
                *v = b + s * dot(row, xb);
            }
        }
        let rows = |u: usize| (u - first) * bo..(u - first + 1) * bo;
        match d.elems {
            Elems::F32(df) => {
                for u in units {
                    let blk = u % nb;
                    let block = &df[blk * size..(blk + 1) * size];
                    let xb = &x[u * bi..(u + 1) * bi];
                    unit(block, xb, s, &base[u * bo..], &mut out[rows(u)]);
                }
            }
            Elems::F16(dh) => {
                // The blocks this thread's units use, converted to f32 in one call (at decode,
                // the thread's own blocks; over a prompt usually all of them); x rounded to F16
                // as ggml's mul_mat does.
                let blocks = if units.is_empty() {
                    0..0
                } else if units.start / nb == (units.end - 1) / nb {
                    units.start % nb..(units.end - 1) % nb + 1 // all of one token's
                } else {
                    0..nb
                };
                let mut df = vec![0f32; blocks.len() * size];
                f16_to_f32(&dh[blocks.start * size..blocks.end * size], &mut df);
                let xs = &x[units.start * bi..units.end * bi];
                let (mut xh, mut xo) = (vec![f16::ZERO; xs.len()], vec![0f32; xs.len()]);
                round_to_f16(xs, &mut xh, &mut xo);
                for u in units {
                    let blk = u % nb - blocks.start;
                    let xb = &xo[(u - first) * bi..(u - first + 1) * bi];
                    let block = &df[blk * size..(blk + 1) * size];
                    unit(block, xb, s, &base[u * bo..], &mut out[rows(u)]);
                }
            }
        }
    }
}

/// The block-diagonal node's compute function: thread `ith` of `nth` writes its share of the
/// (token, block) pairs.
unsafe extern "C" fn block_diag(
    dst: *mut sys::ggml_tensor,
    ith: c_int,
    nth: c_int,
    userdata: *mut c_void,
) {
    let s = scale_of(userdata);
    // SAFETY: ggml calls this during compute with the node built by `block_diag_update`: its
    // sources are the three allocated, contiguous tensors checked there (blocks tiling each
    // token's x and base exactly), and `dst` is an allocated, contiguous F32 tensor of base's
    // shape that only this node writes (each thread its own blocks).
    unsafe {
        let dt = &*dst;
        let (base, x, d) = (&*dt.src[0], &*dt.src[1], &*dt.src[2]);
        let (bi, bo, nb) = (d.ne[0] as usize, d.ne[1] as usize, d.ne[2] as usize);
        let n = x.ne[1] as usize;
        // In token-major order a thread's units share the blocks, which stay in cache.
        let units = share(n * nb, ith, nth);
        vectorized(BlockDiagUnits {
            d: Matrix::of(d),
            nb,
            bo,
            s,
            x: std::slice::from_raw_parts(x.data as *const f32, n * nb * bi),
            base: std::slice::from_raw_parts(base.data as *const f32, n * nb * bo),
            out: out_range(dst, units.start * bo..units.end * bo),
            units,
        });
    }
}
