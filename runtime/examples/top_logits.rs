//! Prints the top-5 logits of the last position for a model and a list of token ids, or with
//! `--all` every logit on one line (f32 K/V cache), optionally with an adapter:
//! `cargo run --release --example top_logits -- MODEL.gguf [--adapter A] [--all] 504 2365 ...`.
//! A debugging aid for comparing against llama.cpp, and what `scripts/check_export_peft.py`
//! compares with PEFT's logits.
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model_path = args
        .next()
        .ok_or("usage: top_logits MODEL.gguf [--adapter A] [--all] TOKEN...")?;
    let model = Arc::new(graft::Model::load(&model_path)?);
    let (mut adapter, mut all, mut tokens) = (None, false, Vec::<u32>::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--adapter" => adapter = Some(args.next().ok_or("--adapter needs a path")?),
            "--all" => all = true,
            t => tokens.push(t.parse()?),
        }
    }
    let mut s = graft::Session::new(
        model.clone(),
        graft::SessionConfig {
            n_ctx: 512,
            n_threads: 1,
            kv_f32: all,
            ..Default::default()
        },
    )?;
    if let Some(p) = adapter {
        let a = graft::Adapter::load(&model, p)?;
        s.set_adapters(graft::ActiveAdapters::none().with(a, 1.0))?;
    }
    let logits = s.decode(&tokens, graft::LogitsFor::Last)?;
    if all {
        let line: Vec<String> = logits.iter().map(|x| format!("{x:e}")).collect();
        println!("{}", line.join(" "));
        return Ok(());
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    for &i in &idx[..5] {
        println!("{i} {:.6}", logits[i]);
    }
    Ok(())
}
