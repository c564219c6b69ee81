//! LoPA: an instance-dependent low-rank soft prompt.
//!
//! `e` = mean of the base model's token-embedding rows of the prompt; `U = reshape_{m×r}(fc2_u(
//! tanh(fc1_u(e))))`, `V = reshape_{d×r}(fc2_v(tanh(fc1_v(e))))`, `Z = Z_S ⊙ sigmoid(U Vᵀ)`
//! (m × d), times `s_user`. The m rows of Z are input embeddings placed before the prompt at
//! positions 0..m-1. The encoder is tiny (one prompt, a few MFLOP), so it runs on the host in
//! f32 with f64 accumulation.

use graft_formats::{Gguf, TensorInfo};

use super::lora::shape;
use crate::error::{Error, Result};
use crate::model::Model;

/// A linear layer `y = W x + b`, W stored out x in (ne=[in, out]).
#[derive(Clone, Debug)]
struct Linear {
    w: Vec<f32>,
    b: Vec<f32>,
    n_in: usize,
    n_out: usize,
}

impl Linear {
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        (0..self.n_out)
            .map(|o| {
                let row = &self.w[o * self.n_in..(o + 1) * self.n_in];
                let s: f64 = row.iter().zip(x).map(|(w, x)| *w as f64 * *x as f64).sum();
                (s + self.b[o] as f64) as f32
            })
            .collect()
    }
}

/// A loaded LoPA soft-prompt encoder.
#[derive(Clone, Debug)]
pub struct Lopa {
    m: usize,
    r: usize,
    d: usize,
    z_shared: Vec<f32>,
    u1: Linear,
    u2: Linear,
    v1: Linear,
    v2: Linear,
}

impl Lopa {
    pub(crate) fn load(model: &Model, g: &Gguf) -> Result<Self> {
        let m = g.get_u32("adapter.lopa.virtual_tokens")? as usize;
        let r = g.get_u32("adapter.lopa.rank")? as usize;
        let enc = g.get_str("adapter.lopa.encoder")?;
        if enc != "mean_embed" {
            return Err(Error::InvalidAdapter(format!(
                "adapter.lopa.encoder {enc:?} is not supported (mean_embed)"
            )));
        }
        let d = model.config().n_embd;
        let h = d;
        if m == 0 || m > 1024 || r == 0 || r > d {
            return Err(Error::InvalidAdapter(format!(
                "LoPA with {m} virtual tokens and rank {r}: need 1..=1024 tokens and 1..={d} rank"
            )));
        }
        if let Some(t) = super::model_tensors(g).find(|t| !TENSORS.contains(&t.name.as_str())) {
            return Err(Error::InvalidAdapter(format!(
                "unknown tensor {} in a LoPA adapter",
                t.name
            )));
        }
        let get = |name: &str, dims: &[u64]| -> Result<Vec<f32>> {
            let t = g
                .tensor(name)
                .ok_or_else(|| Error::InvalidAdapter(format!("LoPA tensor {name} is missing")))?;
            if t.dims != dims {
                return Err(shape(t, &format!("{dims:?}")));
            }
            f32_values(g, t)
        };
        let lin = |p: &str, n_in: usize, n_out: usize| -> Result<Linear> {
            Ok(Linear {
                w: get(&format!("{p}.weight"), &[n_in as u64, n_out as u64])?,
                b: get(&format!("{p}.bias"), &[n_out as u64])?,
                n_in,
                n_out,
            })
        };
        Ok(Self {
            m,
            r,
            d,
            z_shared: get("lopa.z_shared", &[d as u64, m as u64])?,
            u1: lin("lopa.u.fc1", h, h)?,
            u2: lin("lopa.u.fc2", h, m * r)?,
            v1: lin("lopa.v.fc1", h, h)?,
            v2: lin("lopa.v.fc2", h, d * r)?,
        })
    }

    /// Number of virtual tokens.
    pub fn virtual_tokens(&self) -> usize {
        self.m
    }

    /// The soft prompt `Z · s_user` (m rows of d) for encoder input `e` (d values).
    pub fn soft_prompt(&self, e: &[f32], s_user: f32) -> Vec<f32> {
        let f = self.forward(e);
        f.z.into_iter().map(|z| z * s_user).collect()
    }

    /// The encoder's forward pass with the intermediates the backward pass needs.
    pub(crate) fn forward(&self, e: &[f32]) -> LopaForward {
        let tanh = |v: Vec<f32>| v.into_iter().map(f32::tanh).collect::<Vec<_>>();
        let au = tanh(self.u1.forward(e));
        let u = self.u2.forward(&au);
        let av = tanh(self.v1.forward(e));
        let v = self.v2.forward(&av);
        let (m, r, d) = (self.m, self.r, self.d);
        let mut gate = vec![0f32; m * d];
        let mut z = vec![0f32; m * d];
        for i in 0..m {
            for j in 0..d {
                let s: f64 = (0..r)
                    .map(|k| u[i * r + k] as f64 * v[j * r + k] as f64)
                    .sum();
                let g = 1.0 / (1.0 + (-s).exp());
                gate[i * d + j] = g as f32;
                z[i * d + j] = (self.z_shared[i * d + j] as f64 * g) as f32;
            }
        }
        LopaForward {
            e: e.to_vec(),
            au,
            u,
            av,
            v,
            gate,
            z,
        }
    }

    /// Gradients of the loss with respect to the tensors in [`TENSORS`] order, given the
    /// forward pass `f` and `dz` = dL/dZ (m rows of d, before `s_user`, i.e. at scale 1).
    pub(crate) fn backward(&self, f: &LopaForward, dz: &[f32]) -> Vec<Vec<f32>> {
        let (m, r, d) = (self.m, self.r, self.d);
        // Z = Zs ⊙ σ(S), S = U Vᵀ.
        let mut d_zs = vec![0f32; m * d];
        let mut ds = vec![0f64; m * d];
        for i in 0..m * d {
            let g = f.gate[i] as f64;
            d_zs[i] = (dz[i] as f64 * g) as f32;
            ds[i] = dz[i] as f64 * self.z_shared[i] as f64 * g * (1.0 - g);
        }
        // dU = dS V (m x r), dV = dSᵀ U (d x r), row-major like U and V.
        let mut du = vec![0f32; m * r];
        let mut dv = vec![0f32; d * r];
        for i in 0..m {
            for k in 0..r {
                du[i * r + k] = (0..d)
                    .map(|j| ds[i * d + j] * f.v[j * r + k] as f64)
                    .sum::<f64>() as f32;
            }
        }
        for j in 0..d {
            for k in 0..r {
                dv[j * r + k] = (0..m)
                    .map(|i| ds[i * d + j] * f.u[i * r + k] as f64)
                    .sum::<f64>() as f32;
            }
        }
        let [g_u1w, g_u1b, g_u2w, g_u2b] = mlp_backward(&self.u1, &self.u2, &f.e, &f.au, &du);
        let [g_v1w, g_v1b, g_v2w, g_v2b] = mlp_backward(&self.v1, &self.v2, &f.e, &f.av, &dv);
        vec![d_zs, g_u1w, g_u1b, g_u2w, g_u2b, g_v1w, g_v1b, g_v2w, g_v2b]
    }
}

/// The encoder's intermediates for one input.
#[derive(Clone, Debug)]
pub(crate) struct LopaForward {
    e: Vec<f32>,
    au: Vec<f32>,
    u: Vec<f32>,
    av: Vec<f32>,
    v: Vec<f32>,
    gate: Vec<f32>,
    /// Z (m rows of d) at `s_user` = 1.
    pub z: Vec<f32>,
}

/// Backward through `fc2(tanh(fc1(e)))` given `a = tanh(fc1(e))` and the output gradient
/// `dy`: gradients of fc1 weight, fc1 bias, fc2 weight, fc2 bias (e is not trained).
fn mlp_backward(fc1: &Linear, fc2: &Linear, e: &[f32], a: &[f32], dy: &[f32]) -> [Vec<f32>; 4] {
    let outer = |dy: &[f32], x: &[f32]| -> Vec<f32> {
        dy.iter()
            .flat_map(|&g| x.iter().map(move |&xi| g * xi))
            .collect()
    };
    let g2w = outer(dy, a);
    let mut da = vec![0f64; fc2.n_in];
    for (o, &g) in dy.iter().enumerate() {
        let row = &fc2.w[o * fc2.n_in..(o + 1) * fc2.n_in];
        for (acc, w) in da.iter_mut().zip(row) {
            *acc += g as f64 * *w as f64;
        }
    }
    let dh: Vec<f32> = da
        .iter()
        .zip(a)
        .map(|(g, a)| (g * (1.0 - *a as f64 * *a as f64)) as f32)
        .collect();
    let g1w = outer(&dh, e);
    debug_assert_eq!(g1w.len(), fc1.w.len());
    [g1w, dh, g2w, dy.to_vec()]
}

/// LoPA's tensors, in the order [`Lopa::backward`] returns their gradients.
pub(crate) const TENSORS: [&str; 9] = [
    "lopa.z_shared",
    "lopa.u.fc1.weight",
    "lopa.u.fc1.bias",
    "lopa.u.fc2.weight",
    "lopa.u.fc2.bias",
    "lopa.v.fc1.weight",
    "lopa.v.fc1.bias",
    "lopa.v.fc2.weight",
    "lopa.v.fc2.bias",
];

fn f32_values(g: &Gguf, t: &TensorInfo) -> Result<Vec<f32>> {
    Ok(graft_ggml::dequantize(
        graft_ggml::Type(t.dtype.id()),
        g.tensor_data(t),
        t.n_elements() as usize,
    )?)
}

/// The encoder input: the mean of the token-embedding rows of `tokens`.
pub fn mean_embedding(model: &Model, tokens: &[u32]) -> Result<Vec<f32>> {
    let d = model.config().n_embd;
    let mut acc = vec![0f64; d];
    for &t in tokens {
        for (a, v) in acc.iter_mut().zip(model.embedding_row(t)?) {
            *a += v as f64;
        }
    }
    let n = tokens.len().max(1) as f64;
    Ok(acc.into_iter().map(|a| (a / n) as f32).collect())
}
