//! Folding adapters into the base weights: `graft merge` writes a full model whose targeted
//! tensors are `W + Σ ΔW` (the merged equivalents of ADAPTER_FORMAT.md), every other tensor
//! copied byte for byte from the mapped base.

use std::path::Path;

use graft_formats::{GgmlType, GgufWriter, Value};

use super::{ActiveAdapters, Delta, TargetKind};
use crate::error::{Error, Result};
use crate::model::Model;

/// Output type of merged tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// Re-quantized with ggml to this type (rows that do not fit its blocks fall back to F16).
    Quantized(GgmlType),
    /// The type the base tensor had (re-quantized with ggml).
    Same,
}

impl MergeType {
    /// Parses `f32`, `f16`, `same` or a ggml type name (`q8_0`, `q4_1`, ...).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" => Some(MergeType::F32),
            "f16" => Some(MergeType::F16),
            "same" => Some(MergeType::Same),
            other => GgmlType::ALL
                .iter()
                .find(|t| t.name() == other)
                .map(|t| MergeType::Quantized(*t)),
        }
    }
}

/// Writes `model` with `adapters` folded in to `out` (atomically). `progress(done, total)` is
/// called after each merged tensor. LoPA adapters have no weight equivalent and are refused.
pub fn merge(
    model: &Model,
    adapters: &ActiveAdapters,
    ty: MergeType,
    out: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<()> {
    if let Some((a, _)) = adapters.iter().find(|(a, _)| a.lopa().is_some()) {
        return Err(Error::InvalidRequest(format!(
            "{} is a LoPA soft prompt; it has no merged-weight equivalent",
            a.name()
        )));
    }
    let g = model.gguf();
    let c = model.config();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.add_kv(k.clone(), v.clone());
    }
    let names: Vec<String> = adapters
        .iter()
        .map(|(a, s)| format!("{}@{s}", a.name()))
        .collect();
    w.add_kv(
        "general.graft.merged_adapters",
        Value::String(names.join(",")),
    );
    let targets: Vec<(usize, TargetKind)> = (0..c.n_layer)
        .flat_map(|l| TargetKind::ALL.into_iter().map(move |k| (l, k)))
        .filter(|&(l, k)| {
            adapters
                .iter()
                .any(|(a, _)| !a.deltas(super::Target { layer: l, kind: k }).is_empty())
        })
        .collect();
    let total = targets.len();
    let mut done = 0;
    for info in g.tensors() {
        let hit = super::Target::parse_prefix(&info.name)
            .filter(|(_, rest)| rest.is_empty())
            .map(|(t, _)| t)
            .filter(|t| targets.contains(&(t.layer, t.kind)));
        let Some(target) = hit else {
            w.add_tensor(
                info.name.clone(),
                info.dtype,
                &info.dims,
                g.tensor_data(info),
            )?;
            continue;
        };
        let (n_in, n_out) = target.kind.dims(model);
        let base = graft_ggml::dequantize(
            graft_ggml::Type(info.dtype.id()),
            g.tensor_data(info),
            n_in * n_out,
        )?;
        let mut merged = base.clone();
        for (a, s_user) in adapters.iter() {
            for d in a.deltas(target) {
                add_delta(&mut merged, &base, n_in, n_out, a, d, s_user)?;
            }
        }
        let out_ty = match ty {
            MergeType::F32 => GgmlType::F32,
            MergeType::F16 => GgmlType::F16,
            MergeType::Quantized(t) => t,
            MergeType::Same => info.dtype,
        };
        let (out_ty, bytes) = encode(&merged, n_in, n_out, out_ty)?;
        w.add_tensor(info.name.clone(), out_ty, &info.dims, bytes)?;
        done += 1;
        progress(done, total);
    }
    w.write_atomic(out)?;
    Ok(())
}

/// Adds one adapter delta (times `s_user`) to the row-major `n_out x n_in` matrix `w`;
/// `base` is the unmodified base matrix (WeGeFT generates its delta from it).
fn add_delta(
    w: &mut [f32],
    base: &[f32],
    n_in: usize,
    n_out: usize,
    a: &super::Adapter,
    d: &Delta,
    s_user: f32,
) -> Result<()> {
    match *d {
        Delta::Lora {
            a: ta,
            b: tb,
            scale,
        } => {
            let av = a.tensor_f32(ta)?; // r x n_in
            let bv = a.tensor_f32(tb)?; // n_out x r
            let r = av.len() / n_in;
            let s = scale * s_user;
            for o in 0..n_out {
                let row = &mut w[o * n_in..(o + 1) * n_in];
                for k in 0..r {
                    let coef = s * bv[o * r + k];
                    for (x, y) in row.iter_mut().zip(&av[k * n_in..(k + 1) * n_in]) {
                        *x += coef * y;
                    }
                }
            }
        }
        Delta::Diablo {
            d: td,
            bs_in,
            bs_out,
            nb,
        } => {
            let dv = a.tensor_f32(td)?;
            for b in 0..nb {
                for p in 0..bs_out {
                    let o = b * bs_out + p;
                    if o >= n_out {
                        break;
                    }
                    for q in 0..bs_in {
                        let j = b * bs_in + q;
                        if j >= n_in {
                            break;
                        }
                        w[o * n_in + j] += s_user * dv[(b * bs_out + p) * bs_in + q];
                    }
                }
            }
        }
        Delta::Wegeft { phi_t, psi, scale } => {
            let pt = a.tensor_f32(phi_t)?; // ne=[r, n_in]: element (k, i) at i*r + k
            let ps = a.tensor_f32(psi)?; // r x n_in
            let r = ps.len() / n_in;
            let s = scale * s_user;
            let mut wp = vec![0f32; r];
            for o in 0..n_out {
                let brow = &base[o * n_in..(o + 1) * n_in];
                wp.iter_mut().for_each(|v| *v = 0.0);
                for (i, &bw) in brow.iter().enumerate() {
                    for k in 0..r {
                        wp[k] += bw * pt[i * r + k];
                    }
                }
                let row = &mut w[o * n_in..(o + 1) * n_in];
                for k in 0..r {
                    let coef = s * wp[k];
                    for (x, y) in row.iter_mut().zip(&ps[k * n_in..(k + 1) * n_in]) {
                        *x += coef * y;
                    }
                }
            }
        }
    }
    Ok(())
}

fn encode(v: &[f32], n_in: usize, n_out: usize, ty: GgmlType) -> Result<(GgmlType, Vec<u8>)> {
    Ok(match ty {
        GgmlType::F32 => (ty, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        GgmlType::F16 => (
            ty,
            v.iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
        ),
        GgmlType::BF16 => (
            ty,
            v.iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect(),
        ),
        q => match graft_ggml::quantize(graft_ggml::Type(q.id()), v, n_out, n_in) {
            Ok(bytes) => (q, bytes),
            Err(_) => encode(v, n_in, n_out, GgmlType::F16)?,
        },
    })
}
