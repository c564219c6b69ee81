//! Sessions: batching, incremental decoding and concurrent sessions over one mapped model.

mod common;

use common::max_diff;

use std::sync::Arc;

use graft::{LogitsFor, Model, Session, SessionConfig};

fn model() -> Option<Arc<Model>> {
    common::model("qwen2-tiny.gguf").map(|p| Arc::new(Model::load(p).unwrap()))
}

fn session(m: &Arc<Model>, n_batch: usize) -> Session {
    Session::new(
        m.clone(),
        SessionConfig {
            n_ctx: 300,
            n_batch,
            n_threads: 1,
            flash_attn: false,
            kv_f32: false,
            ..Default::default()
        },
    )
    .unwrap()
}

fn prompt(n: usize, n_vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % n_vocab) as u32).collect()
}

#[test]
fn batching_does_not_change_logits() {
    let Some(m) = model() else { return };
    let toks = prompt(260, m.config().n_vocab);
    let whole = session(&m, 512).decode(&toks, LogitsFor::All).unwrap();
    let chunked = session(&m, 7).decode(&toks, LogitsFor::All).unwrap();
    let d = max_diff(&whole, &chunked);
    assert!(d < 1e-3, "max diff {d}");
    // Last-token logits equal the last row of the full output.
    let last = session(&m, 64).decode(&toks, LogitsFor::Last).unwrap();
    let n_vocab = m.config().n_vocab;
    assert!(max_diff(&last, &whole[(toks.len() - 1) * n_vocab..]) < 1e-3);
}

/// The CPU backend runs fewer threads while other processes keep cores busy; that is only
/// sound if the thread count never changes a result. Prompt and decode logits with 1, 2 and 3
/// threads must be bit-identical, for every weight type.
#[test]
fn thread_count_does_not_change_logits() {
    for file in [
        "qwen2-tiny.gguf",
        "qwen2-tiny.F16.gguf",
        "qwen2-tiny.Q8_0.gguf",
        "qwen2-tiny.Q4_0.gguf",
        "qwen2-tiny.Q4_1.gguf",
    ] {
        let Some(path) = common::model(file) else {
            continue;
        };
        let m = Arc::new(Model::load(path).unwrap());
        let toks = prompt(70, m.config().n_vocab);
        let run = |threads: usize| {
            let mut s = session(&m, 512);
            s.set_threads(threads);
            s.set_adaptive_threads(false);
            let mut out = s.decode(&toks[..64], LogitsFor::All).unwrap();
            for &t in &toks[64..] {
                out.extend(s.decode(&[t], LogitsFor::Last).unwrap());
            }
            assert_eq!(s.threads_in_use(), threads);
            out
        };
        let one = run(1);
        for threads in [2, 3] {
            let other = run(threads);
            let same = one
                .iter()
                .zip(&other)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{file}: {threads} threads changed the logits");
        }
    }
}

#[test]
fn incremental_decoding_matches_one_pass() {
    let Some(m) = model() else { return };
    let n_vocab = m.config().n_vocab;
    let toks = prompt(40, n_vocab);
    let full = session(&m, 512).decode(&toks, LogitsFor::All).unwrap();
    let mut s = session(&m, 512);
    s.decode(&toks[..10], LogitsFor::Last).unwrap();
    let mut worst = 0f32;
    for (i, &t) in toks[10..].iter().enumerate() {
        let l = s.decode(&[t], LogitsFor::Last).unwrap();
        let row = 10 + i;
        let want = &full[row * n_vocab..(row + 1) * n_vocab];
        let d = max_diff(&l, want);
        assert!(d < order_noise(want), "position {row}: max diff {d}");
        worst = worst.max(d / order_noise(want));
        assert_eq!(
            graft::sampler::argmax(&l),
            graft::sampler::argmax(want),
            "position {row}"
        );
    }
    eprintln!("worst difference: {worst:.2} of the summation-order bound");
    // Truncating and re-decoding reproduces the same logits (cache rows are overwritten).
    s.truncate(20);
    let l = s.decode(&toks[20..21], LogitsFor::Last).unwrap();
    let want = &full[20 * n_vocab..21 * n_vocab];
    assert!(max_diff(&l, want) < order_noise(want));
}

/// The largest difference f32 summation order may make between the batched (GEMM) and the
/// single-token (GEMV) kernels on a row of logits: 3e-4 of the row's largest magnitude. The
/// kernels add the same products in another order, and the rounding grows with the values and
/// through the layers; measured at most 1.0e-4 of the scale on x86 AVX2 and 1.6e-4 on aarch64
/// NEON (qemu-user). A wrong position, mask or cache row moves logits by 1e-1 and more.
fn order_noise(row: &[f32]) -> f32 {
    3e-4 * row.iter().fold(1f32, |m, x| m.max(x.abs()))
}

#[test]
fn concurrent_sessions_do_not_interfere() {
    let Some(m) = model() else { return };
    let n_vocab = m.config().n_vocab;
    let a: Vec<u32> = prompt(50, n_vocab);
    let b: Vec<u32> = prompt(50, n_vocab).into_iter().rev().collect();
    let greedy = |s: &mut Session, p: &[u32]| -> Vec<u32> {
        let mut out = Vec::new();
        let mut l = s.decode(p, LogitsFor::Last).unwrap();
        for _ in 0..20 {
            let t = graft::sampler::argmax(&l);
            out.push(t);
            l = s.decode(&[t], LogitsFor::Last).unwrap();
        }
        out
    };
    let alone_a = greedy(&mut session(&m, 512), &a);
    let alone_b = greedy(&mut session(&m, 512), &b);
    let (ma, mb) = (m.clone(), m.clone());
    let (a2, b2) = (a.clone(), b.clone());
    let ta = std::thread::spawn(move || {
        (0..3)
            .map(|_| greedy(&mut session(&ma, 512), &a2))
            .collect::<Vec<_>>()
    });
    let tb = std::thread::spawn(move || {
        (0..3)
            .map(|_| greedy(&mut session(&mb, 512), &b2))
            .collect::<Vec<_>>()
    });
    for r in ta.join().unwrap() {
        assert_eq!(r, alone_a);
    }
    for r in tb.join().unwrap() {
        assert_eq!(r, alone_b);
    }
    // Interleaved on one thread: two sessions alternate steps.
    let (mut sa, mut sb) = (session(&m, 512), session(&m, 512));
    let (mut la, mut lb) = (
        sa.decode(&a, LogitsFor::Last).unwrap(),
        sb.decode(&b, LogitsFor::Last).unwrap(),
    );
    let (mut ga, mut gb) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let (x, y) = (graft::sampler::argmax(&la), graft::sampler::argmax(&lb));
        ga.push(x);
        gb.push(y);
        la = sa.decode(&[x], LogitsFor::Last).unwrap();
        lb = sb.decode(&[y], LogitsFor::Last).unwrap();
    }
    assert_eq!(ga, alone_a);
    assert_eq!(gb, alone_b);
}

#[test]
fn flash_attention_agrees_with_matmul_attention() {
    let Some(m) = model() else { return };
    let toks = prompt(100, m.config().n_vocab);
    let plain = session(&m, 512).decode(&toks, LogitsFor::All).unwrap();
    let mut fa = Session::new(
        m.clone(),
        SessionConfig {
            n_ctx: 300,
            n_batch: 512,
            n_threads: 1,
            flash_attn: true,
            kv_f32: false,
            ..Default::default()
        },
    )
    .unwrap();
    let flash = fa.decode(&toks, LogitsFor::All).unwrap();
    let d = max_diff(&plain, &flash);
    assert!(d < 2e-2, "max diff {d}");
}

/// `cpu_repack`: the projections of a Q4_0 model run ggml's repacked kernels from a copy made
/// once per model. The logits stay those of the plain kernels up to their different blocking
/// of the same quantized products, an adapter changes them as it does on the plain path, and a
/// second session shares the copy. Where the CPU has no repacked Q4_0 kernels nothing changes.
#[test]
fn cpu_repack_keeps_logits_and_adapters() {
    let Some(p) = common::model("SmolLM2-135M-Instruct.Q4_0.gguf") else {
        return;
    };
    let m = Arc::new(Model::load(p).unwrap());
    let toks = prompt(24, m.config().n_vocab);
    let cfg = |cpu_repack| SessionConfig {
        n_ctx: 64,
        n_threads: 2,
        cpu_repack,
        ..Default::default()
    };
    let lora = common::test_adapter(&m, "lora-qv-r8.gguf");
    let run = |cpu_repack: bool, adapter: bool| {
        let mut s = Session::new(m.clone(), cfg(cpu_repack)).unwrap();
        if adapter {
            s.set_adapters(graft::ActiveAdapters::none().with(lora.clone(), 1.0))
                .unwrap();
        }
        let logits = s.decode(&toks, LogitsFor::All).unwrap();
        (logits, s.backend_report().repacked_weights)
    };
    let (plain, none) = run(false, false);
    let (packed, n) = run(true, false);
    assert_eq!(none, 0);
    if n == 0 {
        assert_eq!(plain, packed, "nothing repacked, so nothing may change");
        return;
    }
    // Every projection of the 30 layers (the output matrix is the tied token embedding).
    assert_eq!(n, 7 * m.config().n_layer);
    // Prompt kernels that block the products differently move SmolLM2's logits by up to ~1
    // (as llama.cpp's own do between CPUs, or with and without its extra buffer types).
    const TOL: f32 = 1.5;
    let d = max_diff(&plain, &packed);
    assert!(d > 0.0 && d < TOL, "plain vs repacked logits: {d}");
    let (plain_lora, _) = run(false, true);
    let (packed_lora, n2) = run(true, true);
    assert_eq!(n2, n);
    // The adapter moves the logits far more than the kernels do, and as much on both paths.
    let effect = max_diff(&plain_lora, &plain);
    assert!(
        effect > 2.0 * TOL,
        "the adapter changes the logits ({effect})"
    );
    let d = max_diff(&plain_lora, &packed_lora);
    assert!(d < TOL, "with the adapter, plain vs repacked logits: {d}");
}

/// One-token decoding runs the last graph again while the batch shape and the adapters stay
/// the same (`reuse_graphs`). Every change must build the graph anew: another adapter, another
/// scale of the same adapter, none (first tokens of new sequences, where the shape stays), and
/// the attended length growing past a padding step (256 cache positions). Each step's logits
/// are exactly those of a session that builds every graph.
#[test]
fn reused_graphs_give_the_logits_of_rebuilt_ones() {
    let Some(p) = common::model("SmolLM2-135M-Instruct.Q8_0.gguf") else {
        return;
    };
    let m = Arc::new(Model::load(p).unwrap());
    let (a, b) = (
        common::test_adapter(&m, "lora-qv-r8.gguf"),
        common::test_adapter(&m, "diablo-n7.gguf"),
    );
    let set = |items: &[(&Arc<graft::Adapter>, f32)]| {
        items
            .iter()
            .fold(graft::ActiveAdapters::none(), |s, (a, k)| {
                s.with((*a).clone(), *k)
            })
    };
    let steps = [
        set(&[]),
        set(&[]),
        set(&[(&a, 1.0)]),
        set(&[(&a, 1.0)]),
        set(&[(&a, 0.5)]),
        set(&[(&b, 1.0)]),
        set(&[(&b, 1.0)]),
        set(&[(&a, 1.0), (&b, 1.0)]),
        set(&[]),
        set(&[]),
    ];
    let cfg = |reuse_graphs| SessionConfig {
        n_ctx: 512,
        n_threads: 2,
        reuse_graphs,
        ..Default::default()
    };
    let (mut reused, mut rebuilt) = (
        Session::new(m.clone(), cfg(true)).unwrap(),
        Session::new(m.clone(), cfg(false)).unwrap(),
    );
    let toks = prompt(280, m.config().n_vocab);
    // First tokens of new sequences (the cache cleared): each step has the shape of the last,
    // so only the adapters tell the graphs apart.
    for (i, set) in steps.iter().enumerate() {
        let mut logits = Vec::new();
        for s in [&mut reused, &mut rebuilt] {
            s.clear();
            s.set_adapters(set.clone()).unwrap();
            logits.push(s.decode(&toks[i..=i], LogitsFor::Last).unwrap());
        }
        let d = max_diff(&logits[0], &logits[1]);
        assert!(
            logits[0] == logits[1],
            "first token, step {i}: logits differ by {d}"
        );
    }
    // 250 prompt tokens, then one-token steps over positions 250-279, across 256 (the small
    // model: this part needs no adapter, and runs under emulation on aarch64 too).
    let Some(m) = model() else { return };
    let toks = prompt(280, m.config().n_vocab);
    let (mut reused, mut rebuilt) = (
        Session::new(m.clone(), cfg(true)).unwrap(),
        Session::new(m.clone(), cfg(false)).unwrap(),
    );
    for s in [&mut reused, &mut rebuilt] {
        s.decode(&toks[..250], LogitsFor::Last).unwrap();
    }
    for (i, &t) in toks[250..].iter().enumerate() {
        let mut logits = Vec::new();
        for s in [&mut reused, &mut rebuilt] {
            logits.push(s.decode(&[t], LogitsFor::Last).unwrap());
        }
        let d = max_diff(&logits[0], &logits[1]);
        assert!(
            logits[0] == logits[1],
            "position {}: logits differ by {d}",
            250 + i
        );
    }
}
