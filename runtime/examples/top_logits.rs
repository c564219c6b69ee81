//! Prints the top-5 logits of the last position for a model and a list of token ids:
//! `cargo run --example top_logits -- MODEL.gguf 504 2365 ...`. A debugging aid for
//! comparing against llama.cpp.
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model = Arc::new(graft::Model::load(&args[1])?);
    let tokens: Vec<u32> = args[2..]
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let mut s = graft::Session::new(
        model,
        graft::SessionConfig {
            n_ctx: 512,
            n_threads: 1,
            ..Default::default()
        },
    )?;
    let logits = s.decode(&tokens, graft::LogitsFor::Last)?;
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    for &i in &idx[..5] {
        println!("{i} {:.6}", logits[i]);
    }
    Ok(())
}
