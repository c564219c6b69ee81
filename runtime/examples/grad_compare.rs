//! Compares adapter gradients of the reference path (ggml's own kernels forward and backward,
//! no working copies) with the GEMM backward, with the Q4_1 forward split, and with the GEMM
//! forward (f32 products over dequantized weights), on a model:
//! `cargo run --release --example grad_compare -- MODEL.gguf [F32.gguf]` (with
//! `GRAFT_GRAD_TEXT=F.txt`: on that text's first 128 tokens); with the F32 model
//! of the same weights it also prints each path's gradient cosine with the F32 model's
//! gradient. A debugging aid.
use std::sync::Arc;

use graft::train::{Example, TrainConfig, Trainer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: grad_compare MODEL.gguf")?;
    let f32_path = std::env::args().nth(2);
    let m = Arc::new(graft::Model::load(&path)?);
    // $GRAFT_GRAD_TEXT: the first 128 tokens of that text file instead of 32 arbitrary ones.
    let tokens: Vec<u32> = match std::env::var_os("GRAFT_GRAD_TEXT") {
        Some(f) => {
            let mut t = m
                .tokenizer()
                .encode(&std::fs::read_to_string(f)?, false, false);
            t.truncate(128);
            t
        }
        None => (0..32)
            .map(|i| ((i * 7919 + 13) % m.config().n_vocab) as u32)
            .collect(),
    };
    let ex = Example {
        mask: vec![true; tokens.len()],
        tokens,
    };
    type Grads = (f32, Vec<(String, Vec<f32>)>);
    // A path: (GEMM backward, Q4_1 split, GEMM forward).
    type Path = (bool, bool, bool);
    const GGML: Path = (false, false, false);
    // `nudge`: the parameters' offsets scaled by 1 + nudge, which shows how much the gradient
    // moves under a change far below anything that matters (activations are rounded to 8-bit
    // blocks before each quantized matmul, so the loss is piecewise constant at that scale).
    let grads_of = |m: &Arc<graft::Model>, path: Path, nudge: f32| -> Result<Grads, graft::Error> {
        let mut t = Trainer::new(
            m.clone(),
            TrainConfig {
                gemm_backward: path.0,
                split_q4_1: path.1,
                gemm_forward: path.2,
                threads: 2,
                ..Default::default()
            },
        )?;
        for name in t.param_names() {
            let v: Vec<f32> = t
                .param(&name)
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, x)| x + ((i % 7) as f32 - 3.0) * 0.003 * (1.0 + nudge))
                .collect();
            t.set_param(&name, &v)?;
        }
        t.zero_grads();
        let (loss, _) = t.forward_backward(&ex, true)?;
        let g = t
            .param_names()
            .into_iter()
            .map(|n| {
                let g = t.accumulated_grad(&n).unwrap().to_vec();
                (n, g)
            })
            .collect();
        Ok((loss, g))
    };
    let grads = |path: Path, nudge: f32| grads_of(&m, path, nudge);
    let flat = |g: &[(String, Vec<f32>)]| -> Vec<f64> {
        g.iter()
            .flat_map(|(_, v)| v.iter().map(|&x| x as f64))
            .collect()
    };
    let reference = match &f32_path {
        Some(p) => {
            let (loss, g) = grads_of(&Arc::new(graft::Model::load(p)?), GGML, 0.0)?;
            println!("F32 model, ggml's path: loss {loss:.7}");
            Some(flat(&g))
        }
        None => None,
    };
    let cosine = |g: &[(String, Vec<f32>)]| -> String {
        let Some(r) = &reference else {
            return String::new();
        };
        let g = flat(g);
        let dot: f64 = g.iter().zip(r).map(|(a, b)| a * b).sum();
        let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        format!(
            ", gradient cosine with the F32 model's {:.5}",
            dot / (n(&g) * n(r))
        )
    };
    let exact = grads(GGML, 0.0)?;
    println!(
        "ggml's out_prod path: loss {:.7}{}",
        exact.0,
        cosine(&exact.1)
    );
    for (label, path, nudge) in [
        ("GEMM backward", (true, false, false), 0.0),
        ("GEMM backward + Q4_1 split", (true, true, false), 0.0),
        ("GEMM backward + GEMM forward", (true, false, true), 0.0),
        ("ggml's path, parameter offsets x (1 + 1e-6)", GGML, 1e-6),
    ] {
        let (loss, g) = grads(path, nudge)?;
        println!("{label}: loss {loss:.7}{}", cosine(&g));
        for ((n, x), (_, y)) in g.iter().zip(&exact.1).step_by(37) {
            let d: f64 = x
                .iter()
                .zip(y)
                .map(|(p, q)| ((p - q) as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            let nn: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum::<f64>().sqrt();
            println!("  {n}: |g| {nn:.3e} rel diff {:.3e}", d / nn.max(1e-30));
        }
    }
    Ok(())
}
