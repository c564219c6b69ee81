//! The one working copy of the frozen base that training keeps: Q4_1 layer weights split for
//! the forward pass.
//!
//! ggml has no GEMM kernel for Q4_1: its forward products ran one dot product per (row,
//! token), a third of a training step. Each Q4_1 layer weight is also kept as a Q4_0 matrix
//! plus per-block offsets ([`graft_ggml::split_q4_1_row`]), whose two products sum to ggml's
//! Q4_1 product up to the order of f32 additions, the large one on tinyBLAS's Q4_0 GEMM
//! (0.69 bytes per weight). Every training graph, forward-only ones included, uses the split
//! ([`graft_ggml::Graph::use_q4_1_split`]), so evaluation and training compute the same loss.
//!
//! The backward pass needs no copy: input gradients through quantized weights dequantize panels
//! of the mapped weights per sequence ([`graft_ggml::Graph::use_dequant_input_grads`]).

use std::collections::HashMap;

use graft_ggml::{Backend, Buffer, Context, FrozenContext, Tensor, TensorId, Type};

use crate::error::Result;
use crate::model::Model;

/// The split copies and which base weight each stands for.
pub(crate) struct Q41Split {
    ctx: FrozenContext,
    _buf: Option<Buffer>,
    /// Q4_1 layer weight -> (its Q4_0 part, its offsets `[m, 8d]` per block).
    parts: HashMap<TensorId, (TensorId, TensorId)>,
    bytes: usize,
}

impl Q41Split {
    /// Splits every Q4_1 linear weight of the blocks (the LM head is not split: its file type
    /// is usually Q8_0 or Q6_K, and a Q4_1 one keeps ggml's path).
    pub(crate) fn build(model: &Model) -> Result<Self> {
        let mut ids: Vec<TensorId> = Vec::new();
        for l in &model.layers {
            ids.extend([l.wq, l.wk, l.wv, l.wo, l.ffn_gate, l.ffn_up, l.ffn_down]);
        }
        ids.retain(|&id| model.w(id).ty() == Type::Q4_1);
        let ctx = Context::new(2 * ids.len() + 1, 0)?;
        let mut parts = HashMap::new();
        for &id in &ids {
            let [n_in, n_out, _, _] = model.w(id).ne();
            let q = ctx.new_tensor(Type::Q4_0, &[n_in, n_out]).id();
            let nb = n_in / graft_ggml::Q4_BLOCK as i64;
            let off = ctx.new_tensor(Type::F32, &[2 * nb, n_out]).id();
            parts.insert(id, (q, off));
        }
        // One buffer for all copies (none when nothing is Q4_1), filled a weight at a time.
        let buf = if ids.is_empty() {
            None
        } else {
            Some(Backend::cpu(1)?.alloc_ctx_tensors(&ctx)?)
        };
        let mut bytes = 0;
        for id in ids {
            let w = model.w(id);
            let [n_in, n_out, _, _] = w.ne();
            let (n_in, n_out) = (n_in as usize, n_out as usize);
            let row_bytes = w.ty().row_size(n_in as i64);
            let mut raw = vec![0u8; row_bytes];
            let (mut q4, mut off) = (Vec::new(), Vec::new());
            for o in 0..n_out {
                w.read_bytes(o * row_bytes, &mut raw)?;
                graft_ggml::split_q4_1_row(&raw, n_in, &mut q4, &mut off)
                    .expect("a Q4_1 row of the weight's own length");
            }
            let (tq, toff) = parts[&id];
            ctx.get(tq).expect("own tensor").write_bytes(0, &q4)?;
            ctx.get(toff).expect("own tensor").write_f32(0, &off)?;
            bytes += q4.len() + 4 * off.len();
        }
        Ok(Self {
            ctx: FrozenContext::new(ctx),
            _buf: buf,
            parts,
            bytes,
        })
    }

    /// The split `(Q4_0 part, offsets)` of base weight `w`, if it is a split Q4_1 weight.
    pub(crate) fn get(&self, w: TensorId) -> Option<(Tensor<'_>, Tensor<'_>)> {
        let (q, off) = self.parts.get(&w)?;
        Some((self.ctx.get(*q)?, self.ctx.get(*off)?))
    }

    /// Bytes held by the copies.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}
