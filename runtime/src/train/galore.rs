//! GaLore for DiaBlo's full-rank blocks (Zhao et al., 2024, "GaLore: Memory-Efficient LLM
//! Training by Gradient Low-Rank Projection").
//!
//! Each block's gradient `G` (bs_out × bs_in) is projected onto its top-`r` singular vectors
//! on the smaller side: `R = Pᵀ G` with `P` the top-r left singular vectors (bs_out ≤ bs_in),
//! or `R = G Q` with `Q` the top-r right ones. Adam's moments live on `R`; the update is
//! projected back, `ΔD = scale · P N` (or `N Qᵀ`) with `N = m̂ / (√v̂ + ε)`. `P` is recomputed
//! from the current gradient every `every` steps; the moments carry over, as in the paper.
//! Optimizer memory per block drops from `2 · bs_out · bs_in` to
//! `2 · r · long_side + r · short_side` floats.

use graft_formats::{Gguf, GgufWriter};
use nalgebra::DMatrix;

use crate::error::{Error, Result};

/// GaLore settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GaloreConfig {
    /// Projection rank r (below the smaller block side).
    pub rank: usize,
    /// Recompute the projections every this many optimizer steps.
    pub every: usize,
    /// Update scale α.
    pub scale: f32,
}

impl Default for GaloreConfig {
    fn default() -> Self {
        Self {
            rank: 4,
            every: 200,
            scale: 0.25,
        }
    }
}

/// The GaLore optimizer state of one DiaBlo tensor (`nb` blocks of `bs_out × bs_in`).
#[derive(Clone, Debug)]
pub(crate) struct GaloreState {
    nb: usize,
    bs_out: usize,
    bs_in: usize,
    r: usize,
    /// Project on the left (P: bs_out × r) when bs_out ≤ bs_in, else on the right (Q: bs_in × r).
    left: bool,
    /// Per block, the projection, row-major (short side × r).
    pub proj: Vec<f32>,
    /// Per block, Adam's moments of the projected gradient (r × long side or long side × r).
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl GaloreState {
    /// A fresh state (projections are computed at the first step).
    pub(crate) fn new(nb: usize, bs_out: usize, bs_in: usize, rank: usize) -> Result<Self> {
        let short = bs_out.min(bs_in);
        if rank == 0 || rank >= short {
            return Err(Error::InvalidRequest(format!(
                "GaLore rank {rank} must be 1..{short} (below the smaller side of the \
                 {bs_out}x{bs_in} DiaBlo blocks; use a smaller rank or fewer blocks)"
            )));
        }
        let long = bs_out.max(bs_in);
        Ok(Self {
            nb,
            bs_out,
            bs_in,
            r: rank,
            left: bs_out <= bs_in,
            proj: vec![0.0; nb * short * rank],
            m: vec![0.0; nb * rank * long],
            v: vec![0.0; nb * rank * long],
        })
    }

    /// Floats of optimizer state held (projections and moments).
    pub(crate) fn n_floats(&self) -> usize {
        self.proj.len() + self.m.len() + self.v.len()
    }

    /// Refreshes every block's projection from gradient `grad` (graph layout: block-major,
    /// each block row-major `bs_out × bs_in`).
    pub(crate) fn refresh(&mut self, grad: &[f32]) {
        let (bo, bi, r) = (self.bs_out, self.bs_in, self.r);
        let short = bo.min(bi);
        for b in 0..self.nb {
            let g = DMatrix::from_row_slice(bo, bi, &grad[b * bo * bi..(b + 1) * bo * bi]);
            let svd = g.svd(self.left, !self.left);
            // Singular vectors of the largest singular values, in descending order.
            let mut order: Vec<usize> = (0..svd.singular_values.len()).collect();
            order.sort_by(|&x, &y| svd.singular_values[y].total_cmp(&svd.singular_values[x]));
            let p = &mut self.proj[b * short * r..(b + 1) * short * r];
            for (k, &c) in order.iter().take(r).enumerate() {
                for i in 0..short {
                    p[i * r + k] = if self.left {
                        svd.u.as_ref().expect("computed")[(i, c)]
                    } else {
                        svd.v_t.as_ref().expect("computed")[(c, i)]
                    };
                }
            }
        }
    }

    /// One AdamW step of `value` from `grad` (already scaled/clipped), Adam on the projected
    /// gradient. `bc1`, `bc2` are the bias corrections `1 - β^t`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn step(
        &mut self,
        value: &mut [f32],
        grad: &[f32],
        cfg: &GaloreConfig,
        lr: f32,
        (b1, b2): (f32, f32),
        (bc1, bc2): (f32, f32),
        eps: f32,
        weight_decay: f32,
    ) {
        let (bo, bi, r) = (self.bs_out, self.bs_in, self.r);
        let (short, long) = (bo.min(bi), bo.max(bi));
        for b in 0..self.nb {
            let g = DMatrix::from_row_slice(bo, bi, &grad[b * bo * bi..(b + 1) * bo * bi]);
            let p =
                DMatrix::from_row_slice(short, r, &self.proj[b * short * r..(b + 1) * short * r]);
            // Projected gradient as r × long (left: Pᵀ G; right: (G Q)ᵀ).
            let rg = if self.left {
                p.transpose() * &g
            } else {
                (&g * &p).transpose()
            };
            let m = &mut self.m[b * r * long..(b + 1) * r * long];
            let v = &mut self.v[b * r * long..(b + 1) * r * long];
            let mut n = DMatrix::<f32>::zeros(r, long);
            for k in 0..r {
                for j in 0..long {
                    let i = k * long + j;
                    let gi = rg[(k, j)];
                    m[i] = b1 * m[i] + (1.0 - b1) * gi;
                    v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                    n[(k, j)] = (m[i] / bc1) / ((v[i] / bc2).sqrt() + eps);
                }
            }
            // Back to bs_out × bs_in: left P N, right (Q N)ᵀ = N' Qᵀ.
            let delta = if self.left {
                &p * n
            } else {
                (&p * n).transpose()
            };
            let blk = &mut value[b * bo * bi..(b + 1) * bo * bi];
            for o in 0..bo {
                for j in 0..bi {
                    let x = &mut blk[o * bi + j];
                    *x -= lr * (cfg.scale * delta[(o, j)] + weight_decay * *x);
                }
            }
        }
    }
}

/// A GaLore state read back from an adapter file's `train.galore_{p,m,v}.<name>` tensors.
#[derive(Clone, Debug)]
pub(crate) struct SavedGalore {
    proj: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl SavedGalore {
    /// Reads the saved state of tensor `name` (None when the file has none).
    pub(crate) fn read(g: &Gguf, name: &str) -> Result<Option<Self>> {
        let get =
            |which: &str| super::state::f32_tensor(g, &format!("train.galore_{which}.{name}"));
        match (get("p")?, get("m")?, get("v")?) {
            (Some(proj), Some(m), Some(v)) => Ok(Some(Self { proj, m, v })),
            (None, None, None) => Ok(None),
            _ => Err(Error::InvalidAdapter(format!(
                "train.galore_{{p,m,v}}.{name}: the GaLore state is incomplete"
            ))),
        }
    }

    /// Moves the saved values into `st`, checking their sizes.
    pub(crate) fn restore_into(self, st: &mut GaloreState, name: &str) -> Result<()> {
        if self.proj.len() != st.proj.len()
            || self.m.len() != st.m.len()
            || self.v.len() != st.v.len()
        {
            return Err(Error::InvalidAdapter(format!(
                "the GaLore state of {name} does not match rank {} ({} projection values, \
                 expected {})",
                st.r,
                self.proj.len(),
                st.proj.len()
            )));
        }
        (st.proj, st.m, st.v) = (self.proj, self.m, self.v);
        Ok(())
    }
}

/// Writes `st` as `train.galore_{p,m,v}.<name>`.
pub(crate) fn write(w: &mut GgufWriter<'_>, name: &str, st: &GaloreState) -> Result<()> {
    for (which, v) in [("p", &st.proj), ("m", &st.m), ("v", &st.v)] {
        w.add_tensor_f32(format!("train.galore_{which}.{name}"), &[v.len() as u64], v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a gradient of rank ≤ r, the projection loses nothing: the projected Adam moments
    /// reproduce the gradient exactly, so P Pᵀ G = G.
    #[test]
    fn projection_keeps_a_low_rank_gradient() {
        for (bo, bi) in [(6, 10), (10, 6)] {
            let mut s = GaloreState::new(2, bo, bi, 2).unwrap();
            // Rank-2 blocks: sums of two outer products.
            let mut g = vec![0f32; 2 * bo * bi];
            for b in 0..2 {
                for o in 0..bo {
                    for j in 0..bi {
                        let (o, j, b) = (o as f32, j as f32, b as f32);
                        g[b as usize * bo * bi + o as usize * bi + j as usize] =
                            (o + 1.0) * (j - 3.0) + (b + 1.0) * (o % 2.0) * j * j * 0.1;
                    }
                }
            }
            s.refresh(&g);
            let (short, r) = (bo.min(bi), 2);
            for b in 0..2 {
                let p = DMatrix::from_row_slice(short, r, &s.proj[b * short * r..][..short * r]);
                let gm = DMatrix::from_row_slice(bo, bi, &g[b * bo * bi..][..bo * bi]);
                let back = if bo <= bi {
                    &p * (p.transpose() * &gm)
                } else {
                    (&gm * &p) * p.transpose()
                };
                assert!((back - &gm).abs().max() < 1e-3 * gm.abs().max());
            }
        }
    }

    #[test]
    fn rank_must_be_below_the_short_side() {
        assert!(GaloreState::new(1, 9, 9, 9).is_err());
        assert!(GaloreState::new(1, 9, 24, 0).is_err());
        assert!(GaloreState::new(1, 9, 24, 8).is_ok());
    }
}
