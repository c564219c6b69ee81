//! The model on a device against the CPU backend: graft's wgpu backend (on CI, Mesa's lavapipe)
//! and ggml's own device backends loaded at run time (see `common::device_backends`) must give
//! the CPU's greedy decisions and perplexity, with every adapter kind (what a switch of adapters
//! uploads is counted in device_uploads.rs). The ops themselves are checked one by one
//! in graft-ggml's conformance suite; this is the whole forward graph, split by ggml's
//! scheduler between the device and the CPU.
//!
//! The two backends agree op by op to the order of float sums (the conformance suite), but the
//! CPU accumulates some sums in double, uses its own exp, and rounds activations to 8-bit blocks
//! before quantized matrix products: an ulp of difference can flip one of those roundings, and
//! over 30 layers the logits differ by about 0.1-0.3. Greedy decoding then parts where the CPU's
//! top two candidates are that close. So the check is teacher-forced: along the CPU's greedy
//! continuation, every clear decision (top-two margin over `CLEAR`) must be the same on the
//! device, and the logits must stay within `MAX_DIFF`.
//!
//! Without a device the tests say so and pass; `GRAFT_REQUIRE_DEVICE=wgpu` (set by
//! scripts/test.sh, which installs lavapipe) makes a missing one a failure.

mod common;

use std::sync::Arc;

use graft::{
    ActiveAdapters, BackendChoice, Engine, GenerateRequest, LogitsFor, Model, SamplerConfig,
    Session,
};

/// The CPU's greedy continuation of `prompt` (up to 24 tokens), as prompt + continuation, and
/// the prompt's length.
fn cpu_greedy(model: &Arc<Model>, set: &ActiveAdapters, prompt: &str) -> (Vec<u32>, usize) {
    let engine = Engine::from_model(model.clone(), common::device_session(BackendChoice::Cpu));
    let req = GenerateRequest::new(prompt)
        .adapters(set.clone())
        .max_tokens(24)
        .sampler(SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        });
    let g = engine.generate(&req, |_| true).unwrap();
    let n = g.prompt_tokens.len();
    ([g.prompt_tokens, g.tokens].concat(), n)
}

/// Logits of every position of `tokens` on `backend`.
fn logits(
    model: &Arc<Model>,
    backend: BackendChoice,
    set: &ActiveAdapters,
    tokens: &[u32],
) -> Vec<f32> {
    let mut s = Session::new(model.clone(), common::device_session(backend)).unwrap();
    s.set_adapters(set.clone()).unwrap();
    let l = s.decode(tokens, LogitsFor::All).unwrap();
    if backend != BackendChoice::Cpu {
        let r = s.backend_report();
        assert_eq!(r.name, backend.as_str());
        assert!(
            r.nodes_on_device * 2 > r.nodes_total,
            "most of the graph runs on the device: {r:?}"
        );
    }
    l
}

/// A decision is clear when the CPU's top logit leads the next by this much.
const CLEAR: f32 = 1.0;
/// The most any logit of a generated position may differ between the CPU and graft's wgpu
/// backend, which computes in f32 as the CPU does.
const MAX_DIFF: f32 = 3.0;

/// The same bound for `backend`. ggml's own device backends multiply in f16 where the device has
/// it (ggml-vulkan converts activations to f16 for its matrix kernels; test-backend-ops allows
/// them a normalized error of 5e-4 per product): measured on lavapipe, ggml-vulkan's logits
/// differ from the CPU's by up to 4.5 (1.9 with `GGML_VK_DISABLE_F16`), its perplexity by 0.3 %.
fn max_diff(backend: BackendChoice) -> f32 {
    if backend == BackendChoice::Wgpu {
        MAX_DIFF
    } else {
        2.0 * MAX_DIFF
    }
}

fn top2(row: &[f32]) -> (usize, f32) {
    let (mut best, mut second) = (0, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            second = row[best];
            best = i;
        } else if i != best && v > second {
            second = v;
        }
    }
    (best, row[best] - second)
}

const PROMPTS: [&str; 2] = [
    "The capital of France is",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
];

#[test]
fn devices_make_the_cpu_greedy_decisions_with_every_adapter_kind() {
    for backend in common::device_backends() {
        greedy_decisions_with_every_adapter_kind(backend);
    }
}

fn greedy_decisions_with_every_adapter_kind(backend: BackendChoice) {
    for (file, adapters) in [
        (
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            &[
                "",
                "lora-qv-r8.gguf",
                "diablo-n7.gguf",
                "wegeft-r8.gguf",
                "lopa-saturated.gguf",
            ][..],
        ),
        (
            "SmolLM2-135M-Instruct.Q8_0.gguf",
            &["", "lora-all-r4-f16.gguf"][..],
        ),
    ] {
        let Some(p) = common::model(file) else {
            return;
        };
        let model = Arc::new(Model::load(p).unwrap());
        for a in adapters {
            let set = if a.is_empty() {
                ActiveAdapters::none()
            } else {
                ActiveAdapters::none().with(common::test_adapter(&model, a), 1.0)
            };
            // Both prompts without an adapter, one with each (lavapipe is slow).
            let prompts = if a.is_empty() {
                &PROMPTS[..]
            } else {
                &PROMPTS[..1]
            };
            for prompt in prompts {
                let (tokens, n_prompt) = cpu_greedy(&model, &set, prompt);
                let generated = tokens.len() - n_prompt;
                let cpu = logits(&model, BackendChoice::Cpu, &set, &tokens);
                let dev = logits(&model, backend, &set, &tokens);
                let nv = cpu.len() / tokens.len();
                let (mut clear, mut worst) = (0, 0f32);
                for i in n_prompt - 1..tokens.len() - 1 {
                    let (c, d) = (&cpu[i * nv..(i + 1) * nv], &dev[i * nv..(i + 1) * nv]);
                    let diff = c
                        .iter()
                        .zip(d)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0, f32::max);
                    worst = worst.max(diff);
                    let (best, margin) = top2(c);
                    if margin > CLEAR {
                        clear += 1;
                        assert_eq!(
                            top2(d).0,
                            best,
                            "{backend}: {file} + {a:?} on {prompt:?}, token {}: the CPU's choice \
                             leads by {margin}, the device chose otherwise",
                            i + 1 - n_prompt
                        );
                    }
                }
                eprintln!(
                    "{backend}: {file} + {a:?}: {clear} of {generated} decisions clear and the \
                     same; max |logit difference| {worst:.3}"
                );
                assert!(
                    worst < max_diff(backend),
                    "{backend}: {file} + {a:?} on {prompt:?}: logits differ by {worst}"
                );
                assert!(
                    clear * 3 >= generated,
                    "too few clear decisions to test: {clear}"
                );
            }
        }
    }
}

#[test]
fn device_perplexity_is_within_one_percent_of_the_cpu() {
    let backends = common::device_backends();
    if backends.is_empty() {
        return;
    }
    let Some(p) = common::model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let model = Arc::new(Model::load(p).unwrap());
    let text = std::fs::read_to_string(common::sotu_dir().join("1790_george_washington_n.txt"))
        .expect("the SOTU texts: run scripts/setup_test_data.sh");
    let tokens = model.tokenizer().encode(&text, false, false);
    let tokens = &tokens[..250];
    let ppl = |backend| {
        let mut s = Session::new(model.clone(), common::device_session(backend)).unwrap();
        graft::perplexity::perplexity(&mut s, tokens, 128, |_, _| {})
            .unwrap()
            .perplexity
    };
    let cpu = ppl(BackendChoice::Cpu);
    for backend in backends {
        let dev = ppl(backend);
        let rel = (dev - cpu).abs() / cpu;
        eprintln!(
            "perplexity cpu {cpu:.4} {backend} {dev:.4} ({:.3} %)",
            rel * 100.0
        );
        assert!(rel < 0.01, "cpu {cpu} {backend} {dev}");
    }
}

/// `gpu_layers`: only the last layers' weights go to the device and ggml's scheduler runs the
/// other layers' products on the CPU, where their weights are: the logits stay the CPU's (as
/// with every weight on the device) and fewer nodes run on the device.
#[test]
fn gpu_layers_split_the_model_between_the_device_and_the_cpu() {
    if !common::have_wgpu() {
        return;
    }
    let Some(p) = common::model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let model = Arc::new(Model::load(p).unwrap());
    let tokens = model.tokenizer().encode(PROMPTS[0], true, true);
    let cpu = logits(&model, BackendChoice::Cpu, &ActiveAdapters::none(), &tokens);
    let nv = cpu.len() / tokens.len();
    let mut on_device = Vec::new();
    for layers in [None, Some(4), Some(0)] {
        let mut cfg = common::device_session(BackendChoice::Wgpu);
        cfg.gpu_layers = layers;
        let mut s = Session::new(model.clone(), cfg).unwrap();
        let dev = s.decode(&tokens, LogitsFor::All).unwrap();
        let worst = cpu
            .iter()
            .zip(&dev)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        let last = tokens.len() - 1;
        let r = s.backend_report();
        eprintln!("gpu_layers {layers:?}: max |logit difference| {worst:.3}; {r:?}");
        assert!(worst < MAX_DIFF, "gpu_layers {layers:?}: {worst}");
        assert_eq!(
            top2(&dev[last * nv..]).0,
            top2(&cpu[last * nv..]).0,
            "gpu_layers {layers:?}"
        );
        on_device.push(r.nodes_on_device);
    }
    assert!(
        on_device[0] > on_device[1] && on_device[1] > on_device[2],
        "fewer layers, fewer nodes on the device: {on_device:?}"
    );
}

/// Training on a device: the graphs run on wgpu with ggml's scheduler putting the backward ops
/// wgpu lacks (`OUT_PROD`, `SOFT_MAX_BACK`, ...) on the CPU. Loss, gradients and the parameters
/// after two optimizer steps must be the CPU backend's running the same standard ggml ops (the
/// CPU-only graph rewrites off there too), for every adapter kind, with and without gradient
/// checkpointing; the second step proves the device's copy of the trained tensors follows the
/// updates. The train summary's `backend` names what fell back.
#[test]
fn wgpu_training_gives_the_cpu_gradients_and_steps() {
    use graft::train::{Example, Method, TrainConfig, Trainer};
    if !common::have_wgpu() {
        return;
    }
    let Some(p) = common::model("qwen2-tiny.gguf") else {
        return;
    };
    let model = Arc::new(Model::load(p).unwrap());
    let nv = model.config().n_vocab as u32;
    let tokens: Vec<u32> = (0..14u32).map(|i| (i * 7919 + 13) % nv).collect();
    let mut mask = vec![true; tokens.len()];
    mask[..4].fill(false);
    let ex = Example { tokens, mask };
    let rel = |a: &[f32], b: &[f32]| {
        let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (d / n.max(1e-30)).sqrt()
    };
    let all_grads = |t: &Trainer| -> Vec<f32> {
        t.param_names()
            .iter()
            .flat_map(|n| t.accumulated_grad(n).unwrap().to_vec())
            .collect()
    };
    let all_params = |t: &Trainer| -> Vec<f32> {
        t.param_names()
            .iter()
            .flat_map(|n| t.param(n).unwrap().to_vec())
            .collect()
    };
    for (method, checkpointing) in [
        (Method::Lora, false),
        (Method::Lora, true),
        (Method::Diablo, false),
        (Method::Wegeft, true),
        (Method::Lopa, false),
    ] {
        let cfg = |backend| TrainConfig {
            method,
            rank: 2,
            alpha: 4.0,
            blocks: 3,
            virtual_tokens: 4,
            prompt_tokens: 4,
            ctx: 32,
            threads: 2,
            lr: 1e-2,
            warmup: 0,
            checkpointing,
            gemm_forward: false,
            gemm_backward: false,
            split_q4_1: false,
            backend,
            ..TrainConfig::default()
        };
        let what = format!("{method:?}, checkpointing {checkpointing}");
        let mut cpu = Trainer::new(model.clone(), cfg(BackendChoice::Cpu)).unwrap();
        let mut dev = Trainer::new(model.clone(), cfg(BackendChoice::Wgpu)).unwrap();
        for step in 1..=2 {
            let (a, b) = (
                cpu.step(std::slice::from_ref(&ex)).unwrap(),
                dev.step(std::slice::from_ref(&ex)).unwrap(),
            );
            let g = rel(&all_grads(&dev), &all_grads(&cpu));
            eprintln!(
                "{what}, step {step}: loss cpu {} wgpu {}; gradients differ by {g:.2e} (relative L2)",
                a.loss, b.loss
            );
            assert!((a.loss - b.loss).abs() <= 1e-4 * a.loss.abs(), "{what}");
            assert!(g < 1e-3, "{what}, step {step}: gradients differ by {g}");
        }
        // Adam's steps are nearly sign-like where a gradient is tiny, so the parameters differ
        // by more than the gradients; a device copy left behind would differ by whole steps.
        let w = rel(&all_params(&dev), &all_params(&cpu));
        assert!(w < 1e-3, "{what}: parameters differ by {w}");
        let r = dev.backend_report();
        eprintln!("{what}: {r:?}");
        let fell_back: u64 = r.cpu_fallback_ops.values().sum();
        assert_eq!(r.name, "wgpu");
        assert!(r.nodes_on_device > 0, "{what}: {r:?}");
        assert!(
            r.nodes_on_device + fell_back <= r.nodes_total,
            "{what}: {r:?}"
        );
        assert!(cpu.backend_report().cpu_fallback_ops.is_empty());
    }
}
