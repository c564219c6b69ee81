//! Pre-transposed F16 copies of the frozen quantized base weights, for the backward pass.
//!
//! The input gradient of `y = W x` is `Wᵀ g`. ggml's automatic backward computes it as
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

use std::collections::HashMap;

use graft_ggml::{Backend, Buffer, Context, FrozenContext, Tensor, TensorId, Type};

use crate::error::Result;
use crate::model::Model;

/// The transposed copies and which base weight each stands for.
pub(crate) struct TransposedWeights {
    ctx: FrozenContext,
    _buf: Option<Buffer>,
    map: HashMap<TensorId, TensorId>,
    bytes: usize,
}

impl TransposedWeights {
    /// Copies for every quantized linear weight of the blocks and the LM head; F32/F16/BF16
    /// weights keep ggml's `out_prod` path.
    pub(crate) fn build(model: &Model) -> Result<Self> {
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
        let ctx = Context::new(picked.len() + 1, 0)?;
        let mut map = HashMap::new();
        for &id in &picked {
            let [n_in, n_out, _, _] = model.w(id).ne();
            map.insert(id, ctx.new_tensor(Type::F16, &[n_out, n_in]).id());
        }
        // One buffer for all copies (none when nothing is quantized); each is filled from the
        // weight a row at a time, so the only other memory held is one copy's bytes.
        let buf = if picked.is_empty() {
            None
        } else {
            Some(Backend::cpu(1)?.alloc_ctx_tensors(&ctx)?)
        };
        let mut bytes = 0;
        for id in picked {
            let w = model.w(id);
            let [n_in, n_out, _, _] = w.ne();
            let (n_in, n_out) = (n_in as usize, n_out as usize);
            let row_bytes = w.ty().row_size(n_in as i64);
            let mut raw = vec![0u8; row_bytes];
            let mut q = vec![0u8; 2 * n_in * n_out];
            for o in 0..n_out {
                w.read_bytes(o * row_bytes, &mut raw)?;
                let row = graft_ggml::dequantize(w.ty(), &raw, n_in)?;
                for (i, x) in row.into_iter().enumerate() {
                    let at = 2 * (i * n_out + o);
                    q[at..at + 2].copy_from_slice(&half::f16::from_f32(x).to_le_bytes());
                }
            }
            ctx.get(map[&id]).expect("own tensor").write_bytes(0, &q)?;
            bytes += q.len();
        }
        Ok(Self {
            ctx: FrozenContext::new(ctx),
            _buf: buf,
            map,
            bytes,
        })
    }

    /// The copy standing for base weight `w`.
    pub(crate) fn get(&self, w: TensorId) -> Option<Tensor<'_>> {
        self.map.get(&w).and_then(|id| self.ctx.get(*id))
    }

    /// Bytes held by the copies.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}
