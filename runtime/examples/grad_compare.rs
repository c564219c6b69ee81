//! Compares adapter gradients with and without the pre-transposed backward on a model:
//! `cargo run --release --example grad_compare -- MODEL.gguf`. A debugging aid.
use std::sync::Arc;

use graft::train::{Example, TrainConfig, Trainer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: grad_compare MODEL.gguf")?;
    let m = Arc::new(graft::Model::load(&path)?);
    let tokens: Vec<u32> = (0..32)
        .map(|i| ((i * 7919 + 13) % m.config().n_vocab) as u32)
        .collect();
    let ex = Example {
        mask: vec![true; tokens.len()],
        tokens,
    };
    let grads = |tb: bool| -> Result<Vec<(String, Vec<f32>)>, graft::Error> {
        let mut t = Trainer::new(
            m.clone(),
            TrainConfig {
                transposed_backward: tb,
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
                .map(|(i, x)| x + ((i % 7) as f32 - 3.0) * 0.003)
                .collect();
            t.set_param(&name, &v)?;
        }
        t.zero_grads();
        t.forward_backward(&ex, true)?;
        Ok(t.param_names()
            .into_iter()
            .map(|n| {
                let g = t.accumulated_grad(&n).unwrap().to_vec();
                (n, g)
            })
            .collect())
    };
    let (a, b) = (grads(true)?, grads(false)?);
    for ((n, x), (_, y)) in a.iter().zip(&b).step_by(37) {
        let d: f64 = x
            .iter()
            .zip(y)
            .map(|(p, q)| ((p - q) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let nn: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum::<f64>().sqrt();
        println!("{n}: |g| {nn:.3e} rel diff {:.3e}", d / nn.max(1e-30));
    }
    Ok(())
}
