//! ggml's masked `soft_max_ext` that skips each row's masked tail (CPU training graphs).
//!
//! A training step's attention scores are a causal square: row `q` of the mask is 0 up to
//! column `q` and -inf after it. ggml's kernel runs every row over all its columns (the
//! scaled scores plus the mask into a scratch row, the maximum, the exponentials, the sum, the
//! normalization), the masked half included, whose exponentials are 0. It was the largest of
//! ggml's own ops in a LoRA step on SmolLM2 (30 ms of ~1000).
//!
//! [`Graph::use_masked_softmax`] turns each `soft_max_ext` node with an F32 mask into a custom
//! node running [`softmax_rows`]: per row, the last column the mask leaves open is found in
//! the mask itself (so any mask gives ggml's result, not only a causal one); the row is
//! computed up to it with a vectorizing exponential ([`crate::xent::exp`], within 3e-7 of
//! libm's) and written 0 after it, as ggml's `exp(-inf)` is. A row the mask closes entirely
//! is NaN, as in ggml (0/0). The backward pass (`soft_max_back`, from the output) is ggml's,
//! built from the original node.

use std::os::raw::{c_int, c_void};

use crate::context::{Context, Graph};
use crate::simd::LANES;
use crate::sys;

/// Whether `t` (a `SOFT_MAX` node) is one [`softmax_rows`] computes: F32 scores, output and
/// mask with contiguous rows, the mask as wide as the rows and broadcast over the batches as
/// ggml broadcasts it, no ALiBi (`max_bias` 0) and no attention sinks.
///
/// # Safety
/// `t` is a valid `SOFT_MAX` node.
unsafe fn fits(t: &sys::ggml_tensor) -> bool {
    if t.src[0].is_null() || t.src[1].is_null() || !t.src[2].is_null() {
        return false;
    }
    let (x, m) = (&*t.src[0], &*t.src[1]);
    let f = std::mem::size_of::<f32>();
    let f32 = sys::GGML_TYPE_F32;
    let max_bias = f32::from_bits(t.op_params[1] as u32);
    max_bias == 0.0
        && [t.type_, x.type_, m.type_].iter().all(|&ty| ty == f32)
        && [t.nb[0], x.nb[0], m.nb[0]].iter().all(|&s| s == f)
        && [x.nb[1], x.nb[2], x.nb[3], t.nb[1], t.nb[2], t.nb[3]]
            .iter()
            .chain(&[m.nb[1], m.nb[2], m.nb[3]])
            .all(|&s| s % f == 0)
        && t.ne == x.ne
        && m.ne[0] == x.ne[0]
        && m.ne[1] >= x.ne[1]
        && m.ne[2] > 0
        && m.ne[3] > 0
        && x.ne[2] % m.ne[2] == 0
        && x.ne[3] % m.ne[3] == 0
}

/// One row: `y = softmax(x · scale + mask)`, computed up to the mask's last open column.
/// `y` may be `x`'s memory: `x = None` then reads the scores from `y`. The loops run at the
/// CPU's vector width ([`crate::simd::vectorized`]).
fn softmax_row(x: Option<&[f32]>, mask: &[f32], scale: f32, y: &mut [f32]) {
    struct Row<'a, 'b> {
        x: Option<&'a [f32]>,
        mask: &'a [f32],
        scale: f32,
        y: &'b mut [f32],
    }
    impl crate::simd::Kernel for Row<'_, '_> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            row(self.x, self.mask, self.scale, self.y)
        }
    }
    crate::simd::vectorized(Row { x, mask, scale, y })
}

#[inline(always)]
fn row(x: Option<&[f32]>, mask: &[f32], scale: f32, y: &mut [f32]) {
    let end = mask
        .iter()
        .rposition(|&v| v != f32::NEG_INFINITY)
        .map_or(0, |p| p + 1);
    if end == 0 {
        y.fill(f32::NAN); // ggml: every exponential is exp(-inf - -inf)
        return;
    }
    let (head, tail) = y.split_at_mut(end);
    match x {
        Some(x) => {
            for ((v, &s), &mv) in head.iter_mut().zip(x).zip(mask) {
                *v = s * scale + mv;
            }
        }
        None => {
            for (v, &mv) in head.iter_mut().zip(mask) {
                *v = *v * scale + mv;
            }
        }
    }
    let max = crate::xent::row_max(head);
    let mut sums = [0f32; LANES];
    let mut chunks = head.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, v) in sums.iter_mut().zip(c.iter_mut()) {
            let e = open_exp(*v, max);
            *v = e;
            *s += e;
        }
    }
    let mut sum = sums.iter().sum::<f32>();
    for v in chunks.into_remainder() {
        *v = open_exp(*v, max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in head.iter_mut() {
        *v *= inv;
    }
    tail.fill(0.0);
}

/// `e^(v - max)`, exactly 0 for a column masked inside the open range (as ggml's
/// `exp(-inf)`); computed for every column, then selected, so that the loop vectorizes.
#[inline(always)]
fn open_exp(v: f32, max: f32) -> f32 {
    let e = crate::xent::exp(v - max);
    if v == f32::NEG_INFINITY {
        0.0
    } else {
        e
    }
}

/// `dst = soft_max_ext(src0, mask = src1, scale)` over this thread's rows; the scale is in
/// the userdata pointer's bits.
///
/// # Safety
/// Called by ggml's CPU backend for a node [`Graph::use_masked_softmax`] built from one that
/// [`fits`] accepted, with allocated tensors.
unsafe extern "C" fn softmax_rows(
    dst: *mut sys::ggml_tensor,
    ith: c_int,
    nth: c_int,
    userdata: *mut c_void,
) {
    let scale = f32::from_bits(userdata as usize as u32);
    // SAFETY: ggml passes the node it computes; `fits` checked the types, shapes and strides,
    // so every row below lies inside its tensor. The output row is a slice of its own; when
    // it is the scores' memory too (an in-place node), the scores are read from it alone.
    unsafe {
        let d = &*dst;
        let (x, m) = (&*d.src[0], &*d.src[1]);
        let [nc, n1, n2, n3] = d.ne.map(|v| v as usize);
        let (m2, m3) = (m.ne[2] as usize, m.ne[3] as usize);
        for r in crate::lowrank::share(n1 * n2 * n3, ith, nth) {
            let (i1, i2, i3) = (r % n1, (r / n1) % n2, r / (n1 * n2));
            let px = (x.data as *const u8).add(i1 * x.nb[1] + i2 * x.nb[2] + i3 * x.nb[3]);
            let pm =
                (m.data as *const u8).add(i1 * m.nb[1] + (i2 % m2) * m.nb[2] + (i3 % m3) * m.nb[3]);
            let pd = (d.data as *mut u8).add(i1 * d.nb[1] + i2 * d.nb[2] + i3 * d.nb[3]);
            let y = std::slice::from_raw_parts_mut(pd as *mut f32, nc);
            let mask = std::slice::from_raw_parts(pm as *const f32, nc);
            let xs =
                (!std::ptr::eq(px, pd)).then(|| std::slice::from_raw_parts(px as *const f32, nc));
            softmax_row(xs, mask, scale, y);
        }
    }
}

impl<'ctx> Graph<'ctx> {
    /// Rewrites the graph's `soft_max_ext` nodes with an F32 mask (and no ALiBi or sinks)
    /// into custom nodes running [`softmax_rows`], which stop each row at the mask's last open
    /// column (half the work over a causal square). CPU backend only. Returns how many nodes
    /// were rewritten. Call after `build_backward_expand` (whose `soft_max_back` reads the
    /// output, not the op), before allocation.
    pub fn use_masked_softmax(&mut self, ctx: &'ctx Context) -> usize {
        // SAFETY (of the closure's call): `rewrite_nodes` passes valid soft_max nodes. The
        // scale (op param 0) travels in the userdata pointer's bits.
        self.rewrite_nodes(
            ctx,
            sys::GGML_OP_SOFT_MAX,
            softmax_rows,
            |t| unsafe { fits(t) }.then(|| t.op_params[0] as u32 as usize as *mut c_void),
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows against an f64 softmax of the scaled scores plus the mask: causal-like rows (an
    /// open head, a closed tail), holes inside the open part, wide and narrow rows, and the
    /// in-place form.
    #[test]
    fn rows_match_an_f64_softmax() {
        let inf = f32::NEG_INFINITY;
        for n in [1usize, 5, 8, 9, 17, 64, 257] {
            for open in [1, n / 2 + 1, n] {
                let x: Vec<f32> = (0..n)
                    .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.9)
                    .collect();
                let mut mask: Vec<f32> = (0..n).map(|i| if i < open { 0.0 } else { inf }).collect();
                if open > 3 {
                    mask[1] = inf; // a hole
                    mask[2] = -2.5; // an additive bias
                }
                let scale = 0.125f32;
                let want: Vec<f64> = {
                    let v: Vec<f64> = x
                        .iter()
                        .zip(&mask)
                        .map(|(&s, &m)| s as f64 * scale as f64 + m as f64)
                        .collect();
                    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = v.iter().map(|&v| (v - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    e.iter().map(|e| e / sum).collect()
                };
                let mut y = vec![f32::NAN; n];
                softmax_row(Some(&x), &mask, scale, &mut y);
                let mut inplace = x.clone();
                softmax_row(None, &mask, scale, &mut inplace);
                for i in 0..n {
                    assert!(
                        (y[i] as f64 - want[i]).abs() < 1e-6,
                        "n {n} open {open} at {i}"
                    );
                    assert_eq!(y[i].to_bits(), inplace[i].to_bits());
                    if mask[i] == inf {
                        assert_eq!(y[i], 0.0);
                    }
                }
            }
        }
        let mut y = vec![0.0; 4];
        softmax_row(Some(&[1.0; 4]), &[inf; 4], 1.0, &mut y);
        assert!(
            y.iter().all(|v| v.is_nan()),
            "a closed row is NaN, as in ggml"
        );
    }
}
