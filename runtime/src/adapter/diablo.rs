//! DiaBlo: trainable diagonal blocks. `y = W x + s_user · d`, where `x` is zero-padded to
//! `Nb·bs_in` and block `i` maps `x[i·bs_in ..][..bs_in]` to `d[i·bs_out ..][..bs_out]`
//! (`D_i` is `bs_out x bs_in`). Tensor `<target>.diablo` ne=[bs_in, bs_out, Nb].
//!
//! The delta is one batched matmul over the reshaped input (never a dense matrix).

use graft_formats::{GgmlType, Gguf};
use graft_ggml::{Context, Tensor};

use super::lora::{shape, unknown_tensor};
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
        if ![GgmlType::F32, GgmlType::F16, GgmlType::BF16].contains(&t.dtype) {
            return Err(Error::InvalidAdapter(format!(
                "{} has type {}; DiaBlo blocks must be f32, f16 or bf16",
                t.name, t.dtype
            )));
        }
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

/// The block-diagonal product for `x [n_in, n]` → `[n_out, n]` (unscaled).
pub(crate) fn delta<'a>(
    ctx: &'a Context,
    d: Tensor<'a>,
    x: Tensor<'a>,
    (bs_in, bs_out, nb): (usize, usize, usize),
    n_out: usize,
) -> Tensor<'a> {
    let [n_in, n, _, _] = x.ne();
    let (bs_in, bs_out, nb) = (bs_in as i64, bs_out as i64, nb as i64);
    let pad = nb * bs_in - n_in;
    let xp = if pad > 0 {
        ctx.pad(x, [pad as i32, 0, 0, 0])
    } else {
        ctx.cont(x)
    };
    // [bs_in, Nb, n] -> [bs_in, n, Nb]: block i's inputs for every token.
    let xr = ctx.cont(ctx.permute(ctx.reshape(xp, &[bs_in, nb, n]), [0, 2, 1, 3]));
    // [bs_out, n, Nb] -> [bs_out, Nb, n] -> [Nb*bs_out, n]
    let y = ctx.mul_mat(d, xr);
    let y = ctx.reshape(ctx.cont(ctx.permute(y, [0, 2, 1, 3])), &[nb * bs_out, n]);
    if nb * bs_out == n_out as i64 {
        y
    } else {
        ctx.cont(ctx.view(y, &[n_out as i64, n], &[y.nb()[1]], 0))
    }
}
