//! LoRA: `y = W x + scale · B (A x)`, `scale = s_user · alpha / r` (alpha 0: `scale = s_user`).
//!
//! The file layout is llama.cpp's GGUF LoRA, so those files load unchanged:
//! `<target>.lora_a` ne=[n_in, r], `<target>.lora_b` ne=[r, n_out], `adapter.lora.alpha`.
//! Tensors stay in their stored type (f32, f16, bf16 or q8_0) and are used in place.

use std::collections::BTreeMap;

use graft_formats::{GgmlType, Gguf, TensorInfo};
use graft_ggml::{Context, Tensor};

use super::{Builder, Delta, Target};
use crate::error::{Error, Result};

/// Types DiaBlo, WeGeFT and LoPA tensors may have.
pub(crate) const FLOAT_TYPES: [GgmlType; 3] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16];

/// Types a LoRA tensor may have.
pub const ALLOWED_TYPES: [GgmlType; 4] =
    [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0];

pub(crate) fn load(b: &mut Builder<'_>, g: &Gguf) -> Result<()> {
    let alpha = g.get_f32_or("adapter.lora.alpha", 0.0)?;
    if !alpha.is_finite() {
        return Err(Error::InvalidAdapter(format!(
            "adapter.lora.alpha is {alpha}"
        )));
    }
    let mut pairs: BTreeMap<String, (Target, Option<&TensorInfo>, Option<&TensorInfo>)> =
        BTreeMap::new();
    for t in super::model_tensors(g) {
        let (target, rest) =
            Target::parse_prefix(&t.name).ok_or_else(|| unknown_tensor(&t.name))?;
        let e = pairs
            .entry(target.tensor_name())
            .or_insert((target, None, None));
        match rest {
            ".lora_a" => e.1 = Some(t),
            ".lora_b" => e.2 = Some(t),
            _ => return Err(unknown_tensor(&t.name)),
        }
    }
    if pairs.is_empty() {
        return Err(Error::InvalidAdapter("the LoRA file has no tensors".into()));
    }
    for (name, (target, a, b_)) in pairs {
        let (Some(a), Some(bt)) = (a, b_) else {
            return Err(Error::InvalidAdapter(format!(
                "{name}: lora_a and lora_b must both be present"
            )));
        };
        let (n_in, n_out) = target.kind.dims(b.model);
        check_type(a, &ALLOWED_TYPES, "LoRA tensors")?;
        check_type(bt, &ALLOWED_TYPES, "LoRA tensors")?;
        if a.dims.len() != 2 || bt.dims.len() != 2 {
            return Err(shape(a, "2-D lora_a and lora_b"));
        }
        let r = a.dims[1] as usize;
        if a.dims[0] as usize != n_in || r == 0 || r > n_in.min(n_out) {
            return Err(shape(
                a,
                &format!("[{n_in}, r] with 0 < r <= {}", n_in.min(n_out)),
            ));
        }
        if bt.dims != [r as u64, n_out as u64] {
            return Err(shape(bt, &format!("[{r}, {n_out}]")));
        }
        let scale = if alpha == 0.0 { 1.0 } else { alpha / r as f32 };
        let (ia, ib) = (b.stored(a), b.stored(bt));
        b.rank = b.rank.max(r);
        b.push(
            target,
            Delta::Lora {
                a: ia,
                b: ib,
                scale,
            },
        )?;
    }
    Ok(())
}

/// `scale · B (A x)` for `x [n_in, n]` → `[n_out, n]`.
///
/// Inference scales the product, as llama.cpp does (same rounding, same tokens). A training
/// graph (A is a trainable parameter) scales the rank-sized `A x` instead: the same function,
/// and in the backward pass too the scale then runs over `r x n` values instead of
/// `n_out x n` (a LoRA on every target spends its time moving such activations, not in its
/// rank-r products).
pub(crate) fn delta<'a>(
    ctx: &'a Context,
    a: Tensor<'a>,
    b: Tensor<'a>,
    x: Tensor<'a>,
    scale: f32,
) -> Tensor<'a> {
    let ax = ctx.mul_mat(a, x);
    if a.is_param() {
        return ctx.mul_mat(b, ctx.scale(ax, scale));
    }
    ctx.scale(ctx.mul_mat(b, ax), scale)
}

/// Refuses a tensor whose type is not in `allowed`, naming it: "`{name}` has type q4_0;
/// `{what}` must be f32, f16, bf16 or q8_0".
pub(crate) fn check_type(t: &TensorInfo, allowed: &[GgmlType], what: &str) -> Result<()> {
    if allowed.contains(&t.dtype) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(|t| t.name()).collect();
    let list = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    };
    Err(Error::InvalidAdapter(format!(
        "{} has type {}; {what} must be {list}",
        t.name, t.dtype
    )))
}

pub(crate) fn unknown_tensor(name: &str) -> Error {
    Error::InvalidAdapter(format!(
        "unknown tensor {name}: not an adapter tensor of a known target (blk.N.{{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down}}.weight.*)"
    ))
}

pub(crate) fn shape(t: &TensorInfo, expected: &str) -> Error {
    Error::InvalidAdapter(format!(
        "{} has shape {:?}, expected {expected} for this base model",
        t.name, t.dims
    ))
}
