//! The llama-family forward graph (llama, SmolLM2, Qwen2).
//!
//! Qwen2 is the same graph with q/k/v biases (optional weights here) and NeoX-style RoPE
//! (chosen by [`ModelConfig::rope_mode`]). Node names follow llama.cpp's (`attn_norm-3`,
//! `ffn_out-3`, `result_output`) so the two can be compared node by node.

use graft_ggml::{Context, Graph, Tensor, Type};

use super::device::DeviceWeights;
use super::layers::{
    attention, ffn_swiglu, linear, linear_shared_input, norm, AttnInputs, AttnPiece, RowAdapters,
};
use super::Model;
use crate::adapter::{Target, TargetKind};
use crate::kv_cache::KvCache;

/// Shape of one forward batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchShape {
    /// Tokens in the batch.
    pub n_tokens: usize,
    /// Cache positions attended over (padded; masked beyond the real ones).
    pub n_kv: usize,
    /// Positions whose logits are wanted (the last `n_out` of the batch).
    pub n_out: usize,
    /// The batch is given as input embeddings (soft prompts) rather than token ids.
    pub embeddings: bool,
    /// Training: the input embeddings are a parameter, so the backward pass yields dL/d input
    /// (LoPA trains its soft-prompt encoder from it). Needs `embeddings`.
    pub input_grad: bool,
}

/// The graph's input tensors, to be filled before computing.
pub(crate) struct GraphInputs<'a> {
    /// I32 `[n_tokens]` token ids, or F32 `[n_embd, n_tokens]` embeddings.
    pub tokens: Tensor<'a>,
    pub attn: AttnInputs<'a>,
    pub out_ids: Option<Tensor<'a>>,
    /// F32 `[n_vocab, n_out]` logits, or the hidden state `[n_embd, n_out]` after the last
    /// layer of a [`Span`] without the head.
    pub out: Tensor<'a>,
}

/// The part of the model a graph covers: the whole model for inference; training with
/// gradient checkpointing runs one layer, or the output head over some rows, at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    /// Layers `first .. end`. With `first > 0` (or no layer at all) the graph's input is the
    /// hidden state before layer `first`, given like input embeddings (`BatchShape::embeddings`).
    pub first: usize,
    pub end: usize,
    /// The final norm and the LM head follow (the graph yields logits); otherwise it yields the
    /// hidden state after layer `end - 1`.
    pub head: bool,
}

impl Span {
    /// Every layer and the head.
    pub(crate) fn whole(model: &Model) -> Self {
        Span {
            first: 0,
            end: model.layers.len(),
            head: true,
        }
    }
}

/// A training graph (forward + backward + gradient accumulation) holds at most this many
/// times the nodes of a forward graph.
pub(crate) const TRAIN_GRAPH_FACTOR: usize = 4;

/// Most graph nodes one batch can need with `n_adapters` active adapters (generous).
pub(crate) fn max_nodes(model: &Model, n_adapters: usize) -> usize {
    (model.layers.len() * (64 + 7 * 16 * n_adapters) + 256).max(2048)
}

/// Builds the forward graph for one batch, reading the weights from the map or from their copy
/// on a device or the CPU's repacked copy (`on_device`; a weight it lacks is read from the
/// map): over the KV cache `kv` (inference), or with no
/// cache (`kv: None`, training: attention within the batch, every op differentiable, the graph
/// made with room for gradients). `span` is [`Span::whole`] but for gradient checkpointing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build<'a>(
    model: &'a Model,
    on_device: Option<&'a DeviceWeights>,
    kv: Option<&'a KvCache>,
    adapters: RowAdapters<'a>,
    ctx: &'a Context,
    shape: BatchShape,
    pieces: Option<&'a [AttnPiece]>,
    span: Span,
) -> (Graph<'a>, GraphInputs<'a>) {
    debug_assert!(
        span == Span::whole(model) || (kv.is_none() && (span.first == 0 || shape.embeddings)),
        "a partial graph is a training graph; after layer 0 its input is a hidden state"
    );
    let cfg = model.config();
    let n = shape.n_tokens as i64;
    let nodes =
        max_nodes(model, adapters.count()) * if kv.is_none() { TRAIN_GRAPH_FACTOR } else { 1 };
    let mut gf = ctx.new_graph(nodes, kv.is_none());

    let tokens = if shape.embeddings {
        ctx.new_tensor(Type::F32, &[cfg.n_embd as i64, n])
    } else {
        ctx.new_tensor(Type::I32, &[n])
    }
    .set_name("inp_tokens")
    .set_input();
    if shape.input_grad {
        // Before any forward expansion: ggml records a parameter leaf as a graph node.
        debug_assert!(shape.embeddings && kv.is_none());
        tokens.set_param();
    }
    let pos = ctx
        .new_tensor(Type::I32, &[n])
        .set_name("inp_pos")
        .set_input();
    let mask_ty = if kv.is_none_or(|kv| kv.v_trans()) {
        Type::F32
    } else {
        Type::F16
    };
    // Per-sequence masks (batched decoding) lie one after the other in a 1-D tensor.
    let mask_ne = match pieces {
        Some(p) => vec![p.iter().map(|p| (p.n_kv * p.rows) as i64).sum()],
        None => vec![shape.n_kv as i64, n],
    };
    let mask = ctx
        .new_tensor(mask_ty, &mask_ne)
        .set_name("kq_mask")
        .set_input();
    let k_idx = kv.map(|_| {
        ctx.new_tensor(Type::I64, &[n])
            .set_name("k_idxs")
            .set_input()
    });
    let v_idx = kv.map(|kv| {
        let n_v_idx = if kv.v_trans() {
            n * cfg.n_embd_kv() as i64
        } else {
            n
        };
        ctx.new_tensor(Type::I64, &[n_v_idx])
            .set_name("v_idxs")
            .set_input()
    });
    let out_ids = (shape.n_out < shape.n_tokens).then(|| {
        ctx.new_tensor(Type::I32, &[shape.n_out as i64])
            .set_name("inp_out_ids")
            .set_input()
    });
    let inp = AttnInputs {
        pos,
        mask,
        k_idx,
        v_idx,
        n_kv: shape.n_kv,
        pieces,
    };

    let w = |id| {
        on_device
            .and_then(|d| d.get(id))
            .unwrap_or_else(|| model.w(id))
    };
    let mut x = if shape.embeddings {
        tokens
    } else {
        ctx.get_rows(w(model.tok_embd), tokens).set_name("inp_embd")
    };
    let (hd, nh, nkv) = (cfg.head_dim as i64, cfg.n_head as i64, cfg.n_head_kv as i64);
    let rope = cfg.rope();
    for (il, l) in model
        .layers
        .iter()
        .enumerate()
        .take(span.end)
        .skip(span.first)
    {
        let mut residual = x;
        let cur = norm(ctx, x, w(l.attn_norm), cfg.rms_eps).set_name(&format!("attn_norm-{il}"));
        let t = |kind| Some(Target { layer: il, kind });
        let [q, k, v] = linear_shared_input(
            ctx,
            adapters,
            il,
            [
                (TargetKind::AttnQ, w(l.wq), l.bq.map(w)),
                (TargetKind::AttnK, w(l.wk), l.bk.map(w)),
                (TargetKind::AttnV, w(l.wv), l.bv.map(w)),
            ],
            cur,
        );
        let q = ctx
            .rope_ext(ctx.reshape(q, &[hd, nh, n]), pos, &rope)
            .set_name(&format!("Qcur-{il}"));
        let k = ctx
            .rope_ext(ctx.reshape(k, &[hd, nkv, n]), pos, &rope)
            .set_name(&format!("Kcur-{il}"));
        let v = ctx
            .reshape(v, &[hd, nkv, n])
            .set_name(&format!("Vcur-{il}"));
        let att = attention(ctx, &mut gf, cfg, kv, il, &inp, q, k, v);
        let mut cur = linear(
            ctx,
            adapters,
            t(TargetKind::AttnOut),
            w(l.wo),
            att,
            l.bo.map(w),
        )
        .set_name(&format!("attn_out-{il}"));
        let mut ffn_adapters = adapters;
        if il + 1 == model.layers.len() {
            if let Some(ids) = out_ids {
                cur = ctx.get_rows(cur, ids);
                residual = ctx.get_rows(residual, ids);
                ffn_adapters = adapters.output_rows();
            }
        }
        let ffn_inp = ctx.add(cur, residual).set_name(&format!("ffn_inp-{il}"));
        let cur =
            norm(ctx, ffn_inp, w(l.ffn_norm), cfg.rms_eps).set_name(&format!("ffn_norm-{il}"));
        let cur = ffn_swiglu(
            ctx,
            ffn_adapters,
            il,
            cur,
            w(l.ffn_gate),
            w(l.ffn_up),
            w(l.ffn_down),
        );
        x = ctx.add(cur, ffn_inp).set_name(&format!("l_out-{il}"));
    }
    let out = if span.head {
        let cur = norm(ctx, x, w(model.output_norm), cfg.rms_eps).set_name("result_norm");
        linear(ctx, adapters, None, w(model.output), cur, None).set_name("result_output")
    } else {
        x
    }
    .set_output();
    gf.build_forward_expand(out);
    (
        gf,
        GraphInputs {
            tokens,
            attn: inp,
            out_ids,
            out,
        },
    )
}
