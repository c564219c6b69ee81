//! The batched decoder: sequences with different adapters (every kind, stacked, none) decoded in
//! one graph per step give what each gives decoded alone in a `Session`.

mod common;

use std::sync::Arc;

use graft::{
    ActiveAdapters, Adapter, BatchConfig, BatchDecoder, Error, LogitsFor, Model, SeqId, Session,
    SessionConfig,
};

const STEPS: usize = 10;

fn adapter(m: &Model, name: &str) -> Arc<Adapter> {
    let p = common::repo_root().join(".cache/adapters").join(name);
    Adapter::load(m, &p).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Greedy decoding of `prompt` alone: the tokens and the logits before each.
fn alone(m: &Arc<Model>, set: &ActiveAdapters, prompt: &[u32]) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut s = Session::new(
        m.clone(),
        SessionConfig {
            n_ctx: 256,
            n_threads: 2,
            ..SessionConfig::default()
        },
    )
    .unwrap();
    s.set_adapters(set.clone()).unwrap();
    let mut l = s.decode(prompt, LogitsFor::Last).unwrap();
    let (mut toks, mut logits) = (Vec::new(), Vec::new());
    for _ in 0..STEPS {
        let t = graft::sampler::argmax(&l);
        toks.push(t);
        logits.push(l);
        l = s.decode(&[t], LogitsFor::Last).unwrap();
    }
    (toks, logits)
}

/// The largest difference the batched graph may make: 3e-4 of the row's largest logit, the
/// summation-order bound of `sessions.rs` (matmul kernels may pick another order for more
/// rows on some CPUs). On x86 AVX2 the batched logits are bitwise those of a session: every
/// row computes the same sums in the same order (same attention shapes, mask and padding per
/// sequence, adapter terms added in the session's order).
fn order_noise(row: &[f32]) -> f32 {
    3e-4 * row.iter().fold(1f32, |m, x| m.max(x.abs()))
}

#[test]
fn mixed_adapters_in_one_batch_match_each_sequence_alone() {
    let Some(path) = common::model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let m = Arc::new(Model::load(path).unwrap());
    let tok = |s: &str| m.tokenizer().encode(s, true, false);
    let none = ActiveAdapters::none();
    let sets: Vec<(&str, ActiveAdapters)> = vec![
        ("base", none.clone()),
        (
            "lora",
            none.clone().with(adapter(&m, "lora-qv-r8.gguf"), 1.0),
        ),
        // N = 7 does not divide 576 or 1536: edge blocks.
        (
            "diablo",
            none.clone().with(adapter(&m, "diablo-n7.gguf"), 1.0),
        ),
        (
            "wegeft",
            none.clone().with(adapter(&m, "wegeft-r8.gguf"), 1.0),
        ),
        (
            "stack",
            none.clone()
                .with(adapter(&m, "lora-all-r4-f16.gguf"), 0.5)
                .with(adapter(&m, "diablo-n64.gguf"), 1.0),
        ),
        (
            "lopa",
            none.clone().with(adapter(&m, "lopa-random.gguf"), 1.0),
        ),
        (
            "dbg-lora-all",
            none.clone().with(adapter(&m, "lora-all-r4-f16.gguf"), 0.5),
        ),
        (
            "dbg-diablo64",
            none.clone().with(adapter(&m, "diablo-n64.gguf"), 1.0),
        ),
        // The same set as another sequence: one row group for both.
        (
            "lora again",
            none.clone().with(adapter(&m, "lora-qv-r8.gguf"), 1.0),
        ),
    ];
    let prompts = [
        "The capital of France is",
        "Once upon a time, in a small village by the sea,",
        "def fibonacci(n):",
        "The quick brown fox",
        "Water boils at a temperature of",
        "My favourite animal is the",
        "In 1492, Columbus",
        "Rust is a programming language that",
        "The best way to learn",
    ];
    let expected: Vec<_> = sets
        .iter()
        .zip(&prompts)
        .map(|((_, set), p)| alone(&m, set, &tok(p)))
        .collect();

    let mut b = BatchDecoder::new(
        m.clone(),
        BatchConfig {
            n_seq_max: 9,
            n_ctx_seq: 256,
            n_batch: 64,
            n_threads: 2,
            ..BatchConfig::default()
        },
    )
    .unwrap();
    let ids: Vec<SeqId> = sets
        .iter()
        .map(|(_, set)| b.add_sequence(set.clone()).unwrap())
        .collect();
    // The last two sequences start two steps late (continuous batching).
    let late = 2;
    let n = ids.len();
    let mut next: Vec<Option<Vec<u32>>> = prompts.iter().map(|p| Some(tok(p))).collect();
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut worst = 0f32;
    for step in 0..STEPS + late {
        let active: Vec<usize> = (0..n)
            .filter(|&i| (i < n - 2 || step >= late) && got[i].len() < STEPS)
            .collect();
        let work: Vec<(SeqId, &[u32])> = active
            .iter()
            .map(|&i| (ids[i], next[i].as_deref().unwrap()))
            .collect();
        let logits = b.step(&work).unwrap();
        for (&i, l) in active.iter().zip(&logits) {
            let k = got[i].len();
            let want = &expected[i].1[k];
            let d = max_diff(l, want);
            if d >= order_noise(want) {
                eprintln!("{} step {k}: diff {d}", sets[i].0);
            }
            worst = worst.max(d / order_noise(want));
            let t = graft::sampler::argmax(l);
            got[i].push(t);
            next[i] = Some(vec![t]);
        }
    }
    eprintln!("worst difference: {worst:.3} of the bound");
    for (i, (name, _)) in sets.iter().enumerate() {
        assert_eq!(got[i], expected[i].0, "{name}");
    }
    // Ending a sequence frees its slot; the rest go on.
    assert!(b.remove_sequence(ids[0]));
    assert!(!b.remove_sequence(ids[0]));
    b.add_sequence(ActiveAdapters::none()).unwrap();
    assert!(
        b.add_sequence(ActiveAdapters::none()).is_err(),
        "all slots taken"
    );
    let l = b.step(&[(ids[1], &[got[1][0]])]).unwrap();
    assert_eq!(l.len(), 1);
}

#[test]
fn bad_steps_are_refused_and_change_nothing() {
    let Some(path) = common::model("qwen2-tiny.gguf") else {
        return;
    };
    let m = Arc::new(Model::load(path).unwrap());
    let n_vocab = m.config().n_vocab as u32;
    let cfg = BatchConfig {
        n_seq_max: 2,
        n_ctx_seq: 8, // rounded up to 256
        n_batch: 4,
        n_threads: 1,
        ..BatchConfig::default()
    };
    let mut b = BatchDecoder::new(m.clone(), cfg.clone()).unwrap();
    assert_eq!(b.config().n_ctx_seq, 256);
    let a = b.add_sequence(ActiveAdapters::none()).unwrap();
    let c = b.add_sequence(ActiveAdapters::none()).unwrap();
    assert!(b.add_sequence(ActiveAdapters::none()).is_err(), "two slots");
    // A prompt longer than n_batch is split over graphs; the logits equal a session's.
    let prompt: Vec<u32> = (1..=10).collect();
    let first = b.step(&[(a, &prompt)]).unwrap();
    assert_eq!(b.seq_len(a), Some(10));
    let mut s = Session::new(
        m.clone(),
        SessionConfig {
            n_ctx: 256,
            n_batch: 4,
            n_threads: 1,
            ..SessionConfig::default()
        },
    )
    .unwrap();
    assert_eq!(first[0], s.decode(&prompt, LogitsFor::Last).unwrap());
    let long = vec![1u32; 247];
    for bad in [
        vec![(a, &[][..])],
        vec![(a, &[n_vocab][..])],
        vec![(a, &[1][..]), (a, &[2][..])],
        vec![(c, &[1][..]), (a, &long[..])], // 10 + 247 > 256
    ] {
        let e = b.step(&bad).unwrap_err();
        assert!(
            matches!(e, Error::InvalidRequest(_) | Error::ContextFull { .. }),
            "{e}"
        );
        assert_eq!((b.seq_len(a), b.seq_len(c)), (Some(10), Some(0)));
    }
    assert!(b.remove_sequence(a));
    // The freed slot serves a new sequence from its start.
    let d = b.add_sequence(ActiveAdapters::none()).unwrap();
    let l = b.step(&[(d, &[7, 8, 9]), (c, &[7, 8, 9])]).unwrap();
    assert_eq!(l[0], l[1]);
}
