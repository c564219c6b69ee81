//! DiaBlo: trainable diagonal blocks. `y = W x + s_user · d`, where `x` is zero-padded to
//! `Nb·bs_in` and block `i` maps `x[i·bs_in ..][..bs_in]` to `d[i·bs_out ..][..bs_out]`
//! (`D_i` is `bs_out x bs_in`). Tensor `<target>.diablo` ne=[bs_in, bs_out, Nb].
//!
//! The delta is one batched matmul over the reshaped input (never a dense matrix).

use graft_formats::Gguf;
use graft_ggml::{Context, Tensor};

use super::lora::{check_type, shape, unknown_tensor, FLOAT_TYPES};
use super::{Builder, Delta, Target};
use crate::error::{Error, Result};

pub(crate) fn load(b: &mut Builder<'_>, g: &Gguf) -> Result<()> {
    if super::model_tensors(g).next().is_none() {
        return Err(Error::InvalidAdapter(
            "the DiaBlo file has no tensors".into(),
        ));
    }
    for t in super::model_tensors(g) {
        let (target, rest) =
            Target::parse_prefix(&t.name).ok_or_else(|| unknown_tensor(&t.name))?;
        if rest != ".diablo" {
            return Err(unknown_tensor(&t.name));
        }
        check_type(t, &FLOAT_TYPES, "DiaBlo blocks")?;
        let (n_in, n_out) = target.kind.dims(b.model);
        let ne = t.ne();
        let (bs_in, bs_out, nb) = (ne[0] as usize, ne[1] as usize, ne[2] as usize);
        if t.dims.len() != 3 || nb * bs_in < n_in || nb * bs_out < n_out || nb > n_in.max(n_out) {
            return Err(shape(
                t,
                &format!("[bs_in, bs_out, Nb] with Nb*bs_in >= {n_in} and Nb*bs_out >= {n_out}"),
            ));
        }
        let d = b.stored(t);
        b.rank = b.rank.max(nb);
        b.push(
            target,
            Delta::Diablo {
                d,
                bs_in,
                bs_out,
                nb,
            },
        )?;
    }
    Ok(())
}

/// `y + s · blockdiag(D) x` for `x [n_in, n]`, `y [n_out, n]`: the blocks that lie inside
/// both dimensions in one batched matmul, each edge block (where N does not divide a size) as
/// a small matmul on its in-range part, added into `y` with `add` or `acc` (both
/// differentiable, so the same code trains the blocks). `on_cpu`: the graph runs on the CPU
/// backend, so one-token decode may use the fused CPU op.
pub(crate) fn apply<'a>(
    ctx: &'a Context,
    d: Tensor<'a>,
    x: Tensor<'a>,
    y: Tensor<'a>,
    (bs_in, bs_out, nb): (usize, usize, usize),
    s: f32,
    on_cpu: bool,
) -> Tensor<'a> {
    let [n_in, n, _, _] = x.ne();
    let n_out = y.ne()[0];
    let x = if x.is_contiguous() { x } else { ctx.cont(x) };
    let scaled = |t: Tensor<'a>| if s == 1.0 { t } else { ctx.scale(t, s) };
    let (bi, bo) = (bs_in as i64, bs_out as i64);
    let full = (n_in / bi).min(n_out / bo).min(nb as i64);
    let ynb = y.nb();
    let yb = [ynb[1], ynb[2], ynb[3]];
    // When the blocks tile both dimensions exactly (the usual case: N divides both sizes), the
    // product is added with one plain `add` over `y` seen as [bs_out, N, n], reading the
    // matmul's [bs_out, n, N] result through a permuted view: no copies, no `acc` (which
    // copies `y` and waits at an extra barrier). Otherwise the in-range blocks go through `acc`.
    let tiles = full == nb as i64 && full * bi == n_in && full * bo == n_out && y.is_contiguous();
    if tiles && on_cpu {
        // One fused node (a CPU custom op; `None` for trainable blocks): at decode it saves
        // nodes and barriers, over a prompt ggml's per-dot-product calls on bs_in values.
        if let Some(out) = ctx.block_diag_update(y, x, d, s) {
            return out;
        }
    }
    let mut y = y;
    if full > 0 {
        let dv = ctx.view(d, &[bi, bo, full], &[d.nb()[1], d.nb()[2]], 0);
        if n == 1 {
            // One token (decode): x is already [bs_in, 1, full] and the result [bs_out*full].
            let xr = ctx.view(x, &[bi, 1, full], &[bi as usize * 4, bi as usize * 4], 0);
            let out = scaled(ctx.reshape(ctx.mul_mat(dv, xr), &[bo * full, 1]));
            y = if tiles {
                ctx.add(y, out)
            } else {
                ctx.acc(y, out, yb, 0)
            };
        } else {
            // When the blocks cover x exactly, x is a reshape of itself into [bs_in, N, n]:
            // its gradient then comes back as one copy and a contiguous add (a view's comes
            // back through `acc`, which copies x's whole gradient and adds rows of bs_in
            // values through strides).
            // The projections that read one x with the same block width (q, k, v; gate,
            // up) share this copy. It is shared as [bs_in·n, full], so that in a training
            // graph their gradients are summed in rows of bs_in·n values: ggml's `add` runs
            // row by row, and rows of bs_in values would cost it more than the copies saved.
            let xr = ctx.derived(x, "diablo_blocks", (bi << 32) | full, || {
                let xv = if full * bi == n_in {
                    ctx.reshape(x, &[bi, full, n])
                } else {
                    ctx.view(x, &[bi, full, n], &[bi as usize * 4, x.nb()[1]], 0)
                };
                let xr = ctx.cont(ctx.permute(xv, [0, 2, 1, 3])); // [bs_in, n, full]
                ctx.reshape(xr, &[bi * n, full])
            });
            let xr = ctx.reshape(xr, &[bi, n, full]);
            let out = scaled(ctx.mul_mat(dv, xr)); // [bs_out, n, full]
            y = if tiles {
                // Copied into y's layout, then added contiguously: ggml's `add` over a
                // permuted operand walks rows of bs_out values (2x slower than copy + add).
                let out = ctx.cont(ctx.permute(out, [0, 2, 1, 3])); // [bs_out, N, n]
                ctx.add(y, ctx.reshape(out, &[n_out, n]))
            } else {
                let out = ctx.reshape(ctx.cont(ctx.permute(out, [0, 2, 1, 3])), &[bo * full, n]);
                ctx.acc(y, out, yb, 0)
            };
        }
    }
    for b in full..nb as i64 {
        let (in_lo, out_lo) = (b * bi, b * bo);
        if in_lo >= n_in || out_lo >= n_out {
            continue; // this block only meets the padding
        }
        let (in_len, out_len) = ((n_in - in_lo).min(bi), (n_out - out_lo).min(bo));
        let xv = ctx.cont(ctx.view(x, &[in_len, n], &[x.nb()[1]], in_lo as usize * 4));
        let dv = ctx.cont(ctx.view(d, &[in_len, out_len], &[d.nb()[1]], b as usize * d.nb()[2]));
        let out = scaled(ctx.mul_mat(dv, xv)); // [out_len, n]
        y = ctx.acc(y, out, yb, out_lo as usize * 4);
    }
    y
}

/// `s · blockdiag(D) x` alone, `[n_out, n]` (the batched decoder adds it to a group's rows):
/// the in-range blocks in one batched matmul, zero-padded to `n_out` rows, and each edge block
/// added at its offset.
pub(crate) fn delta<'a>(
    ctx: &'a Context,
    d: Tensor<'a>,
    x: Tensor<'a>,
    n_out: i64,
    (bs_in, bs_out, nb): (usize, usize, usize),
    s: f32,
) -> Tensor<'a> {
    let [n_in, n, _, _] = x.ne();
    let x = if x.is_contiguous() { x } else { ctx.cont(x) };
    let scaled = |t: Tensor<'a>| if s == 1.0 { t } else { ctx.scale(t, s) };
    let (bi, bo) = (bs_in as i64, bs_out as i64);
    let full = (n_in / bi).min(n_out / bo).min(nb as i64);
    // The first piece starts at row 0 (the full blocks, else edge block 0): padded with zeros
    // to n_out rows; later pieces are added at their offsets.
    let mut out: Option<Tensor<'a>> = None;
    let mut place = |piece: Tensor<'a>, row: i64| {
        out = Some(match out {
            None => {
                debug_assert_eq!(row, 0);
                ctx.pad(piece, [(n_out - piece.ne()[0]) as i32, 0, 0, 0])
            }
            Some(o) => {
                let nb = o.nb();
                ctx.acc(o, piece, [nb[1], nb[2], nb[3]], row as usize * 4)
            }
        });
    };
    if full > 0 {
        let dv = ctx.view(d, &[bi, bo, full], &[d.nb()[1], d.nb()[2]], 0);
        let xs = x.nb()[1];
        let xv = ctx.view(x, &[bi, full, n], &[bi as usize * 4, xs], 0);
        let xr = ctx.cont(ctx.permute(xv, [0, 2, 1, 3])); // [bs_in, n, full]
        let o = ctx.mul_mat(dv, xr); // [bs_out, n, full]
        place(
            scaled(ctx.reshape(ctx.cont(ctx.permute(o, [0, 2, 1, 3])), &[bo * full, n])),
            0,
        );
    }
    for b in full..nb as i64 {
        let (in_lo, out_lo) = (b * bi, b * bo);
        if in_lo >= n_in || out_lo >= n_out {
            continue;
        }
        let (in_len, out_len) = ((n_in - in_lo).min(bi), (n_out - out_lo).min(bo));
        let xv = ctx.cont(ctx.view(x, &[in_len, n], &[x.nb()[1]], in_lo as usize * 4));
        let dv = ctx.cont(ctx.view(d, &[in_len, out_len], &[d.nb()[1]], b as usize * d.nb()[2]));
        place(scaled(ctx.mul_mat(dv, xv)), out_lo);
    }
    out.expect("block 0 always meets the input and the output")
}
