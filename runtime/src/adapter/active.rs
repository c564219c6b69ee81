//! The set of adapters active for one session or request, with their user scales, and the
//! hook that applies it to a linear layer.

use std::sync::Arc;

use graft_ggml::{Context, Tensor};

use super::{diablo, lora, wegeft, Adapter, Delta, Target};
use crate::model::layers::RowGroup;

/// Adapters with their user scales `s_user`. Deltas of several adapters add.
#[derive(Clone, Default)]
pub struct ActiveAdapters {
    items: Vec<(Arc<Adapter>, f32)>,
    /// Training only: LoRA and DiaBlo see their input through a dropout mask, a graph input
    /// named by [`dropout_mask_name`] that the trainer fills each step.
    input_dropout: bool,
    /// The device whose graphs this set is built into (adapter tensors read from their copies
    /// there); `None` on the CPU.
    device: Option<Arc<str>>,
}

/// The name of the dropout-mask input of `target` in a training graph.
pub(crate) fn dropout_mask_name(target: Target) -> String {
    format!("dropout-{}-{}", target.layer, target.kind.index())
}

impl std::fmt::Debug for ActiveAdapters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.items.iter().map(|(a, s)| (a.name(), s)))
            .finish()
    }
}

impl ActiveAdapters {
    /// No adapter: the base model.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds `adapter` at scale `s_user` (replacing its scale if it is already in the set).
    pub fn with(mut self, adapter: Arc<Adapter>, s_user: f32) -> Self {
        self.set(adapter, s_user);
        self
    }

    /// This set as graphs on `device` read it (see [`Adapter::t_on`]).
    pub(crate) fn on_device(&self, device: &Arc<str>) -> Self {
        Self {
            device: Some(device.clone()),
            ..self.clone()
        }
    }

    /// Training: apply a dropout mask to the input of LoRA and DiaBlo deltas.
    pub(crate) fn with_input_dropout(mut self) -> Self {
        self.input_dropout = true;
        self
    }

    /// Adds or rescales `adapter`.
    pub fn set(&mut self, adapter: Arc<Adapter>, s_user: f32) {
        match self
            .items
            .iter_mut()
            .find(|(a, _)| Arc::ptr_eq(a, &adapter))
        {
            Some(e) => e.1 = s_user,
            None => self.items.push((adapter, s_user)),
        }
    }

    /// Removes the adapter called `name`; returns whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let n = self.items.len();
        self.items.retain(|(a, _)| a.name() != name);
        n != self.items.len()
    }

    /// The adapters and their scales, in activation order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<Adapter>, f32)> {
        self.items.iter().map(|(a, s)| (a, *s))
    }

    /// Whether no adapter is active.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of active adapters.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether `other` computes exactly the same function (same adapters, same scales).
    pub fn same_as(&self, other: &ActiveAdapters) -> bool {
        self.items.len() == other.items.len()
            && self.input_dropout == other.input_dropout
            && self
                .items
                .iter()
                .zip(&other.items)
                .all(|((a, s), (b, t))| Arc::ptr_eq(a, b) && s.to_bits() == t.to_bits())
    }

    /// Fails unless every adapter was loaded for `model` (its fingerprint).
    pub(crate) fn check_base(&self, model: &crate::model::Model) -> crate::error::Result<()> {
        for (a, _) in self.iter() {
            if a.base_fingerprint() != model.fingerprint() {
                return Err(crate::error::Error::InvalidAdapter(format!(
                    "adapter {} was loaded for another base model ({}); this base is {}",
                    a.name(),
                    a.base_fingerprint(),
                    model.fingerprint()
                )));
            }
        }
        Ok(())
    }

    /// Whether any active adapter adds a soft prompt.
    pub fn has_soft_prompt(&self) -> bool {
        self.items.iter().any(|(a, _)| a.lopa().is_some())
    }

    /// Virtual tokens the active LoPA adapters place before a prompt, all together.
    pub fn soft_prompt_len(&self) -> usize {
        self.items
            .iter()
            .filter_map(|(a, _)| a.lopa().map(|l| l.virtual_tokens()))
            .sum()
    }

    /// The WeGeFT inputs `x + s φᵀψx` of `targets`, which all read `x`, computed by one node
    /// ([`Context::low_rank_updates`]: q, k and v, or gate and up, each otherwise a node of its
    /// own) and returned as views, one per target, equal bit for bit to what
    /// [`ActiveAdapters::linear`] computes for each. `None` where that does not apply: on a
    /// device, in training graphs, for more than one token, unless every target has exactly one
    /// WeGeFT term and all of them the same scale.
    pub(crate) fn stacked_wegeft_inputs<'a>(
        &'a self,
        ctx: &'a Context,
        targets: &[Target],
        x: Tensor<'a>,
    ) -> Option<Vec<Tensor<'a>>> {
        if self.device.is_some() || self.input_dropout || targets.len() < 2 {
            return None;
        }
        let mut pairs = Vec::with_capacity(targets.len());
        let mut scale: Option<f32> = None;
        for &target in targets {
            let mut terms = self.items.iter().flat_map(|(a, s_user)| {
                a.deltas(target).iter().filter_map(move |d| match *d {
                    Delta::Wegeft { phi_t, psi, scale } => {
                        Some((a.t(psi), a.t(phi_t), scale * s_user))
                    }
                    _ => None,
                })
            });
            let (psi, phi_t, s) = terms.next()?;
            if terms.next().is_some() || scale.is_some_and(|v| v.to_bits() != s.to_bits()) {
                return None;
            }
            scale = Some(s);
            pairs.push((psi, phi_t));
        }
        let stacked = ctx.low_rank_updates(x, &pairs, scale?)?;
        let nb1 = stacked.nb()[1];
        Some(
            (0..targets.len())
                .map(|j| ctx.view(stacked, &[x.ne()[0], 1], &[nb1], j * nb1))
                .collect(),
        )
    }

    /// `W x (+ b)` plus every active delta for `target`: WeGeFT terms on the input, LoRA and
    /// DiaBlo terms on the output. `wegeft_input`: the WeGeFT input already computed (by
    /// [`ActiveAdapters::stacked_wegeft_inputs`]), so the WeGeFT terms are not added again.
    pub(crate) fn linear<'a>(
        &'a self,
        ctx: &'a Context,
        target: Target,
        w: Tensor<'a>,
        x: Tensor<'a>,
        wegeft_input: Option<Tensor<'a>>,
        bias: Option<Tensor<'a>>,
    ) -> Tensor<'a> {
        let mut xin = wegeft_input.unwrap_or(x);
        let needs_mask = self.input_dropout
            && self.items.iter().any(|(a, _)| {
                a.deltas(target)
                    .iter()
                    .any(|d| matches!(d, Delta::Lora { .. } | Delta::Diablo { .. }))
            });
        // LoRA and DiaBlo read `xd`: x, or x through the dropout mask when training with it.
        let xd = if needs_mask {
            let [n0, n1, n2, n3] = x.ne();
            let mask = ctx
                .new_tensor(graft_ggml::Type::F32, &[n0, n1, n2, n3])
                .set_name(&dropout_mask_name(target))
                .set_input();
            ctx.mul(x, mask)
        } else {
            x
        };
        let mut post: Vec<Tensor<'a>> = Vec::new();
        let mut blocks = Vec::new();
        let dev = self.device.as_deref();
        for (adapter, s_user) in &self.items {
            let t = |id| adapter.t_on(id, dev);
            for d in adapter.deltas(target) {
                match *d {
                    Delta::Wegeft { .. } if wegeft_input.is_some() => {}
                    Delta::Wegeft { phi_t, psi, scale } => {
                        let (phi_t, psi, s) = (t(phi_t), t(psi), scale * s_user);
                        // One token on the CPU: one fused node instead of four (a CPU custom
                        // op; `None` for training graphs and shapes it does not take). LoRA
                        // keeps ggml's four ops: its results stay bit-identical to llama.cpp's.
                        let fused = if dev.is_none() {
                            ctx.low_rank_update(xin, x, psi, phi_t, s)
                        } else {
                            None
                        };
                        xin = fused
                            .unwrap_or_else(|| ctx.add(xin, wegeft::delta(ctx, phi_t, psi, x, s)));
                    }
                    Delta::Lora { a, b, scale } => {
                        post.push(lora::delta(ctx, t(a), t(b), xd, scale * s_user));
                    }
                    Delta::Diablo {
                        d,
                        bs_in,
                        bs_out,
                        nb,
                    } => {
                        blocks.push((t(d), (bs_in, bs_out, nb), *s_user));
                    }
                }
            }
        }
        let mut y = ctx.mul_mat(w, xin);
        for p in post {
            y = ctx.add(y, p);
        }
        for (d, geom, s) in blocks {
            y = diablo::apply(ctx, d, xd, y, geom, s, dev.is_none());
        }
        match bias {
            Some(b) => ctx.add(y, b),
            None => y,
        }
    }
}

/// Rows `g` of the 2-D tensor `t` (`[ne0, n]`, rows along ne1): a contiguous view.
fn rows<'a>(ctx: &'a Context, t: Tensor<'a>, g: &RowGroup) -> Tensor<'a> {
    let nb1 = t.nb()[1];
    ctx.view(t, &[t.ne()[0], g.len as i64], &[nb1], g.start * nb1)
}

/// [`ActiveAdapters::linear`] for a batch whose row ranges use different adapter sets
/// (S-LoRA-style heterogeneous batching): one base matmul `W x` over every row; each group's
/// WeGeFT terms are added to its input rows and its LoRA and DiaBlo terms to its output rows
/// (`acc` at the group's offset), computed on its rows only. Rows of a group with no adapter
/// get the base output unchanged.
///
/// The terms are added one by one in the order [`ActiveAdapters::linear`] adds them (WeGeFT in
/// set order, then LoRA, then DiaBlo), so every row gets the same floating-point result as the
/// same set in a session: with quantized activations a last-bit difference in one layer's
/// output can move the logits by tenths.
pub(crate) fn grouped_linear<'a>(
    ctx: &'a Context,
    groups: &'a [RowGroup],
    target: Target,
    w: Tensor<'a>,
    x: Tensor<'a>,
    bias: Option<Tensor<'a>>,
) -> Tensor<'a> {
    let x = if x.is_contiguous() { x } else { ctx.cont(x) };
    let add_rows = |to: Tensor<'a>, t: Tensor<'a>, g: &RowGroup| {
        let nb = to.nb();
        ctx.acc(to, t, [nb[1], nb[2], nb[3]], g.start * nb[1])
    };
    let mut xin = x;
    for g in groups {
        for (adapter, s_user) in g.adapters.iter() {
            for delta in adapter.deltas(target) {
                if let Delta::Wegeft { phi_t, psi, scale } = *delta {
                    let xg = rows(ctx, x, g);
                    let dev = g.adapters.device.as_deref();
                    let (phi_t, psi) = (adapter.t_on(phi_t, dev), adapter.t_on(psi, dev));
                    let t = wegeft::delta(ctx, phi_t, psi, xg, scale * s_user);
                    xin = add_rows(xin, t, g);
                }
            }
        }
    }
    let mut y = ctx.mul_mat(w, xin);
    let n_out = y.ne()[0];
    for g in groups {
        let items = || {
            g.adapters
                .iter()
                .flat_map(|(a, s)| a.deltas(target).iter().map(move |d| (a, s, d)))
        };
        for (adapter, s_user, delta) in items() {
            if let Delta::Lora { a, b, scale } = *delta {
                let dev = g.adapters.device.as_deref();
                let t = lora::delta(
                    ctx,
                    adapter.t_on(a, dev),
                    adapter.t_on(b, dev),
                    rows(ctx, x, g),
                    scale * s_user,
                );
                y = add_rows(y, t, g);
            }
        }
        for (adapter, s_user, delta) in items() {
            if let Delta::Diablo {
                d: blocks,
                bs_in,
                bs_out,
                nb,
            } = *delta
            {
                let t = diablo::delta(
                    ctx,
                    adapter.t_on(blocks, g.adapters.device.as_deref()),
                    rows(ctx, x, g),
                    n_out,
                    (bs_in, bs_out, nb),
                    s_user,
                );
                y = add_rows(y, t, g);
            }
        }
    }
    match bias {
        Some(b) => ctx.add(y, b),
        None => y,
    }
}
