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
        let known = [
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
        if let Some(t) = g
            .tensors()
            .iter()
            .find(|t| !known.contains(&t.name.as_str()))
        {
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
        let tanh = |v: Vec<f32>| v.into_iter().map(f32::tanh).collect::<Vec<_>>();
        let u = self.u2.forward(&tanh(self.u1.forward(e)));
        let v = self.v2.forward(&tanh(self.v1.forward(e)));
        let (m, r, d) = (self.m, self.r, self.d);
        let mut z = vec![0f32; m * d];
        for i in 0..m {
            for j in 0..d {
                let s: f64 = (0..r)
                    .map(|k| u[i * r + k] as f64 * v[j * r + k] as f64)
                    .sum();
                let gate = 1.0 / (1.0 + (-s).exp());
                z[i * d + j] = (self.z_shared[i * d + j] as f64 * gate) as f32 * s_user;
            }
        }
        z
    }
}

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
