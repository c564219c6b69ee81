//! Shared helpers of the integration tests: where the cached models live.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `.cache/models/` (or `GRAFT_MODELS_DIR`).
pub fn models_dir() -> PathBuf {
    std::env::var_os("GRAFT_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/models"))
}

/// The path of a cached model, or a panic that says how to fetch it (unless
/// `GRAFT_SKIP_MODEL_TESTS=1`, in which case `None`).
pub fn model(name: &str) -> Option<PathBuf> {
    let p = models_dir().join(name);
    if p.exists() {
        return Some(p);
    }
    missing(
        &p,
        "run scripts/fetch_model.sh and scripts/make_variants.py / make_qwen2_tiny.py \
         (or set GRAFT_SKIP_MODEL_TESTS=1)",
    )
}

/// `None` for a missing input under `GRAFT_SKIP_MODEL_TESTS=1` (said on stderr), else a panic
/// that says what to run.
fn missing<T>(p: &std::path::Path, fix: &str) -> Option<T> {
    if std::env::var("GRAFT_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
        eprintln!(
            "skipping: {} is missing (GRAFT_SKIP_MODEL_TESTS=1)",
            p.display()
        );
        return None;
    }
    panic!("{} is missing: {fix}", p.display());
}

/// llama.cpp's reference outputs for this machine: `$GRAFT_REFERENCES_DIR`, else
/// `.cache/references` (a link made by `scripts/references.sh`, which computes them with a
/// llama.cpp built for this CPU). Panics, saying what to run, when they are missing or were made
/// on another CPU (`machine.json`'s `cpu` against `scripts/machine_info.sh --cpu`); `None` only
/// with `GRAFT_SKIP_MODEL_TESTS=1`, like [`model`].
pub fn references_dir() -> Option<PathBuf> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("GRAFT_REFERENCES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".cache/references"));
        let machine = dir.join("machine.json");
        let Ok(text) = std::fs::read_to_string(&machine) else {
            return missing(
                &machine,
                "run scripts/references.sh (llama.cpp's outputs on this CPU)",
            );
        };
        let doc: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", machine.display()));
        let made_on = doc["cpu"].as_str().unwrap_or_default();
        let here = this_cpu();
        assert_eq!(
            made_on,
            here,
            "{} holds llama.cpp outputs of another CPU: run scripts/references.sh here",
            dir.display()
        );
        Some(dir)
    })
    .clone()
}

/// `scripts/machine_info.sh --cpu`: the CPU model and ISA flags the references are keyed by.
pub fn this_cpu() -> String {
    let script = repo_root().join("scripts/machine_info.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("--cpu")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `.cache/data/sotu/`.
pub fn sotu_dir() -> PathBuf {
    repo_root().join(".cache/data/sotu")
}

/// Little-endian f32 values of a raw fixture file.
pub fn read_f32(p: &std::path::Path) -> Vec<f32> {
    std::fs::read(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A JSON array of numbers as f64.
pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Hex sha256 of a file.
pub fn sha256(path: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut h).unwrap();
    format!("{:x}", h.finalize())
}

/// Largest element-wise difference.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Continues greedily from `logits` in `s` and compares with the reference tokens `p["greedy"]`:
/// they must be identical until a step where the reference's top-2 margin
/// (`p["greedy_margins"]`) is below `2 * tol` (a near-tie may legitimately flip; after a flip
/// the texts diverge). Returns how many matched.
pub fn check_greedy(
    label: &str,
    s: &mut graft::Session,
    logits: &[f32],
    p: &serde_json::Value,
    tol: f32,
) -> usize {
    use graft::sampler::argmax;
    let greedy = ids(&p["greedy"]);
    let margins = f64s(&p["greedy_margins"]);
    let mut next = argmax(logits);
    let mut matched = 0;
    for (i, &want) in greedy.iter().enumerate() {
        if next != want {
            assert!(
                margins[i] < 2.0 * tol as f64,
                "{label}: greedy token {i} is {next}, reference {want} (margin {})",
                margins[i]
            );
            break;
        }
        matched += 1;
        if i + 1 < greedy.len() {
            next = argmax(&s.decode(&[next], graft::LogitsFor::Last).unwrap());
        }
    }
    eprintln!(
        "{label}: {matched}/{} greedy tokens identical",
        greedy.len()
    );
    matched
}

/// A `Command` for the `graft` binary built with the tests. Under `GRAFT_TEST_RUNNER` (a command
/// prefix such as `qemu-aarch64 -L /usr/aarch64-linux-gnu`, set by scripts/test_aarch64.sh) the
/// binary runs through it: cargo's target runner applies to test binaries, not to what they spawn.
pub fn graft_cmd() -> std::process::Command {
    let bin = env!("CARGO_BIN_EXE_graft");
    match std::env::var("GRAFT_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut words = runner.split_whitespace();
            let mut c = std::process::Command::new(words.next().unwrap());
            c.args(words).arg(bin);
            c
        }
        _ => std::process::Command::new(bin),
    }
}

/// Whether backend `name` has a device; a panic when `GRAFT_REQUIRE_DEVICE` names it and it has
/// none (scripts/test.sh sets it, after installing Mesa's lavapipe and building ggml's backends).
fn has_device(name: &str) -> bool {
    let devices = graft::devices();
    let present = devices.iter().any(|d| d.backend == name);
    if !present {
        let required = std::env::var("GRAFT_REQUIRE_DEVICE")
            .is_ok_and(|v| v.split(',').any(|b| b.trim() == name));
        assert!(
            !required,
            "GRAFT_REQUIRE_DEVICE names {name}, but there is no {name} device: {devices:?}"
        );
    }
    present
}

/// Whether a wgpu device is present; a panic when `GRAFT_REQUIRE_DEVICE` names wgpu and there is none.
pub fn have_wgpu() -> bool {
    let present = has_device("wgpu");
    if !present {
        eprintln!("skipping: no wgpu device on this machine");
    }
    present
}

/// The device backends the whole-model device tests run on: graft's wgpu when it has a device,
/// and ggml's Vulkan, CUDA and Metal backends (loaded at run time from `GRAFT_BACKEND_DIR`)
/// when they have a hardware GPU, or a software renderer and `GRAFT_TEST_SOFTWARE_GGML=1`.
/// On Mesa 22.3's lavapipe ggml-vulkan runs whole models right but now and then crashes inside
/// lavapipe (README, "wgpu and ggml's Vulkan backend on lavapipe"), so CI runs it through the op
/// conformance suite only. A panic when `GRAFT_REQUIRE_DEVICE` names one that has no device.
pub fn device_backends() -> Vec<graft::BackendChoice> {
    use graft::BackendChoice as B;
    let software_too = std::env::var("GRAFT_TEST_SOFTWARE_GGML").is_ok_and(|v| v == "1");
    let mut present = Vec::new();
    for b in [B::Wgpu, B::Vulkan, B::Cuda, B::Metal] {
        if !has_device(b.as_str()) {
            continue;
        }
        let hardware = || {
            graft::devices()
                .iter()
                .any(|d| d.backend == b.as_str() && d.is_hardware_gpu())
        };
        if b == B::Wgpu || software_too || hardware() {
            present.push(b);
        } else {
            eprintln!("skipping {b}: a software renderer (GRAFT_TEST_SOFTWARE_GGML=1 runs it)");
        }
    }
    if present.is_empty() {
        eprintln!("skipping: no device backend on this machine");
    }
    present
}

/// A test adapter of `.cache/adapters/` (made by scripts/setup_test_data.sh) loaded for `m`.
pub fn test_adapter(m: &graft::Model, name: &str) -> std::sync::Arc<graft::Adapter> {
    let p = repo_root().join(".cache/adapters").join(name);
    graft::Adapter::load(m, &p).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Session options for the device tests: a 256-position context on `backend`.
pub fn device_session(backend: graft::BackendChoice) -> graft::SessionConfig {
    graft::SessionConfig {
        n_ctx: 256,
        backend,
        ..Default::default()
    }
}
