//! Adapters at inference on a small qwen2 model: each kind's graph hook against the same
//! delta folded into the weights (two independent code paths: ggml graph vs host math in
//! `merge`), registry policies and limits, hot-swap isolation, and refusal of bad adapters.
//! The comparisons against llama.cpp and numpy references live in `adapters_reference.rs`.

mod common;

use common::max_diff;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use graft::adapter::merge::{merge, MergeType};
use graft::adapter::registry::{AdapterRegistry, LoadPolicy, RegistryLimits};
use graft::{ActiveAdapters, Adapter, Error, LogitsFor, Model, Session, SessionConfig};
use graft_formats::{GgmlType, GgufWriter, Value};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn tiny() -> Option<Arc<Model>> {
    common::model("qwen2-tiny.gguf").map(|p| Arc::new(Model::load(p).unwrap()))
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("graft-adapters-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn randn(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * std)
        .collect()
}

fn header(w: &mut GgufWriter<'_>, kind: &str) {
    w.add_kv("general.type", "adapter");
    w.add_kv("general.architecture", "qwen2");
    w.add_kv("adapter.type", kind);
}

/// (n_in, n_out) of a qwen2-tiny target kind.
fn dims(m: &Model, stem: &str) -> (u64, u64) {
    let k = graft::adapter::TargetKind::parse(stem).unwrap();
    let (a, b) = k.dims(m);
    (a as u64, b as u64)
}

const KINDS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

fn write_lora(m: &Model, path: &Path, r: u64, alpha: f32, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = GgufWriter::new();
    header(&mut w, "lora");
    w.add_kv("adapter.lora.alpha", Value::F32(alpha));
    for l in 0..2 {
        for k in KINDS {
            let (n_in, n_out) = dims(m, k);
            let base = format!("blk.{l}.{k}.weight");
            w.add_tensor_f32(
                format!("{base}.lora_a"),
                &[n_in, r],
                &randn(&mut rng, (n_in * r) as usize, 0.3),
            )
            .unwrap();
            w.add_tensor_f32(
                format!("{base}.lora_b"),
                &[r, n_out],
                &randn(&mut rng, (r * n_out) as usize, 0.3),
            )
            .unwrap();
        }
    }
    w.write_atomic(path).unwrap();
}

fn write_diablo(m: &Model, path: &Path, n: u64, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = GgufWriter::new();
    header(&mut w, "diablo");
    w.add_kv("adapter.diablo.blocks", Value::U32(n as u32));
    for l in 0..2 {
        for k in KINDS {
            let (n_in, n_out) = dims(m, k);
            let (bi, bo) = (n_in.div_ceil(n), n_out.div_ceil(n));
            let nb = n_in.div_ceil(bi).max(n_out.div_ceil(bo));
            let v = randn(&mut rng, (bi * bo * nb) as usize, 0.2);
            w.add_tensor_f32(format!("blk.{l}.{k}.weight.diablo"), &[bi, bo, nb], &v)
                .unwrap();
        }
    }
    w.write_atomic(path).unwrap();
}

fn write_wegeft(m: &Model, path: &Path, r: u64, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = GgufWriter::new();
    header(&mut w, "wegeft");
    w.add_kv("adapter.wegeft.alpha", Value::F32(4.0));
    // Own pairs for q/k of layer 1, shared pairs for every other kind.
    for (name, stem) in [
        ("blk.1.attn_q.weight", "attn_q"),
        ("blk.1.attn_k.weight", "attn_k"),
        ("attn_v.weight", "attn_v"),
        ("attn_output.weight", "attn_output"),
        ("ffn_gate.weight", "ffn_gate"),
        ("ffn_up.weight", "ffn_up"),
        ("ffn_down.weight", "ffn_down"),
    ] {
        let (n_in, _) = dims(m, stem);
        w.add_tensor_f32(
            format!("{name}.wegeft_phi"),
            &[n_in, r],
            &randn(&mut rng, (n_in * r) as usize, 0.2),
        )
        .unwrap();
        w.add_tensor_f32(
            format!("{name}.wegeft_psi"),
            &[n_in, r],
            &randn(&mut rng, (n_in * r) as usize, 0.2),
        )
        .unwrap();
    }
    w.write_atomic(path).unwrap();
}

fn session(m: &Arc<Model>) -> Session {
    Session::new(
        m.clone(),
        SessionConfig {
            n_ctx: 128,
            n_batch: 64,
            n_threads: 1,
            flash_attn: false,
            kv_f32: false,
            ..Default::default()
        },
    )
    .unwrap()
}

fn logits(m: &Arc<Model>, set: ActiveAdapters, toks: &[u32]) -> Vec<f32> {
    let mut s = session(m);
    s.set_adapters(set).unwrap();
    s.decode(toks, LogitsFor::All).unwrap()
}

/// f32 rounding of two summation orders: relative to the logits' magnitude.
fn tolerance(logits: &[f32]) -> f32 {
    1e-3 * logits.iter().fold(1f32, |m, x| m.max(x.abs()))
}

const PROMPT: [u32; 12] = [5, 77, 130, 200, 9, 41, 280, 33, 101, 250, 17, 64];

/// The adapter applied in the graph equals the adapter folded into F32 weights, and it
/// changes the output clearly.
fn graph_equals_merged(m: &Arc<Model>, a: Arc<Adapter>, s_user: f32) {
    let set = ActiveAdapters::none().with(a.clone(), s_user);
    let with = logits(m, set.clone(), &PROMPT);
    let base = logits(m, ActiveAdapters::none(), &PROMPT);
    let effect = max_diff(&with, &base);
    assert!(
        effect > 0.05,
        "{}: adapter has no visible effect ({effect})",
        a.name()
    );
    let out = tmp(&format!("merged-{}-{s_user}.gguf", a.name()));
    merge(m, &set, MergeType::F32, &out, |_, _| {}).unwrap();
    let merged = Arc::new(Model::load(&out).unwrap());
    let want = logits(&merged, ActiveAdapters::none(), &PROMPT);
    let d = max_diff(&with, &want);
    let tol = tolerance(&want);
    eprintln!(
        "{} @{s_user}: effect {effect:.3}, graph vs merged {d:.2e} (tolerance {tol:.1e})",
        a.name()
    );
    assert!(d < tol, "{}: graph vs merged differ by {d}", a.name());
}

#[test]
fn every_kind_in_the_graph_equals_its_merged_weights() {
    let Some(m) = tiny() else { return };
    let (pl, pd, pw) = (tmp("lora.gguf"), tmp("diablo.gguf"), tmp("wegeft.gguf"));
    write_lora(&m, &pl, 4, 8.0, 1);
    write_diablo(&m, &pd, 3, 2); // 3 does not divide 128 or 352
    write_wegeft(&m, &pw, 4, 3);
    for p in [&pl, &pd, &pw] {
        let a = Adapter::load(&m, p).unwrap();
        graph_equals_merged(&m, a.clone(), 1.0);
        graph_equals_merged(&m, a, 0.5);
    }
    // Several at once: their deltas add.
    let set = ActiveAdapters::none()
        .with(Adapter::load(&m, &pl).unwrap(), 0.5)
        .with(Adapter::load(&m, &pd).unwrap(), 1.0)
        .with(Adapter::load(&m, &pw).unwrap(), 0.7);
    let with = logits(&m, set.clone(), &PROMPT);
    let out = tmp("merged-all.gguf");
    merge(&m, &set, MergeType::F32, &out, |_, _| {}).unwrap();
    let merged = Arc::new(Model::load(&out).unwrap());
    let want = logits(&merged, ActiveAdapters::none(), &PROMPT);
    let d = max_diff(&with, &want);
    assert!(
        d < tolerance(&want),
        "three adapters: graph vs merged differ by {d}"
    );
}

#[test]
fn scale_zero_is_the_base_and_lora_is_linear_in_scale() {
    let Some(m) = tiny() else { return };
    let p = tmp("lora-lin.gguf");
    write_lora(&m, &p, 2, 0.0, 7);
    let a = Adapter::load(&m, &p).unwrap();
    let base = logits(&m, ActiveAdapters::none(), &PROMPT);
    let zero = logits(&m, ActiveAdapters::none().with(a.clone(), 0.0), &PROMPT);
    assert!(max_diff(&base, &zero) < 1e-5);
}

#[test]
fn hot_swap_sessions_never_see_each_others_adapters() {
    let Some(m) = tiny() else { return };
    let (pa, pb) = (tmp("swap-a.gguf"), tmp("swap-b.gguf"));
    write_lora(&m, &pa, 4, 8.0, 11);
    write_diablo(&m, &pd_path(&pb), 4, 12);
    let reg = AdapterRegistry::new(m.clone());
    let a = reg.load("a", &pa, LoadPolicy::Create).unwrap();
    let b = reg.load("b", pd_path(&pb), LoadPolicy::Create).unwrap();
    let greedy = |s: &mut Session, n: usize| {
        let mut out = Vec::new();
        let mut l = s.decode(&PROMPT, LogitsFor::Last).unwrap();
        for _ in 0..n {
            let t = graft::sampler::argmax(&l);
            out.push(t);
            l = s.decode(&[t], LogitsFor::Last).unwrap();
        }
        out
    };
    let alone = |set: ActiveAdapters| {
        let mut s = session(&m);
        s.set_adapters(set).unwrap();
        greedy(&mut s, 12)
    };
    let ga = alone(ActiveAdapters::none().with(a.clone(), 1.0));
    let gb = alone(ActiveAdapters::none().with(b.clone(), 0.8));
    let g0 = alone(ActiveAdapters::none());
    assert!(ga != g0 || gb != g0, "adapters should change greedy output");
    // Interleaved step by step in two sessions.
    let (mut sa, mut sb) = (session(&m), session(&m));
    sa.set_adapters(ActiveAdapters::none().with(a.clone(), 1.0))
        .unwrap();
    sb.set_adapters(ActiveAdapters::none().with(b.clone(), 0.8))
        .unwrap();
    let (mut la, mut lb) = (
        sa.decode(&PROMPT, LogitsFor::Last).unwrap(),
        sb.decode(&PROMPT, LogitsFor::Last).unwrap(),
    );
    let (mut oa, mut ob) = (Vec::new(), Vec::new());
    for _ in 0..12 {
        let (x, y) = (graft::sampler::argmax(&la), graft::sampler::argmax(&lb));
        oa.push(x);
        ob.push(y);
        la = sa.decode(&[x], LogitsFor::Last).unwrap();
        lb = sb.decode(&[y], LogitsFor::Last).unwrap();
    }
    assert_eq!(oa, ga);
    assert_eq!(ob, gb);
    // Switching mid-conversation recomputes the cache: same as having used the new set from
    // the start.
    let mut s = session(&m);
    s.set_adapters(ActiveAdapters::none().with(a.clone(), 1.0))
        .unwrap();
    s.decode(&PROMPT, LogitsFor::Last).unwrap();
    let sw = s
        .set_adapters(ActiveAdapters::none().with(b.clone(), 0.8))
        .unwrap();
    assert!(sw.cache_invalidated);
    assert_eq!(sw.tokens_to_recompute, PROMPT.len());
    let l = s.decode(&[3], LogitsFor::Last).unwrap();
    let mut fresh = session(&m);
    fresh
        .set_adapters(ActiveAdapters::none().with(b.clone(), 0.8))
        .unwrap();
    fresh.decode(&PROMPT, LogitsFor::Last).unwrap();
    let want = fresh.decode(&[3], LogitsFor::Last).unwrap();
    assert!(max_diff(&l, &want) < 1e-4);
    // Same set again: nothing to recompute.
    let sw = s.set_adapters(ActiveAdapters::none().with(b, 0.8)).unwrap();
    assert!(!sw.cache_invalidated);
}

fn pd_path(p: &Path) -> PathBuf {
    p.to_path_buf()
}

#[test]
fn registry_policies_and_limits() {
    let Some(m) = tiny() else { return };
    let (pa, pb) = (tmp("reg-a.gguf"), tmp("reg-b.gguf"));
    write_lora(&m, &pa, 2, 4.0, 21);
    write_lora(&m, &pb, 8, 4.0, 22);
    let reg = AdapterRegistry::with_limits(
        m.clone(),
        RegistryLimits {
            max_adapters: 2,
            max_bytes: 1 << 30,
            max_rank: 4,
        },
    );
    let a = reg.load("a", &pa, LoadPolicy::Create).unwrap();
    assert!(matches!(
        reg.load("a", &pa, LoadPolicy::Create),
        Err(Error::Registry(_))
    ));
    let e = reg.load("b", &pb, LoadPolicy::Create).unwrap_err();
    assert!(e.to_string().contains("rank 8"), "{e}");
    assert_eq!(
        reg.list().len(),
        1,
        "a refused adapter leaves nothing behind"
    );
    let a2 = reg
        .load("a", &pa, LoadPolicy::CompareAndSwap(a.clone()))
        .unwrap();
    assert!(matches!(
        reg.load("a", &pa, LoadPolicy::CompareAndSwap(a.clone())),
        Err(Error::Registry(_))
    ));
    reg.load("a", &pa, LoadPolicy::Replace).unwrap();
    reg.load("c", &pa, LoadPolicy::Create).unwrap();
    assert!(reg
        .load("d", &pa, LoadPolicy::Create)
        .unwrap_err()
        .to_string()
        .contains("limit"));
    // Unloading keeps sessions that hold it working.
    let mut s = session(&m);
    s.set_adapters(ActiveAdapters::none().with(a2, 1.0))
        .unwrap();
    reg.unload("a").unwrap();
    assert!(reg.get("a").is_none());
    s.decode(&PROMPT, LogitsFor::Last).unwrap();
    assert!(reg.unload("a").is_err());
    assert!(reg.active(&[("nope", 1.0)]).is_err());
    let small = AdapterRegistry::with_limits(
        m.clone(),
        RegistryLimits {
            max_adapters: 8,
            max_bytes: 1000,
            max_rank: 64,
        },
    );
    assert!(small
        .load("a", &pa, LoadPolicy::Create)
        .unwrap_err()
        .to_string()
        .contains("bytes"));
}

fn expect_invalid(m: &Model, path: &Path, needle: &str) {
    let e = Adapter::load(m, path).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
}

#[test]
fn bad_adapters_are_refused_with_the_tensor_named() {
    let Some(m) = tiny() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // Wrong architecture.
    let p = tmp("bad-arch.gguf");
    let mut w = GgufWriter::new();
    w.add_kv("general.type", "adapter");
    w.add_kv("general.architecture", "llama");
    w.add_kv("adapter.type", "lora");
    w.add_tensor_f32(
        "blk.0.attn_q.weight.lora_a",
        &[128, 2],
        &randn(&mut rng, 256, 0.1),
    )
    .unwrap();
    w.write_atomic(&p).unwrap();
    expect_invalid(&m, &p, "architecture \"llama\"");
    // Another base (fingerprint).
    let p = tmp("bad-fp.gguf");
    let mut w = GgufWriter::new();
    header(&mut w, "lora");
    w.add_kv(
        "adapter.base.fingerprint",
        "qwen2:2:128:283:0000000000000000",
    );
    w.write_atomic(&p).unwrap();
    expect_invalid(&m, &p, "another base model");
    // Unknown target, wrong shape, missing half of a pair, wrong dtype, layer out of range.
    type Tensors = Vec<(&'static str, Vec<u64>, GgmlType)>;
    let cases: Vec<(&str, Tensors, &str)> = vec![
        (
            "unknown",
            vec![("blk.0.attn_qkv.weight.lora_a", vec![128, 2], GgmlType::F32)],
            "blk.0.attn_qkv.weight.lora_a",
        ),
        (
            "shape",
            vec![
                ("blk.1.ffn_up.weight.lora_a", vec![100, 2], GgmlType::F32),
                ("blk.1.ffn_up.weight.lora_b", vec![2, 352], GgmlType::F32),
            ],
            "blk.1.ffn_up.weight.lora_a",
        ),
        (
            "half",
            vec![("blk.0.attn_v.weight.lora_a", vec![128, 2], GgmlType::F32)],
            "blk.0.attn_v.weight",
        ),
        (
            "dtype",
            vec![
                ("blk.0.attn_v.weight.lora_a", vec![128, 2], GgmlType::I32),
                ("blk.0.attn_v.weight.lora_b", vec![2, 64], GgmlType::F32),
            ],
            "blk.0.attn_v.weight.lora_a",
        ),
        (
            "layer",
            vec![
                ("blk.9.attn_v.weight.lora_a", vec![128, 2], GgmlType::F32),
                ("blk.9.attn_v.weight.lora_b", vec![2, 64], GgmlType::F32),
            ],
            "layer 9",
        ),
    ];
    for (name, tensors, needle) in cases {
        let p = tmp(&format!("bad-{name}.gguf"));
        let mut w = GgufWriter::new();
        header(&mut w, "lora");
        for (t, dims, ty) in tensors {
            let n: u64 = dims.iter().product();
            let bytes =
                vec![0u8; (n as usize) * ty.type_size() as usize / ty.block_size() as usize];
            w.add_tensor(t, ty, &dims, bytes).unwrap();
        }
        w.write_atomic(&p).unwrap();
        expect_invalid(&m, &p, needle);
    }
    // A model file is not an adapter.
    expect_invalid(
        &m,
        &common::model("qwen2-tiny.gguf").unwrap(),
        "general.type",
    );
    // Truncated adapter: a format error, never a panic.
    let p = tmp("lora-ok.gguf");
    write_lora(&m, &p, 2, 4.0, 9);
    let bytes = std::fs::read(&p).unwrap();
    let t = tmp("lora-trunc.gguf");
    std::fs::write(&t, &bytes[..bytes.len() - 7]).unwrap();
    assert!(matches!(Adapter::load(&m, &t), Err(Error::Format(_))));
    // The fingerprint does not depend on the quantization: an adapter loaded over the F32 file
    // is accepted by a session over the Q8_0 file of the same model (runtime/tests/cli_errors.rs
    // checks that another model of the same shapes is refused).
    let other = Arc::new(Model::load(common::model("qwen2-tiny.Q8_0.gguf").unwrap()).unwrap());
    assert_eq!(other.fingerprint(), m.fingerprint());
    let a = Adapter::load(&m, &p).unwrap();
    let mut s = session(&other);
    s.set_adapters(ActiveAdapters::none().with(a, 1.0)).unwrap();
}

/// A LoPA adapter whose gate saturates and whose Z_S rows are token embeddings acts exactly
/// like those tokens placed before the prompt.
#[test]
fn saturated_lopa_equals_prepending_its_tokens() {
    let Some(m) = tiny() else { return };
    let known = [40u32, 41, 42];
    let d = m.config().n_embd as u64;
    let (mm, r) = (known.len() as u64, 2u64);
    let mut zs = Vec::new();
    for &t in &known {
        zs.extend(m.embedding_row(t).unwrap());
    }
    let mut w = GgufWriter::new();
    header(&mut w, "lopa");
    w.add_kv("adapter.lopa.virtual_tokens", Value::U32(mm as u32));
    w.add_kv("adapter.lopa.rank", Value::U32(r as u32));
    w.add_kv("adapter.lopa.encoder", "mean_embed");
    w.add_tensor_f32("lopa.z_shared", &[d, mm], &zs).unwrap();
    for (p, out) in [("u", mm * r), ("v", d * r)] {
        w.add_tensor_f32(
            format!("lopa.{p}.fc1.weight"),
            &[d, d],
            &vec![0.0; (d * d) as usize],
        )
        .unwrap();
        w.add_tensor_f32(format!("lopa.{p}.fc1.bias"), &[d], &vec![0.0; d as usize])
            .unwrap();
        w.add_tensor_f32(
            format!("lopa.{p}.fc2.weight"),
            &[d, out],
            &vec![0.0; (d * out) as usize],
        )
        .unwrap();
        w.add_tensor_f32(
            format!("lopa.{p}.fc2.bias"),
            &[out],
            &vec![8.0; out as usize],
        )
        .unwrap();
    }
    let p = tmp("lopa-sat.gguf");
    w.write_atomic(&p).unwrap();
    let a = Adapter::load(&m, &p).unwrap();
    let mut s = session(&m);
    s.set_adapters(ActiveAdapters::none().with(a, 1.0)).unwrap();
    let with = s.decode(&PROMPT, LogitsFor::All).unwrap();
    assert_eq!(s.soft_prompt_len(), known.len());
    assert_eq!(s.tokens(), &PROMPT, "soft positions are not prompt text");
    let mut all = known.to_vec();
    all.extend_from_slice(&PROMPT);
    let want = logits(&m, ActiveAdapters::none(), &all);
    let nv = m.config().n_vocab;
    let d = max_diff(&with, &want[known.len() * nv..]);
    assert!(d < 1e-4, "max diff {d}");
}
