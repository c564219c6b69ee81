//! Building blocks shared by every architecture's graph: norms, the linear-layer hook,
//! attention over the KV cache and the gated feed-forward network.
//!
//! Every linear layer goes through [`linear`]; adapters hook in there and only there.

use graft_ggml::{Context, Tensor};

use crate::adapter::{ActiveAdapters, Target, TargetKind};
use crate::kv_cache::KvCache;
use crate::model::ModelConfig;

/// Per-batch inputs of the attention layers.
pub(crate) struct AttnInputs<'a> {
    /// I32 `[n_tokens]` positions.
    pub pos: Tensor<'a>,
    /// `[n_kv, n_tokens]` additive mask (F32; F16 for flash attention).
    pub mask: Tensor<'a>,
    /// I64 `[n_tokens]` cache rows the new keys go to (cached attention only).
    pub k_idx: Option<Tensor<'a>>,
    /// I64 value destinations: `[n_tokens * n_embd_kv]` element indices when values are
    /// stored transposed, else `[n_tokens]` rows (cached attention only).
    pub v_idx: Option<Tensor<'a>>,
    /// Cache positions the batch attends over.
    pub n_kv: usize,
}

/// `rms_norm(x) * w`.
pub(crate) fn norm<'a>(ctx: &'a Context, x: Tensor<'a>, w: Tensor<'a>, eps: f32) -> Tensor<'a> {
    ctx.mul(ctx.rms_norm(x, eps), w)
}

/// `W x (+ b)` plus the deltas of the active adapters for `target`: every linear layer of
/// every model goes through here (`target` is `None` for layers adapters cannot touch).
pub(crate) fn linear<'a>(
    ctx: &'a Context,
    adapters: &'a ActiveAdapters,
    target: Option<Target>,
    w: Tensor<'a>,
    x: Tensor<'a>,
    b: Option<Tensor<'a>>,
) -> Tensor<'a> {
    match target {
        Some(t) if !adapters.is_empty() => adapters.linear(ctx, t, w, x, b),
        _ => {
            let y = ctx.mul_mat(w, x);
            match b {
                Some(b) => ctx.add(y, b),
                None => y,
            }
        }
    }
}

/// SwiGLU feed-forward of layer `il`: `down(silu(gate x) * up x)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ffn_swiglu<'a>(
    ctx: &'a Context,
    adapters: &'a ActiveAdapters,
    il: usize,
    x: Tensor<'a>,
    gate: Tensor<'a>,
    up: Tensor<'a>,
    down: Tensor<'a>,
) -> Tensor<'a> {
    let t = |kind| Some(Target { layer: il, kind });
    let u = linear(ctx, adapters, t(TargetKind::FfnUp), up, x, None);
    let g = linear(ctx, adapters, t(TargetKind::FfnGate), gate, x, None);
    linear(
        ctx,
        adapters,
        t(TargetKind::FfnDown),
        down,
        ctx.swiglu_split(g, u),
        None,
    )
}

/// Attention of layer `il`: over the KV cache when `kv` is given (the batch's roped keys
/// and values are stored first), else within the batch only (training: no cache, every op
/// differentiable). `q [hd, n_head, n]`, `k`/`v [hd, n_head_kv, n]` → `[n_embd_q, n]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention<'a>(
    ctx: &'a Context,
    graph: &mut graft_ggml::Graph<'a>,
    cfg: &ModelConfig,
    kv: Option<&'a KvCache>,
    il: usize,
    inp: &AttnInputs<'a>,
    q: Tensor<'a>,
    k: Tensor<'a>,
    v: Tensor<'a>,
) -> Tensor<'a> {
    let scale = 1.0 / (cfg.head_dim as f32).sqrt();
    let n = q.ne()[2];
    let q = ctx.permute(q, [0, 2, 1, 3]); // [hd, n, n_head]
    let Some(kv) = kv else {
        let k = ctx.cont(ctx.permute(k, [0, 2, 1, 3])); // [hd, n, n_head_kv]
        let kq = ctx.mul_mat(k, q).accumulate_f32(); // [n, n, n_head]
        let kq = ctx.soft_max_ext(kq, Some(inp.mask), scale);
        let vt = ctx.cont(ctx.permute(v, [1, 2, 0, 3])); // [n, hd, n_head_kv]
        let kqv = ctx.mul_mat(vt, kq); // [hd, n, n_head]
        return ctx.cont_2d(ctx.permute(kqv, [0, 2, 1, 3]), cfg.n_embd_q() as i64, n);
    };
    let hd = cfg.head_dim as i64;
    let n_head_kv = cfg.n_head_kv as i64;
    let n_embd_kv = cfg.n_embd_kv() as i64;
    let n_kv = inp.n_kv as i64;
    let n_ctx = kv.n_ctx() as i64;
    let kc = kv.k(il);
    let vc = kv.v(il);
    let esz = kv.elem_size();
    let (k_idx, v_idx) = (
        inp.k_idx.expect("cached attention has k_idx"),
        inp.v_idx.expect("cached attention has v_idx"),
    );

    // Store K and V (their nodes run before the reads below: graph order is build order).
    let k_store = ctx.set_rows(kc, ctx.reshape(k, &[n_embd_kv, n]), k_idx);
    graph.build_forward_expand(k_store);
    let v_store = if kv.v_trans() {
        let flat = ctx.view(vc, &[1, n_ctx * n_embd_kv], &[esz], 0);
        ctx.set_rows(flat, ctx.reshape(v, &[1, n * n_embd_kv]), v_idx)
    } else {
        ctx.set_rows(vc, ctx.reshape(v, &[n_embd_kv, n]), v_idx)
    };
    graph.build_forward_expand(v_store);

    let k = ctx.view(
        kc,
        &[hd, n_kv, n_head_kv],
        &[n_embd_kv as usize * esz, hd as usize * esz],
        0,
    );
    if kv.v_trans() {
        let kq = ctx.mul_mat(k, q).accumulate_f32(); // [n_kv, n, n_head]
        let kq = ctx.soft_max_ext(kq, Some(inp.mask), scale);
        let v = ctx.view(
            vc,
            &[n_kv, hd, n_head_kv],
            &[n_ctx as usize * esz, (n_ctx * hd) as usize * esz],
            0,
        );
        let kqv = ctx.mul_mat(v, kq); // [hd, n, n_head]
        let cur = ctx.permute(kqv, [0, 2, 1, 3]);
        ctx.cont_2d(cur, cfg.n_embd_q() as i64, n)
    } else {
        let v = ctx.view(
            vc,
            &[hd, n_kv, n_head_kv],
            &[n_embd_kv as usize * esz, hd as usize * esz],
            0,
        );
        let cur = ctx.flash_attn_ext(q, k, v, inp.mask, scale); // [hd, n_head, n]
        ctx.reshape(cur, &[cfg.n_embd_q() as i64, n])
    }
}
