//! Bad models and bad requests give typed errors that name the problem, never a panic.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use graft::{Error, LogitsFor, Model, Session, SessionConfig};
use graft_formats::{FormatError, Gguf, GgufWriter, Value};

fn tiny() -> Option<PathBuf> {
    common::model("qwen2-tiny.gguf")
}

/// Writes a copy of `src` without the tensors `drop_tensor` selects, with metadata edited by
/// `edit`, and with tensor `reshape.0` given dims `reshape.1` (data truncated to fit).
fn rewrite(
    src: &Path,
    dst: &Path,
    drop_tensor: impl Fn(&str) -> bool,
    edit: impl Fn(&mut GgufWriter<'_>),
) {
    let g = Gguf::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.add_kv(k.clone(), v.clone());
    }
    for t in g.tensors() {
        if !drop_tensor(&t.name) {
            w.add_tensor(t.name.clone(), t.dtype, &t.dims, g.tensor_data(t))
                .unwrap();
        }
    }
    edit(&mut w);
    w.write_atomic(dst).unwrap();
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("graft-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn truncated_model_is_a_format_error() {
    let Some(src) = tiny() else { return };
    let bytes = std::fs::read(&src).unwrap();
    for cut in [3, 20, 1000, bytes.len() / 2, bytes.len() - 1] {
        let p = tmp(&format!("trunc-{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        match Model::load(&p) {
            Err(Error::Format(e)) => {
                let msg = e.to_string();
                assert!(!msg.is_empty(), "cut {cut}");
            }
            Err(e) => panic!("cut {cut}: unexpected error kind {e}"),
            Ok(_) => panic!("cut {cut}: truncated model loaded"),
        }
    }
}

#[test]
fn unsupported_architecture_is_named() {
    let Some(src) = tiny() else { return };
    let p = tmp("arch.gguf");
    rewrite(
        &src,
        &p,
        |_| false,
        |w| {
            w.add_kv("general.architecture", "mamba");
        },
    );
    let e = Model::load(&p).err().expect("must fail");
    assert!(
        matches!(&e, Error::UnsupportedArchitecture(a) if a == "mamba"),
        "{e}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let Some(src) = tiny() else { return };
    let p = tmp("missing.gguf");
    rewrite(&src, &p, |n| n == "blk.1.ffn_down.weight", |_| {});
    let e = Model::load(&p).err().expect("must fail");
    assert!(e.to_string().contains("blk.1.ffn_down.weight"), "{e}");
}

#[test]
fn wrong_shape_is_named() {
    let Some(src) = tiny() else { return };
    let g = Gguf::open(&src).unwrap();
    let t = g.tensor("blk.0.attn_norm.weight").unwrap().clone();
    let p = tmp("shape.gguf");
    let data = g.tensor_data(&t)[..(t.n_bytes / 2) as usize].to_vec();
    rewrite(
        &src,
        &p,
        |n| n == t.name,
        |w| {
            w.add_tensor(t.name.clone(), t.dtype, &[t.dims[0] / 2], data.clone())
                .unwrap();
        },
    );
    let e = Model::load(&p).err().expect("must fail");
    assert!(
        matches!(&e, Error::ShapeMismatch { tensor, .. } if tensor == "blk.0.attn_norm.weight"),
        "{e}"
    );
}

#[test]
fn absurd_hyperparameters_are_refused() {
    let Some(src) = tiny() else { return };
    for (key, val) in [
        ("qwen2.attention.head_count", Value::U32(0)),
        ("qwen2.attention.head_count_kv", Value::U32(3)),
        ("qwen2.embedding_length", Value::String("big".into())),
        ("qwen2.rope.scaling.type", Value::String("longrope".into())),
    ] {
        let p = tmp("hp.gguf");
        rewrite(
            &src,
            &p,
            |_| false,
            |w| {
                w.add_kv(key, val.clone());
            },
        );
        let e = Model::load(&p)
            .err()
            .unwrap_or_else(|| panic!("{key}: must fail"));
        let msg = e.to_string();
        assert!(
            msg.contains(key.rsplit('.').next().unwrap()) || matches!(e, Error::InvalidHparams(_)),
            "{key}: {msg}"
        );
    }
}

#[test]
fn missing_file_names_the_path() {
    let e = Model::load("/nonexistent/model.gguf").err().unwrap();
    assert!(e.to_string().contains("/nonexistent/model.gguf"), "{e}");
    assert!(
        matches!(&e, Error::Format(f) if matches!(f.root(), FormatError::Io { .. })),
        "{e}"
    );
}

#[test]
fn bad_requests_are_errors() {
    let Some(src) = tiny() else { return };
    let model = Arc::new(Model::load(&src).unwrap());
    let n_vocab = model.config().n_vocab as u32;
    let mut s = Session::new(
        model,
        SessionConfig {
            n_ctx: 8,
            n_threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(
        s.decode(&[], LogitsFor::Last),
        Err(Error::InvalidRequest(_))
    ));
    let e = s.decode(&[n_vocab], LogitsFor::Last).unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    s.decode(&[1, 2, 3, 4, 5, 6], LogitsFor::Last).unwrap();
    let e = s.decode(&[1, 2, 3], LogitsFor::Last).unwrap_err();
    assert!(e.to_string().contains("context full"), "{e}");
    // The failed request changed nothing: the two free positions still work.
    assert_eq!(s.tokens().len(), 6);
    s.decode(&[7, 8], LogitsFor::Last).unwrap();
}

fn graft(args: &[&str]) -> (i32, String) {
    let out = common::graft_cmd().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_rejects_bad_arguments_with_a_message() {
    let (code, err) = graft(&["generate", "--model", "/nonexistent.gguf", "--prompt", "hi"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent.gguf"), "{err}");
    let (code, err) = graft(&[
        "generate",
        "--model",
        "x.gguf",
        "--prompt",
        "hi",
        "--temperature=-1",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("temperature"), "{err}");
    let (code, err) = graft(&[
        "generate",
        "--model",
        "x.gguf",
        "--prompt",
        "hi",
        "--max-tokens",
        "many",
    ]);
    assert_eq!(code, 2, "clap usage error");
    assert!(err.contains("max-tokens"), "{err}");
    let (code, err) = graft(&[
        "perplexity",
        "--model",
        "x.gguf",
        "--file",
        "/nonexistent.txt",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent.txt"), "{err}");
    let (code, err) = graft(&["inspect", "/nonexistent.gguf"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent.gguf"), "{err}");
}

#[test]
fn cli_inspect_and_generate_on_a_real_file() {
    let Some(src) = tiny() else { return };
    let out = common::graft_cmd()
        .args(["inspect", "--json"])
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["architecture"], "qwen2");
    assert_eq!(v["block_count"], 2);
    let out = common::graft_cmd()
        .args([
            "generate",
            "--temperature",
            "0",
            "--max-tokens",
            "5",
            "--ignore-eos",
            "--json",
            "--prompt",
            "ab",
            "--model",
        ])
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 5);
    for k in ["load_ms", "prefill_tokens_per_s", "decode_tokens_per_s"] {
        assert!(v["timings"][k].as_f64().unwrap() >= 0.0, "{k}");
    }
}

#[test]
fn cli_chat_swaps_adapters_between_turns() {
    use std::io::Write;
    let Some(src) = tiny() else { return };
    // A LoRA for the tiny model, made from scratch.
    let g = Gguf::open(&src).unwrap();
    let q = g.tensor("blk.0.attn_q.weight").unwrap();
    let (n_in, n_out) = (q.dims[0], q.dims[1]);
    let mut w = GgufWriter::new();
    w.add_kv("general.type", "adapter");
    w.add_kv("general.architecture", "qwen2");
    w.add_kv("adapter.type", "lora");
    w.add_kv("adapter.lora.alpha", Value::F32(4.0));
    w.add_tensor_f32(
        "blk.0.attn_q.weight.lora_a",
        &[n_in, 2],
        &vec![0.01; (n_in * 2) as usize],
    )
    .unwrap();
    w.add_tensor_f32(
        "blk.0.attn_q.weight.lora_b",
        &[2, n_out],
        &vec![0.02; (2 * n_out) as usize],
    )
    .unwrap();
    let lora = tmp("chat-lora.gguf");
    w.write_atomic(&lora).unwrap();
    let mut child = common::graft_cmd()
        .args([
            "chat",
            "--temperature",
            "0",
            "--max-tokens",
            "4",
            "--threads",
            "1",
            "--model",
        ])
        .arg(&src)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!(
        "hello\n/adapter load {} style\n/adapter use style 0.5\n/adapter list\nhello again\n/adapter scale style 1\n/adapter off\n/adapter use nope\nbye\n/quit\n",
        lora.display()
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("[loaded style: lora"), "{err}");
    assert!(
        err.contains("switch") && err.contains("will be recomputed"),
        "{err}"
    );
    assert!(
        err.contains("* style"),
        "list marks the active adapter: {err}"
    );
    assert!(err.contains("no adapter named \"nope\""), "{err}");
    assert_eq!(err.matches("tok/s").count(), 3, "three replies: {err}");
}

/// Training options that do not fit the method are refused with a message naming them.
#[test]
fn cli_train_rejects_options_that_do_not_fit_the_method() {
    let Some(model) = tiny() else { return };
    let data = tmp("train-data.txt");
    std::fs::write(
        &data,
        "some training text, long enough for a few tokens.\n".repeat(20),
    )
    .unwrap();
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let out = tmp("train-out.gguf");
    let o = out.to_str().unwrap();
    for (extra, expect) in [
        (&["--method", "lopa", "--blocks", "3"][..], "--blocks"),
        (
            &["--method", "lora", "--virtual-tokens", "4"][..],
            "--virtual-tokens",
        ),
        (&["--method", "lora", "--galore-rank", "2"][..], "GaLore"),
        (&["--method", "wegeft", "--dropout", "0.1"][..], "dropout"),
        (&["--method", "lora", "--dropout", "1.5"][..], "dropout"),
        (
            &[
                "--method",
                "diablo",
                "--blocks",
                "3",
                "--galore-rank",
                "500",
            ][..],
            "GaLore rank",
        ),
        (&["--method", "prefix"][..], "unknown method"),
    ] {
        let args = [
            &[
                "train", "--model", m, "--data", d, "--out", o, "--ctx", "16", "--steps", "1",
            ][..],
            extra,
        ]
        .concat();
        let (code, err) = graft(&args);
        // 2: a value out of its range, refused by the argument parser; 1: refused after.
        assert!(code == 1 || code == 2, "{extra:?}: {err}");
        assert!(err.contains(expect), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?}: no adapter is written");
    }
}
