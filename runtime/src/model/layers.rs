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
    /// Batched decoding: each run of rows attends over its own sequence's cache region, with
    /// its own slice of `mask` (then 1-D). `None`: every row attends over cells `0..n_kv`.
    pub pieces: Option<&'a [AttnPiece]>,
}

/// Rows `row_start .. row_start + rows` of a batch belong to one sequence whose positions are
/// cache cells `cell_start ..`; they attend over `n_kv` of them with the `[n_kv, rows]` mask
/// at element `mask_offset` of the batch's mask.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttnPiece {
    pub row_start: usize,
    pub rows: usize,
    pub cell_start: usize,
    pub n_kv: usize,
    pub mask_offset: usize,
}

/// `rms_norm(x) * w`.
pub(crate) fn norm<'a>(ctx: &'a Context, x: Tensor<'a>, w: Tensor<'a>, eps: f32) -> Tensor<'a> {
    ctx.mul(ctx.rms_norm(x, eps), w)
}

/// Which adapters apply to which rows (tokens) of a batch.
#[derive(Clone, Copy)]
pub(crate) enum RowAdapters<'a> {
    /// One set for every row: a session, training.
    All(&'a ActiveAdapters),
    /// Contiguous row ranges, each with its own set: the batched decoder, where each sequence
    /// has its own adapters. The base matmul runs once over all rows; each set's deltas run
    /// on its rows only. The second list groups the rows kept for logits (`out_ids`), which
    /// the last layer's feed-forward sees.
    Groups(&'a [RowGroup], &'a [RowGroup]),
}

/// Rows `start .. start + len` of a batch and the adapters they use.
pub(crate) struct RowGroup {
    pub adapters: ActiveAdapters,
    pub start: usize,
    pub len: usize,
}

impl RowAdapters<'_> {
    /// Adapters counted for graph sizing (each set once per group).
    pub(crate) fn count(&self) -> usize {
        match self {
            RowAdapters::All(a) => a.len(),
            RowAdapters::Groups(g, _) => g.iter().map(|g| g.adapters.len() + 1).sum(),
        }
    }

    /// The adapters of the rows kept for logits, after `out_ids` selected them.
    pub(crate) fn output_rows(self) -> Self {
        match self {
            RowAdapters::Groups(_, out) => RowAdapters::Groups(out, out),
            all => all,
        }
    }
}

/// `W x (+ b)` plus the deltas of the active adapters for `target`: every linear layer of
/// every model goes through here (`target` is `None` for layers adapters cannot touch).
pub(crate) fn linear<'a>(
    ctx: &'a Context,
    adapters: RowAdapters<'a>,
    target: Option<Target>,
    w: Tensor<'a>,
    x: Tensor<'a>,
    b: Option<Tensor<'a>>,
) -> Tensor<'a> {
    match (target, adapters) {
        (Some(t), RowAdapters::All(a)) if !a.is_empty() => a.linear(ctx, t, w, x, None, b),
        (Some(t), RowAdapters::Groups(g, _)) if g.iter().any(|g| !g.adapters.is_empty()) => {
            crate::adapter::active::grouped_linear(ctx, g, t, w, x, b)
        }
        _ => {
            let y = ctx.mul_mat(w, x);
            match b {
                Some(b) => ctx.add(y, b),
                None => y,
            }
        }
    }
}

/// [`linear`] of several targets of one layer that read the same input `x` (q, k, v; gate,
/// up), each with its weight and bias: with one WeGeFT term on each, their input updates at
/// decode run as one node ([`ActiveAdapters::stacked_wegeft_inputs`]), otherwise each target
/// is built on its own. Results in `targets`' order.
pub(crate) fn linear_shared_input<'a, const N: usize>(
    ctx: &'a Context,
    adapters: RowAdapters<'a>,
    layer: usize,
    targets: [(TargetKind, Tensor<'a>, Option<Tensor<'a>>); N],
    x: Tensor<'a>,
) -> [Tensor<'a>; N] {
    let target = |kind| Target { layer, kind };
    if let RowAdapters::All(a) = adapters {
        let ts = targets.map(|(kind, ..)| target(kind));
        if let Some(inputs) = a.stacked_wegeft_inputs(ctx, &ts, x) {
            let mut inputs = inputs.into_iter();
            return targets.map(|(kind, w, b)| a.linear(ctx, target(kind), w, x, inputs.next(), b));
        }
    }
    targets.map(|(kind, w, b)| linear(ctx, adapters, Some(target(kind)), w, x, b))
}

/// SwiGLU feed-forward of layer `il`: `down(silu(gate x) * up x)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ffn_swiglu<'a>(
    ctx: &'a Context,
    adapters: RowAdapters<'a>,
    il: usize,
    x: Tensor<'a>,
    gate: Tensor<'a>,
    up: Tensor<'a>,
    down: Tensor<'a>,
) -> Tensor<'a> {
    let t = |kind| Some(Target { layer: il, kind });
    let [u, g] = linear_shared_input(
        ctx,
        adapters,
        il,
        [
            (TargetKind::FfnUp, up, None),
            (TargetKind::FfnGate, gate, None),
        ],
        x,
    );
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
    let n_embd_kv = cfg.n_embd_kv() as i64;
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

    let Some(pieces) = inp.pieces else {
        return cached_attention(ctx, cfg, kv, il, q, inp.mask, 0, inp.n_kv, scale);
    };
    // Per sequence: its rows of q over its own cache region, as a session would compute them;
    // the outputs go back to their rows (the first padded to all rows, the rest added).
    let mut out: Option<Tensor<'a>> = None;
    let mask_esz = if kv.v_trans() { 4 } else { 2 };
    for pc in pieces {
        let qj = ctx.view(
            q,
            &[q.ne()[0], pc.rows as i64, q.ne()[2]],
            &[q.nb()[1], q.nb()[2]],
            pc.row_start * q.nb()[1],
        );
        let mask = ctx.view(
            inp.mask,
            &[pc.n_kv as i64, pc.rows as i64],
            &[pc.n_kv * mask_esz],
            pc.mask_offset * mask_esz,
        );
        let o = cached_attention(ctx, cfg, kv, il, qj, mask, pc.cell_start, pc.n_kv, scale);
        out = Some(match out {
            None => ctx.pad(o, [0, (n - pc.rows as i64) as i32, 0, 0]),
            Some(acc) => {
                let nb = acc.nb();
                ctx.acc(acc, o, [nb[1], nb[2], nb[3]], pc.row_start * nb[1])
            }
        });
    }
    out.expect("a batch has rows")
}

/// Attention of `q [hd, rows, n_head]` (permuted) over the `n_kv` cache cells from
/// `cell_start` of layer `il`, with the `[n_kv, rows]` mask → `[n_embd_q, rows]`.
#[allow(clippy::too_many_arguments)]
fn cached_attention<'a>(
    ctx: &'a Context,
    cfg: &ModelConfig,
    kv: &'a KvCache,
    il: usize,
    q: Tensor<'a>,
    mask: Tensor<'a>,
    cell_start: usize,
    n_kv: usize,
    scale: f32,
) -> Tensor<'a> {
    let n = q.ne()[1];
    let hd = cfg.head_dim as i64;
    let n_head_kv = cfg.n_head_kv as i64;
    let n_embd_kv = cfg.n_embd_kv() as i64;
    let n_kv = n_kv as i64;
    let n_ctx = kv.n_ctx() as i64;
    let (kc, vc) = (kv.k(il), kv.v(il));
    let esz = kv.elem_size();
    let k = ctx.view(
        kc,
        &[hd, n_kv, n_head_kv],
        &[n_embd_kv as usize * esz, hd as usize * esz],
        cell_start * n_embd_kv as usize * esz,
    );
    if kv.v_trans() {
        let kq = ctx.mul_mat(k, q).accumulate_f32(); // [n_kv, n, n_head]
        let kq = ctx.soft_max_ext(kq, Some(mask), scale);
        let v = ctx.view(
            vc,
            &[n_kv, hd, n_head_kv],
            &[n_ctx as usize * esz, (n_ctx * hd) as usize * esz],
            cell_start * esz,
        );
        let kqv = ctx.mul_mat(v, kq); // [hd, n, n_head]
        let cur = ctx.permute(kqv, [0, 2, 1, 3]);
        ctx.cont_2d(cur, cfg.n_embd_q() as i64, n)
    } else {
        let v = ctx.view(
            vc,
            &[hd, n_kv, n_head_kv],
            &[n_embd_kv as usize * esz, hd as usize * esz],
            cell_start * n_embd_kv as usize * esz,
        );
        let cur = ctx.flash_attn_ext(q, k, v, mask, scale); // [hd, n_head, n]
        ctx.reshape(cur, &[cfg.n_embd_q() as i64, n])
    }
}
