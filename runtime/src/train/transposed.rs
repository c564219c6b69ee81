//! Working copies of the frozen quantized base weights, made once per trainer.
//!
//! **Transposed F16 copies, for the backward pass.** The input gradient of `y = W x` is
//! `Wᵀ g`. ggml's automatic backward computes it as
//! `out_prod(W, gᵀ)`, which for a quantized `W` dequantizes the whole matrix once per token.
//! With `W_T` (ne=[n_out, n_in], F16) the same product is a `mul_mat` on the F16 kernels
//! (about 5x faster training on a Q4_1 base), at the memory cost of an F16 copy of the layer
//! weights (2 bytes per weight). F16, not Q8_0: a Q8_0 product also rounds the incoming
//! gradient to 8-bit blocks, which moved SmolLM2's LoRA gradients by 20-50 % and made training
//! diverge; with F16 they stay within 1e-3 of the exact path.
//!
//! The LM head is copied too (its `out_prod` dequantized the 49152 x 576 embedding matrix
//! once per token: 45 % of a SmolLM2 training step). Its incoming gradient, softmax minus
//! one-hot over the vocabulary, is mostly probabilities below F16's normal range, which the
//! F16 product rounds away (1-2 % gradient error); the trainer scales the loss by
//! [`super::LOSS_SCALE`] so they stay representable (1e-3 again, like the block weights).
//!
//! **Q4_1 split, for the forward pass.** ggml has no GEMM kernel for Q4_1: its forward products
//! ran one dot product per (row, token), a third of a training step. Each Q4_1 block weight is
//! also kept as a Q4_0 matrix plus per-block offsets ([`graft_ggml::split_q4_1_row`]), whose two
//! products sum to the Q4_1 product up to f32 rounding, the large one on tinyBLAS's Q4_0 GEMM
//! (0.69 bytes per weight).

use std::collections::HashMap;

use graft_ggml::{Backend, Buffer, Context, FrozenContext, Tensor, TensorId, Type};

use crate::error::Result;
use crate::model::Model;

/// The copies and which base weight each stands for.
pub(crate) struct TransposedWeights {
    ctx: FrozenContext,
    _buf: Option<Buffer>,
    map: HashMap<TensorId, TensorId>,
    /// Q4_1 block weight -> (its Q4_0 part, its offsets `[m, 8d]` per block).
    split: HashMap<TensorId, (TensorId, TensorId)>,
    bytes: usize,
    split_bytes: usize,
}

impl TransposedWeights {
    /// Copies for every quantized linear weight of the blocks and the LM head; F32/F16/BF16
    /// weights keep ggml's `out_prod` path. With `split`, Q4_1 block weights are also split
    /// for the forward pass.
    pub(crate) fn build(model: &Model, split: bool) -> Result<Self> {
        let mut ids: Vec<TensorId> = Vec::new();
        for l in &model.layers {
            ids.extend([l.wq, l.wk, l.wv, l.wo, l.ffn_gate, l.ffn_up, l.ffn_down]);
        }
        ids.push(model.output);
        let picked: Vec<TensorId> = ids
            .into_iter()
            .filter(|&id| {
                let w = model.w(id);
                let ty = w.ty();
                ty != Type::F32 && ty != Type::F16 && ty != Type::BF16
            })
            .collect();
        let ctx = Context::new(3 * picked.len() + 1, 0)?;
        let mut map = HashMap::new();
        let mut parts = HashMap::new();
        for &id in &picked {
            let w = model.w(id);
            let [n_in, n_out, _, _] = w.ne();
            map.insert(id, ctx.new_tensor(Type::F16, &[n_out, n_in]).id());
            if split && id != model.output && w.ty() == Type::Q4_1 {
                let nb = n_in / graft_ggml::Q4_BLOCK as i64;
                let q = ctx.new_tensor(Type::Q4_0, &[n_in, n_out]).id();
                let off = ctx.new_tensor(Type::F32, &[2 * nb, n_out]).id();
                parts.insert(id, (q, off));
            }
        }
        // One buffer for all copies (none when nothing is quantized); each is filled from the
        // weight a row at a time, so the only other memory held is one copy's bytes.
        let buf = if picked.is_empty() {
            None
        } else {
            Some(Backend::cpu(1)?.alloc_ctx_tensors(&ctx)?)
        };
        let (mut bytes, mut split_bytes) = (0, 0);
        for id in picked {
            let w = model.w(id);
            let [n_in, n_out, _, _] = w.ne();
            let (n_in, n_out) = (n_in as usize, n_out as usize);
            let row_bytes = w.ty().row_size(n_in as i64);
            let mut raw = vec![0u8; row_bytes];
            let mut q = vec![0u8; 2 * n_in * n_out];
            let parts_of = parts.get(&id).copied();
            let (mut q4, mut off) = (Vec::new(), Vec::new());
            for o in 0..n_out {
                w.read_bytes(o * row_bytes, &mut raw)?;
                if parts_of.is_some() {
                    graft_ggml::split_q4_1_row(&raw, n_in, &mut q4, &mut off)
                        .expect("a Q4_1 row of the weight's own length");
                }
                let row = graft_ggml::dequantize(w.ty(), &raw, n_in)?;
                for (i, x) in row.into_iter().enumerate() {
                    let at = 2 * (i * n_out + o);
                    q[at..at + 2].copy_from_slice(&half::f16::from_f32(x).to_le_bytes());
                }
            }
            ctx.get(map[&id]).expect("own tensor").write_bytes(0, &q)?;
            bytes += q.len();
            if let Some((tq, toff)) = parts_of {
                ctx.get(tq).expect("own tensor").write_bytes(0, &q4)?;
                ctx.get(toff).expect("own tensor").write_f32(0, &off)?;
                split_bytes += q4.len() + 4 * off.len();
            }
        }
        Ok(Self {
            ctx: FrozenContext::new(ctx),
            _buf: buf,
            map,
            split: parts,
            bytes,
            split_bytes,
        })
    }

    /// The copy standing for base weight `w`.
    pub(crate) fn get(&self, w: TensorId) -> Option<Tensor<'_>> {
        self.map.get(&w).and_then(|id| self.ctx.get(*id))
    }

    /// The forward split `(Q4_0 part, offsets)` of Q4_1 base weight `w`.
    pub(crate) fn split(&self, w: TensorId) -> Option<(Tensor<'_>, Tensor<'_>)> {
        let (q, off) = self.split.get(&w)?;
        Some((self.ctx.get(*q)?, self.ctx.get(*off)?))
    }

    /// Bytes held by the Q4_1 split copies.
    pub(crate) fn split_bytes(&self) -> usize {
        self.split_bytes
    }

    /// Bytes held by the transposed copies.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}
