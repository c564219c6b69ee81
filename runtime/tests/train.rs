//! Training: autodiff gradients of the adapter parameters against finite differences, loss
//! going down, and resume reproducing an uninterrupted run.

mod common;

use std::sync::Arc;

use graft::adapter::TargetKind;
use graft::train::{Example, GaloreConfig, Method, TrainConfig, Trainer};
use graft::Model;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn example(n: usize, seed: u64, n_vocab: usize) -> Example {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tokens: Vec<u32> = (0..n)
        .map(|_| rng.random_range(0..n_vocab as u32))
        .collect();
    let mut mask = vec![true; n];
    mask[..3].fill(false); // a "prompt" that is not scored
    Example { tokens, mask }
}

fn cfg(rank: usize) -> TrainConfig {
    TrainConfig {
        rank,
        alpha: 2.0 * rank as f32,
        ctx: 32,
        threads: 1,
        lr: 1e-2,
        warmup: 0,
        ..TrainConfig::default()
    }
}

/// Moves every trainable tensor by a seeded amount (off LoRA's B = 0, where A's gradient
/// vanishes) and zeroes the gradient accumulators.
fn perturb(t: &mut Trainer) {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for name in t.param_names() {
        let v: Vec<f32> = t
            .param(&name)
            .unwrap()
            .iter()
            .map(|x| x + rng.random_range(-0.05..0.05))
            .collect();
        t.set_param(&name, &v).unwrap();
    }
    t.zero_grads();
}

/// Every accumulated gradient, in parameter order, as one vector.
fn all_grads(t: &Trainer) -> Vec<f32> {
    t.param_names()
        .iter()
        .flat_map(|n| t.accumulated_grad(n).unwrap().to_vec())
        .collect()
}

/// `(‖a − b‖ / ‖b‖, ‖b‖)` in f64.
fn relative_l2(a: &[f32], b: &[f32]) -> (f64, f64) {
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    (diff / norm, norm)
}

fn cfg_for(method: Method) -> TrainConfig {
    // blocks 3: DiaBlo edge blocks on the 128-, 64- and 352-wide layers.
    TrainConfig {
        method,
        blocks: 3,
        ..cfg(2)
    }
}

/// Central finite differences of the loss against the autodiff gradient, on the largest
/// gradient coordinates of a few tensors.
fn grad_check(model_file: &str, method: Method) {
    grad_check_with(model_file, cfg_for(method));
}

fn grad_check_with(model_file: &str, cfg: TrainConfig) {
    let Some(p) = common::model(model_file) else {
        return;
    };
    let method = cfg.method;
    let m = Arc::new(Model::load(p).unwrap());
    let nv = m.config().n_vocab;
    let mut t = Trainer::new(m, cfg).unwrap();
    // Move B off zero (at B = 0 the gradient of A vanishes).
    perturb(&mut t);
    let ex = example(12, 1, nv);
    let (_, scored) = t.forward_backward(&ex, true).unwrap();
    let names = t.param_names();
    let picks = [
        &names[0],
        &names[1],
        &names[names.len() / 2],
        &names[names.len() - 1],
    ];
    for name in picks {
        let grad: Vec<f32> = t
            .accumulated_grad(name)
            .unwrap()
            .iter()
            .map(|g| g / scored as f32)
            .collect();
        let mut idx: Vec<usize> = (0..grad.len()).collect();
        idx.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
        let base = t.param(name).unwrap().to_vec();
        for &i in &idx[..3] {
            let eps: f32 = std::env::var("GRAFT_FD_EPS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(if method == Method::Lopa { 2e-2 } else { 5e-3 });
            let mut v = base.clone();
            v[i] = base[i] + eps;
            t.set_param(name, &v).unwrap();
            let (lp, _) = t.forward_backward(&ex, false).unwrap();
            v[i] = base[i] - eps;
            t.set_param(name, &v).unwrap();
            let (lm, _) = t.forward_backward(&ex, false).unwrap();
            t.set_param(name, &base).unwrap();
            let fd = (lp as f64 - lm as f64) / (2.0 * eps as f64);
            let rel = (fd - grad[i] as f64).abs() / fd.abs().max(grad[i].abs() as f64).max(1e-6);
            eprintln!(
                "{model_file} {name}[{i}]: autodiff {:.6e} finite diff {fd:.6e} rel {rel:.2e}",
                grad[i]
            );
            assert!(
                rel < 1e-2,
                "{name}[{i}]: autodiff {} vs finite difference {fd}",
                grad[i]
            );
        }
    }
}

#[test]
fn lora_gradients_match_finite_differences_f32() {
    grad_check("qwen2-tiny.gguf", Method::Lora);
}

#[test]
fn diablo_gradients_match_finite_differences_f32() {
    grad_check("qwen2-tiny.gguf", Method::Diablo);
}

/// Blocks that tile every layer (4 on 128, 64 and 352): the path where the projections that
/// read one input share its block-major copy and sum their gradients there.
#[test]
fn diablo_tiled_gradients_match_finite_differences_f32() {
    grad_check_with(
        "qwen2-tiny.gguf",
        TrainConfig {
            blocks: 4,
            ..cfg_for(Method::Diablo)
        },
    );
}

#[test]
fn wegeft_gradients_match_finite_differences_f32() {
    grad_check("qwen2-tiny.gguf", Method::Wegeft);
}

/// LoPA: ggml's dL/d(soft prompt) backpropagated through the host encoder. The loss is a
/// small change of f32 through the encoder's gates, so a wider step (2e-2) keeps the finite
/// difference above f32 rounding (at 5e-3 one coordinate is off by 9e-3, at 2e-2 by 8e-4).
#[test]
fn lopa_gradients_match_finite_differences_f32() {
    grad_check("qwen2-tiny.gguf", Method::Lopa);
}

/// Through quantized weights the loss is piecewise constant in the finest directions
/// (activations are quantized to Q8 before each matmul), so finite differences do not apply;
/// the backward pass through Q4_1 / Q8_0 (ggml `out_prod` on quantized weights) must give the
/// gradient of the F32 model up to the quantization of the base.
#[test]
fn lora_gradients_through_quantized_weights_follow_the_f32_gradient() {
    let grads = |file: &str| -> Option<Vec<f32>> {
        let m = Arc::new(Model::load(common::model(file)?).unwrap());
        let nv = m.config().n_vocab;
        let mut t = Trainer::new(m, cfg_for(Method::Lora)).unwrap();
        perturb(&mut t);
        t.forward_backward(&example(12, 1, nv), true).unwrap();
        Some(all_grads(&t))
    };
    let Some(f) = grads("qwen2-tiny.gguf") else {
        return;
    };
    for q in ["qwen2-tiny.Q8_0.gguf", "qwen2-tiny.Q4_1.gguf"] {
        let Some(g) = grads(q) else { return };
        assert!(g.iter().all(|x| x.is_finite()));
        let dot: f64 = f.iter().zip(&g).map(|(a, b)| *a as f64 * *b as f64).sum();
        let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let cos = dot / (n(&f) * n(&g));
        eprintln!("{q}: cosine with the F32 gradient {cos:.4}");
        assert!(cos > 0.9, "{q}: gradient cosine {cos}");
    }
}

#[test]
fn loss_goes_down_and_resume_reproduces_the_run() {
    for method in [Method::Lora, Method::Diablo, Method::Wegeft, Method::Lopa] {
        train_and_resume(cfg_for(method));
    }
}

/// GaLore (projections refreshed at steps 1, 4, 7: the resumed run uses the saved one) and
/// adapter-input dropout (masks drawn per step) resume exactly too.
#[test]
fn galore_and_dropout_runs_resume_exactly() {
    train_and_resume(TrainConfig {
        galore: Some(GaloreConfig {
            rank: 4,
            every: 3,
            scale: 1.0,
        }),
        ..cfg_for(Method::Diablo)
    });
    train_and_resume(TrainConfig {
        dropout: 0.1,
        ..cfg_for(Method::Lora)
    });
}

fn train_and_resume(c: TrainConfig) {
    let method = c.method;
    let Some(p) = common::model("qwen2-tiny.gguf") else {
        return;
    };
    let m = Arc::new(Model::load(p).unwrap());
    let nv = m.config().n_vocab;
    let data: Vec<Example> = (0..4).map(|i| example(24, 100 + i, nv)).collect();
    let c = TrainConfig {
        targets: vec![TargetKind::AttnQ, TargetKind::AttnV, TargetKind::FfnDown],
        total_steps: 8,
        ..c
    };
    let mut full = Trainer::new(m.clone(), c.clone()).unwrap();
    let mut losses = Vec::new();
    for s in 0..8 {
        losses.push(full.step(&data[(s % 2) * 2..(s % 2) * 2 + 2]).unwrap().loss);
    }
    // Steps alternate between two batches: compare the last pair with the first.
    assert!(
        losses[6] + losses[7] < 0.95 * (losses[0] + losses[1]),
        "{method:?}: loss did not go down: {losses:?}"
    );
    // 4 steps, save, resume, 4 more = 8 in one run.
    let mut a = Trainer::new(m.clone(), c.clone()).unwrap();
    for s in 0..4 {
        a.step(&data[(s % 2) * 2..(s % 2) * 2 + 2]).unwrap();
    }
    let path = std::env::temp_dir().join(format!("graft-train-{}.gguf", std::process::id()));
    a.save(&path).unwrap();
    drop(a);
    let mut b = Trainer::resume(m.clone(), c, &path).unwrap();
    assert_eq!(b.state().step, 4);
    let mut resumed = Vec::new();
    for s in 4..8 {
        resumed.push(b.step(&data[(s % 2) * 2..(s % 2) * 2 + 2]).unwrap().loss);
    }
    for (x, y) in resumed.iter().zip(&losses[4..]) {
        assert!(
            (x - y).abs() < 1e-5 * y.abs().max(1.0),
            "resumed {resumed:?} vs {:?}",
            &losses[4..]
        );
    }
    // The saved file is a normal LoRA adapter for inference (train.* ignored).
    graft::Adapter::load(&m, &path).unwrap();
    let _ = std::fs::remove_file(&path);
}

fn graft_train(args: &[&str]) -> std::process::Output {
    common::graft_cmd()
        .arg("train")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_trains_resumes_and_survives_kill_9() {
    let Some(model) = common::model("qwen2-tiny.gguf") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("graft-train-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data.jsonl");
    let lines: Vec<String> = (0..6)
        .map(|i| {
            format!(
                "{{\"prompt\": \"question {i}\", \"completion\": \" answer number {i} is here\"}}"
            )
        })
        .chain(["not json".to_string(), "{\"foo\": 1}".to_string()])
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out = dir.join("a.gguf");
    let m = model.to_str().unwrap();
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let common_args = [
        "--model",
        m,
        "--data",
        d,
        "--out",
        o,
        "--ctx",
        "16",
        "--rank",
        "2",
        "--threads",
        "1",
        "--json",
    ];
    let r = graft_train(&[&common_args[..], &["--steps", "3"]].concat());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(
        err.contains(":7: skipped: not JSON") && err.contains(":8: skipped"),
        "bad lines are reported: {err}"
    );
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&r.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["steps"], 3);
    // Strict mode fails on the bad line, naming it.
    let r = graft_train(&[&common_args[..], &["--steps", "1", "--strict"]].concat());
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("data.jsonl:7"));
    // Resume to step 5, now with gradient checkpointing (the summary says so and counts the
    // layer inputs it kept).
    let r = graft_train(
        &[
            &common_args[..],
            &["--steps", "5", "--resume", o, "--grad-checkpointing"],
        ]
        .concat(),
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&r.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["grad_checkpointing"], true);
    assert!(last["memory_mb"]["checkpoints"].as_f64().unwrap() > 0.0);
    let g = graft_formats::Gguf::open(&out).unwrap();
    assert_eq!(g.get_u64("train.step").unwrap(), 5);
    // kill -9 at arbitrary moments of a run that checkpoints every step: the file on disk is
    // always a complete, loadable adapter.
    let mm = Arc::new(Model::load(&model).unwrap());
    for delay_ms in [30u64, 80, 150] {
        let mut child = common::graft_cmd()
            .arg("train")
            .args(common_args)
            .args(["--steps", "200", "--save-every", "1", "--resume", o])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        graft::Adapter::load(&mm, &out).expect("the checkpoint survives kill -9");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The GEMM backward pass (input gradients over dequantized weight panels, `out_prod`s as
/// GEMMs) with the Q4_1 forward split gives the gradient of ggml's own `out_prod` path up to
/// rounding (both with ggml's forward products).
#[test]
fn gemm_backward_matches_out_prod_backward() {
    let Some(p) = common::model("qwen2-tiny.Q4_1.gguf") else {
        return;
    };
    let m = Arc::new(Model::load(p).unwrap());
    let nv = m.config().n_vocab;
    let grads = |fast: bool| -> Vec<f32> {
        let mut t = Trainer::new(
            m.clone(),
            TrainConfig {
                gemm_backward: fast,
                split_q4_1: fast,
                gemm_forward: false,
                ..cfg_for(Method::Lora)
            },
        )
        .unwrap();
        perturb(&mut t);
        t.forward_backward(&example(12, 1, nv), true).unwrap();
        all_grads(&t)
    };
    let (rel, _) = relative_l2(&grads(true), &grads(false));
    eprintln!("relative L2 difference {rel:.2e}");
    assert!(rel < 5e-3, "relative L2 difference {rel}");
}

/// The forward products of Q4_1 weights through their split copies (Q4_0 part on a GEMM
/// kernel plus per-block offsets) give ggml's Q4_1 loss and gradients up to rounding.
#[test]
fn q4_1_split_keeps_the_loss_and_gradients() {
    let Some(p) = common::model("qwen2-tiny.Q4_1.gguf") else {
        return;
    };
    let m = Arc::new(Model::load(p).unwrap());
    let nv = m.config().n_vocab;
    let run = |split_q4_1: bool| -> (f32, Vec<f32>, usize) {
        let mut t = Trainer::new(
            m.clone(),
            TrainConfig {
                split_q4_1,
                gemm_forward: false,
                ..cfg_for(Method::Lora)
            },
        )
        .unwrap();
        perturb(&mut t);
        let (loss, _) = t.forward_backward(&example(40, 3, nv), true).unwrap();
        (loss, all_grads(&t), t.split_bytes())
    };
    let (l1, g1, b1) = run(true);
    let (l0, g0, b0) = run(false);
    // the split exists: a Q4_0 copy (18 bytes per 32 weights) and two f32 offsets per block
    assert!(b1 > 0 && b0 == 0, "split copies: {b1} vs {b0} bytes");
    assert!(((l1 - l0) / l0).abs() < 1e-5, "loss {l1} vs {l0}");
    let (rel, _) = relative_l2(&g1, &g0);
    eprintln!("loss {l1} vs {l0}, gradient relative L2 difference {rel:.2e}");
    assert!(rel < 1e-3, "relative L2 difference {rel}");
}

/// The GEMM forward (every `mul_mat` as an f32 GEMM over the weights' dequantized values)
/// against ggml's forward kernels. With F32 weights only the order of the sums differs: same
/// loss and gradients up to rounding. With quantized weights ggml also rounds the activations
/// to 8-bit blocks before each product and the GEMM does not, so the loss moves by that
/// rounding (well under 1 %) and both gradients follow the F32 model's, the GEMM forward's
/// at least as closely as ggml's (cosines printed). And where the F32 model holds exactly the
/// quantized model's dequantized weights, the GEMM forward over the quantized weights is the
/// F32 model's computation.
#[test]
fn gemm_forward_keeps_the_loss_and_gradients() {
    let run = |file: &str, gemm_forward: bool| -> Option<(f32, Vec<f32>)> {
        let m = Arc::new(Model::load(common::model(file)?).unwrap());
        let nv = m.config().n_vocab;
        let mut t = Trainer::new(
            m,
            TrainConfig {
                gemm_forward,
                ..cfg_for(Method::Lora)
            },
        )
        .unwrap();
        perturb(&mut t);
        let (loss, _) = t.forward_backward(&example(40, 3, nv), true).unwrap();
        Some((loss, all_grads(&t)))
    };
    let Some((l0, g0)) = run("qwen2-tiny.gguf", false) else {
        return;
    };
    let (l1, g1) = run("qwen2-tiny.gguf", true).unwrap();
    let (rel, _) = relative_l2(&g1, &g0);
    eprintln!("F32: loss {l1} vs {l0}, gradient relative L2 difference {rel:.2e}");
    assert!(((l1 - l0) / l0).abs() < 1e-5, "F32 loss {l1} vs {l0}");
    assert!(rel < 1e-4, "F32 relative L2 difference {rel}");
    let cos = |a: &[f32], b: &[f32]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        dot / (n(a) * n(b))
    };
    for q in ["qwen2-tiny.Q8_0.gguf", "qwen2-tiny.Q4_1.gguf"] {
        let Some((lq, gq)) = run(q, false) else {
            return;
        };
        let (lg, gg) = run(q, true).unwrap();
        let (cq, cg) = (cos(&gq, &g0), cos(&gg, &g0));
        eprintln!(
            "{q}: loss {lg} (GEMM forward) vs {lq} (ggml); gradient cosine with the F32 \
             model's {cg:.5} vs {cq:.5}"
        );
        assert!(((lg - lq) / lq).abs() < 1e-2, "{q}: loss {lg} vs {lq}");
        assert!(cg > 0.9 && cg > cq - 0.01, "{q}: cosines {cg} vs {cq}");
    }
    // SmolLM2's F32 file holds its Q4_1 file's dequantized values (scripts/make_variants.py),
    // so the GEMM forward over the Q4_1 weights computes the F32 model's loss and gradients.
    let Some((lf, gf)) = run("SmolLM2-135M-Instruct.F32.gguf", false) else {
        return;
    };
    let (lq, gq) = run("SmolLM2-135M-Instruct.Q4_1.gguf", true).unwrap();
    let (rel, _) = relative_l2(&gq, &gf);
    eprintln!("SmolLM2 Q4_1 GEMM forward: loss {lq} vs F32 {lf}, relative L2 {rel:.2e}");
    assert!(((lq - lf) / lf).abs() < 1e-5, "SmolLM2 loss {lq} vs {lf}");
    assert!(rel < 1e-3, "SmolLM2 relative L2 difference {rel}");
}

/// Adapter-input dropout, checked exactly: a zero-initialised DiaBlo adapter leaves the
/// forward pass unchanged whatever the mask, and with one scored row (position 0's logits)
/// only position 0's input reaches the gradient, so each block column's gradient must be
/// either 0 (input dropped) or exactly 1/(1-p) = 2 times the gradient without dropout.
#[test]
fn dropout_masks_the_adapter_input() {
    let Some(p) = common::model("qwen2-tiny.gguf") else {
        return;
    };
    let m = Arc::new(Model::load(p).unwrap());
    let ex = Example {
        tokens: vec![17, 42],
        mask: vec![false, true],
    };
    let grads = |dropout: f32| {
        let mut t = Trainer::new(
            m.clone(),
            TrainConfig {
                dropout,
                ..cfg_for(Method::Diablo)
            },
        )
        .unwrap();
        t.forward_backward(&ex, true).unwrap();
        t.param_names()
            .into_iter()
            .map(|n| (n.clone(), t.accumulated_grad(&n).unwrap().to_vec()))
            .collect::<Vec<_>>()
    };
    let plain = grads(0.0);
    let dropped = grads(0.5);
    let (mut zero, mut kept) = (0usize, 0usize);
    for ((name, g0), (_, g1)) in plain.iter().zip(&dropped) {
        for (a, b) in g0.iter().zip(g1) {
            if *a == 0.0 {
                assert_eq!(*b, 0.0, "{name}");
            } else if *b == 0.0 {
                zero += 1;
            } else {
                assert_eq!(*b, 2.0 * a, "{name}: kept inputs are scaled by 1/(1-p)");
                kept += 1;
            }
        }
    }
    let frac = zero as f64 / (zero + kept) as f64;
    eprintln!(
        "dropout 0.5: {zero} of {} gradient entries dropped ({frac:.3})",
        zero + kept
    );
    assert!((0.4..0.6).contains(&frac), "dropped fraction {frac}");
}

/// The training graph computes what inference computes: the trainer's loss on an example
/// equals the mean NLL of its scored tokens from a `Session` with the adapter (the prompt
/// decoded first, so LoPA makes its soft prompt from the same tokens), for every method.
#[test]
fn training_loss_equals_the_inference_loss() {
    let Some(p) = common::model("qwen2-tiny.gguf") else {
        return;
    };
    let m = Arc::new(Model::load(p).unwrap());
    let nv = m.config().n_vocab;
    let ex = example(20, 3, nv); // tokens 0..3 are the prompt
    for method in [Method::Lora, Method::Diablo, Method::Wegeft, Method::Lopa] {
        let mut t = Trainer::new(m.clone(), cfg_for(method)).unwrap();
        perturb(&mut t);
        let (loss, scored) = t.forward_backward(&ex, false).unwrap();
        assert_eq!(scored, 17);
        let mut s = graft::Session::new(
            m.clone(),
            graft::SessionConfig {
                n_ctx: 64,
                n_threads: 1,
                kv_f32: true,
                ..Default::default()
            },
        )
        .unwrap();
        s.set_adapters(graft::ActiveAdapters::none().with(t.adapter().clone(), 1.0))
            .unwrap();
        let mut logits = s.decode(&ex.tokens[..3], graft::LogitsFor::Last).unwrap();
        logits.extend(s.decode(&ex.tokens[3..19], graft::LogitsFor::All).unwrap());
        let nll: f64 = (3..20)
            .map(|t| {
                let row = &logits[(t - 3) * nv..(t - 2) * nv];
                -graft::perplexity::log_softmax_at(row, ex.tokens[t] as usize)
            })
            .sum::<f64>()
            / 17.0;
        eprintln!("{method:?}: trainer loss {loss:.6}, inference {nll:.6}");
        assert!(
            (loss as f64 - nll).abs() < 1e-4 * nll,
            "{method:?}: trainer {loss} vs inference {nll}"
        );
    }
}

/// Gradient checkpointing (one layer's graph at a time, recomputed in the backward pass; the
/// head in chunks of 128 rows) gives the whole graph's loss and gradients up to rounding, for
/// every method, with dropout, and through quantized weights; and its compute buffer is
/// smaller. 300 tokens: the head runs in three chunks.
#[test]
fn checkpointing_gives_the_whole_graphs_gradients() {
    for (file, method, dropout) in [
        ("qwen2-tiny.gguf", Method::Lora, 0.0),
        ("qwen2-tiny.gguf", Method::Diablo, 0.3),
        ("qwen2-tiny.gguf", Method::Wegeft, 0.0),
        ("qwen2-tiny.gguf", Method::Lopa, 0.0),
        ("qwen2-tiny.Q4_1.gguf", Method::Lora, 0.0),
    ] {
        let Some(p) = common::model(file) else {
            return;
        };
        let m = Arc::new(Model::load(p).unwrap());
        let ex = example(300, 5, m.config().n_vocab);
        let run = |checkpointing: bool| {
            let mut t = Trainer::new(
                m.clone(),
                TrainConfig {
                    checkpointing,
                    dropout,
                    ..cfg_for(method)
                },
            )
            .unwrap();
            perturb(&mut t);
            let (loss, scored) = t.forward_backward(&ex, true).unwrap();
            (
                loss,
                scored,
                all_grads(&t),
                t.compute_bytes(),
                t.checkpoint_bytes(),
            )
        };
        let (l0, s0, g0, mem0, _) = run(false);
        let (l1, s1, g1, mem1, kept) = run(true);
        assert_eq!(s0, s1);
        let (rel, norm) = relative_l2(&g1, &g0);
        eprintln!(
            "{file} {method:?} dropout {dropout}: loss {l0} vs {l1}, gradient relative L2 {rel:.2e}, \
             compute buffer {mem0} -> {mem1} bytes (+{kept} bytes of layer inputs)"
        );
        assert!(norm > 0.0);
        assert!((l0 - l1).abs() <= 1e-5 * l0.abs(), "loss {l0} vs {l1}");
        assert!(rel < 1e-5, "relative L2 difference {rel}");
        assert!(mem1 < mem0, "compute buffer {mem1} >= {mem0}");
    }
}
