//! WeGeFT: fine-tuning weights generated from the pretrained ones,
//! `y = W (x + scale · φᵀ (ψ x))`, `scale = s_user · alpha / r`: one base matmul, so it works
//! on a quantized `W` unchanged.
//!
//! Per-layer pairs are `<target>.wegeft_phi` / `.wegeft_psi` (ne=[n_in, r] each); a pair named
//! without the `blk.N.` prefix (`attn_q.weight.wegeft_phi`) is shared by every layer's tensor of
//! that kind that has no pair of its own. φ is transposed once at load (ne=[r, n_in]).

use std::collections::BTreeMap;

use graft_formats::{Gguf, TensorInfo};
use graft_ggml::{Context, Tensor};

use super::lora::{check_type, shape, unknown_tensor, FLOAT_TYPES};
use super::{Builder, Delta, Target, TargetKind};
use crate::error::{Error, Result};

type Pair<'g> = (Option<&'g TensorInfo>, Option<&'g TensorInfo>);

pub(crate) fn load(b: &mut Builder<'_>, g: &Gguf) -> Result<()> {
    let alpha = g.get_f32("adapter.wegeft.alpha")?;
    if !alpha.is_finite() {
        return Err(Error::InvalidAdapter(format!(
            "adapter.wegeft.alpha is {alpha}"
        )));
    }
    // Per-layer pairs keyed by (layer, kind); shared ones by kind.
    let mut own: BTreeMap<(usize, usize), (Target, Pair<'_>)> = BTreeMap::new();
    let mut shared: BTreeMap<usize, (TargetKind, Pair<'_>)> = BTreeMap::new();
    for t in super::model_tensors(g) {
        let (slot, rest) = if let Some((target, rest)) = Target::parse_prefix(&t.name) {
            let e = own
                .entry((target.layer, target.kind as usize))
                .or_insert((target, (None, None)));
            (&mut e.1, rest)
        } else {
            let (stem, rest) = t
                .name
                .split_once(".weight")
                .ok_or_else(|| unknown_tensor(&t.name))?;
            let kind = TargetKind::parse(stem).ok_or_else(|| unknown_tensor(&t.name))?;
            let e = shared.entry(kind as usize).or_insert((kind, (None, None)));
            (&mut e.1, rest)
        };
        match rest {
            ".wegeft_phi" => slot.0 = Some(t),
            ".wegeft_psi" => slot.1 = Some(t),
            _ => return Err(unknown_tensor(&t.name)),
        }
    }
    if own.is_empty() && shared.is_empty() {
        return Err(Error::InvalidAdapter(
            "the WeGeFT file has no tensors".into(),
        ));
    }
    let n_layer = b.model.config().n_layer;
    let mut shared_ids = BTreeMap::new();
    for (kind, pair) in shared.values() {
        let ids = declare(b, *kind, *pair)?;
        shared_ids.insert(*kind as usize, (*kind, ids));
    }
    for (target, pair) in own.values() {
        let (phi_t, psi, r) = declare(b, target.kind, *pair)?;
        b.push(
            *target,
            Delta::Wegeft {
                phi_t,
                psi,
                scale: alpha / r as f32,
            },
        )?;
    }
    for (kind, (phi_t, psi, r)) in shared_ids.values() {
        for layer in 0..n_layer {
            if !own.contains_key(&(layer, *kind as usize)) {
                let t = Target { layer, kind: *kind };
                b.push(
                    t,
                    Delta::Wegeft {
                        phi_t: *phi_t,
                        psi: *psi,
                        scale: alpha / *r as f32,
                    },
                )?;
            }
        }
    }
    Ok(())
}

fn declare(
    b: &mut Builder<'_>,
    kind: TargetKind,
    pair: Pair<'_>,
) -> Result<(graft_ggml::TensorId, graft_ggml::TensorId, usize)> {
    let (Some(phi), Some(psi)) = pair else {
        let name = pair.0.or(pair.1).map_or(String::new(), |t| t.name.clone());
        return Err(Error::InvalidAdapter(format!(
            "{name}: wegeft_phi and wegeft_psi must both be present"
        )));
    };
    let (n_in, _) = kind.dims(b.model);
    for t in [phi, psi] {
        check_type(t, &FLOAT_TYPES, "WeGeFT tensors")?;
    }
    let r = phi.dims.get(1).copied().unwrap_or(0) as usize;
    if phi.dims.len() != 2 || phi.dims[0] as usize != n_in || r == 0 || r > n_in {
        return Err(shape(phi, &format!("[{n_in}, r] with 0 < r <= {n_in}")));
    }
    if psi.dims != phi.dims {
        return Err(shape(
            psi,
            &format!("{:?} (the shape of its phi)", phi.dims),
        ));
    }
    let g_phi = graft_ggml::dequantize(
        graft_ggml::Type(phi.dtype.id()),
        b.tensor_bytes(phi),
        n_in * r,
    )?;
    // φ is r x n_in (row k contiguous); φᵀ as ne=[r, n_in]: element (k, c) at c*r + k.
    let mut phi_t = vec![0f32; n_in * r];
    for k in 0..r {
        for c in 0..n_in {
            phi_t[c * r + k] = g_phi[k * n_in + c];
        }
    }
    let phi_t = b.derived(&format!("{}.T", phi.name), &[r as i64, n_in as i64], &phi_t);
    let psi = b.stored(psi);
    b.rank = b.rank.max(r);
    Ok((phi_t, psi, r))
}

/// `scale · φᵀ (ψ x)` for `x [n_in, n]` → `[n_in, n]`.
pub(crate) fn delta<'a>(
    ctx: &'a Context,
    phi_t: Tensor<'a>,
    psi: Tensor<'a>,
    x: Tensor<'a>,
    scale: f32,
) -> Tensor<'a> {
    ctx.scale(ctx.mul_mat(phi_t, ctx.mul_mat(psi, x)), scale)
}
