//! What a new user trips over, through the `graft` binary: one clear error line per mistake,
//! adapters across quantizations of one base, resume semantics, shipping a stripped adapter,
//! progress in a pipe, chat adapter naming, `inspect` and `export-peft` output.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use graft_formats::{Gguf, GgufWriter, Value};

fn tiny(name: &str) -> Option<PathBuf> {
    common::model(name)
}

/// The tiny model and a fresh folder for test `test`.
fn fixture(test: &str) -> Option<(PathBuf, PathBuf)> {
    Some((tiny("qwen2-tiny.gguf")?, dir(test)))
}

/// An adapter `name` in `d`, trained `steps` steps of `method` over `m`.
fn trained(m: &Path, d: &Path, name: &str, method: &str, steps: &str) -> PathBuf {
    let a = d.join(name);
    let o = train(m, &data(d), &a, method, steps);
    assert!(o.status.success(), "{}", stderr(&o));
    a
}

/// A fresh folder for one test.
fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("graft-cli-errors-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> Output {
    common::graft_cmd().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The failure contract: non-zero exit, exactly one `error:` line that contains `names`, no
/// panic, and no cause repeated (no `: `-separated part of the message appears twice).
fn assert_one_error(o: &Output, names: &str) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "expected a failure: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    let line = lines[0];
    assert!(line.contains(names), "the error names {names:?}: {err}");
    let parts: Vec<&str> = line["error: ".len()..].split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(p),
            "{p:?} is said twice in {line:?}"
        );
    }
    // Nothing but the error (and clap's usage hint) on stderr: no ggml log lines.
    for l in err.lines() {
        assert!(
            l.starts_with("error:") || l.is_empty() || l.starts_with("For more information"),
            "unexpected stderr line {l:?} in {err}"
        );
    }
    line.to_string()
}

/// Plain-text training data for the tiny model.
fn data(d: &Path) -> PathBuf {
    let p = d.join("data.txt");
    std::fs::write(
        &p,
        "the cat sat on the mat and the dog ran in the park. ".repeat(20),
    )
    .unwrap();
    p
}

/// Trains `steps` steps of `method` over `model` into `out` (JSON mode).
fn train(model: &Path, data: &Path, out: &Path, method: &str, steps: &str) -> Output {
    run(&[
        "train",
        "--model",
        s(model),
        "--data",
        s(data),
        "--out",
        s(out),
        "--method",
        method,
        "--steps",
        steps,
        "--ctx",
        "16",
        "--rank",
        "2",
        "--blocks",
        "4",
        "--threads",
        "1",
        "--json",
    ]
    .into_iter()
    .filter(|a| method == "diablo" || (*a != "--blocks" && *a != "4"))
    .collect::<Vec<_>>())
}

#[test]
fn file_errors_say_each_fact_once() {
    let Some((m, d)) = fixture("files") else {
        return;
    };
    let e = assert_one_error(
        &run(&[
            "generate",
            "--model",
            "/nonexistent/model.gguf",
            "--prompt",
            "hi",
        ]),
        "/nonexistent/model.gguf",
    );
    assert!(e.ends_with("No such file or directory"), "{e}");
    assert_eq!(e.matches("/nonexistent/model.gguf").count(), 1, "{e}");
    let e = assert_one_error(
        &run(&["generate", "--model", s(&d), "--prompt", "hi"]),
        s(&d),
    );
    assert!(e.contains("is a directory"), "{e}");
    let text = d.join("notes.txt");
    std::fs::write(&text, "just some text, not a model").unwrap();
    let e = assert_one_error(
        &run(&["generate", "--model", s(&text), "--prompt", "hi"]),
        "notes.txt",
    );
    assert!(e.contains("not a GGUF file"), "{e}");
    // Cut in the metadata and cut in the tensor data: both say the file is truncated.
    let bytes = std::fs::read(&m).unwrap();
    for (cut, says) in [
        (2000, "the file is truncated"),
        (bytes.len() - 100, "needs"),
    ] {
        let t = d.join(format!("cut-{cut}.gguf"));
        std::fs::write(&t, &bytes[..cut]).unwrap();
        let e = assert_one_error(
            &run(&["generate", "--model", s(&t), "--prompt", "hi"]),
            s(&t),
        );
        assert!(
            e.contains("the file is truncated") && e.contains(says),
            "{e}"
        );
    }
    let e = assert_one_error(
        &run(&[
            "generate",
            "--model",
            s(&m),
            "--prompt",
            "hi",
            "--adapter",
            "/nonexistent/a.gguf",
        ]),
        "/nonexistent/a.gguf",
    );
    assert!(e.contains("loading adapter"), "{e}");
}

#[test]
fn the_wrong_kind_of_file_is_named() {
    let Some((m, d)) = fixture("kinds") else {
        return;
    };
    let a = trained(&m, &d, "a.gguf", "lora", "1");
    let e = assert_one_error(
        &run(&["generate", "--model", s(&a), "--prompt", "hi"]),
        s(&a),
    );
    assert!(
        e.contains("the file is a lora adapter, not a base model"),
        "{e}"
    );
    let out = d.join("b.gguf");
    let e = assert_one_error(
        &run(&[
            "train",
            "--model",
            s(&m),
            "--data",
            s(&data(&d)),
            "--out",
            s(&out),
            "--resume",
            s(&m),
        ]),
        s(&m),
    );
    assert!(e.contains("is a base model (qwen2), not an adapter"), "{e}");
    assert!(!out.exists());
    let e = assert_one_error(
        &run(&[
            "generate",
            "--model",
            s(&m),
            "--prompt",
            "hi",
            "--adapter",
            s(&m),
        ]),
        s(&m),
    );
    assert!(e.contains("not \"adapter\""), "{e}");
}

#[test]
fn numeric_options_are_range_checked_and_negative_values_parse() {
    let Some(m) = tiny("qwen2-tiny.gguf") else {
        return;
    };
    let g = |extra: &[&str]| {
        let mut a = vec!["generate", "--model", s(&m), "--prompt", "hi"];
        a.extend_from_slice(extra);
        run(&a)
    };
    for (args, option, says) in [
        (&["--temperature", "-1"][..], "--temperature", ">= 0"),
        (&["--top-k", "-1"][..], "--top-k", "whole number >= 0"),
        (&["--repeat-penalty=-1"][..], "--repeat-penalty", "> 0"),
        (&["--top-p", "1.5"][..], "--top-p", "within [0, 1]"),
        (&["--threads", "0"][..], "--threads", ">= 1"),
        (&["--ctx", "-5"][..], "--ctx", ">= 2"),
        (&["--seed", "-1"][..], "--seed", ">= 0"),
        (
            &["--max-tokens", "many"][..],
            "--max-tokens",
            "whole number",
        ),
        (&["--temperature", "nan"][..], "--temperature", ">= 0"),
    ] {
        let o = g(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: usage error");
        let e = assert_one_error(&o, option);
        assert!(e.contains(says), "{args:?}: {e}");
    }
    let d = dir("numbers");
    let out = d.join("a.gguf");
    for (opt, v) in [
        ("--lr", "-1"),
        ("--dropout", "1"),
        ("--steps", "0"),
        ("--rank", "-2"),
    ] {
        let o = run(&[
            "train",
            "--model",
            s(&m),
            "--data",
            s(&data(&d)),
            "--out",
            s(&out),
            opt,
            v,
        ]);
        assert_one_error(&o, opt);
        assert!(!out.exists());
    }
}

#[test]
fn a_context_too_large_for_memory_is_one_clear_error() {
    let Some(m) = tiny("qwen2-tiny.gguf") else {
        return;
    };
    let o = run(&[
        "generate",
        "--model",
        s(&m),
        "--prompt",
        "hi",
        "--ctx",
        "100000000000",
    ]);
    let e = assert_one_error(&o, "100000000000");
    assert!(e.contains("KV cache"), "{e}");
}

/// Writes a copy of `src` with every 1-D tensor (norms, biases) scaled: the same shapes and
/// vocabulary, other weights.
fn other_weights(src: &Path, dst: &Path) {
    let g = Gguf::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.add_kv(k.clone(), v.clone());
    }
    let mut scaled = Vec::new();
    for t in g.tensors() {
        if t.dims.len() == 1 && t.dtype.name() == "f32" {
            let v: Vec<f32> = g
                .tensor_data(t)
                .chunks_exact(4)
                .map(|b| 1.5 * f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            scaled.push((t.name.clone(), t.dims.clone(), v));
        } else {
            w.add_tensor(t.name.clone(), t.dtype, &t.dims, g.tensor_data(t))
                .unwrap();
        }
    }
    for (name, dims, v) in &scaled {
        w.add_tensor_f32(name.clone(), dims, v).unwrap();
    }
    w.write_atomic(dst).unwrap();
}

#[test]
fn an_adapter_loads_on_every_quantization_of_its_base_and_not_on_another_model() {
    let Some(q4) = tiny("qwen2-tiny.Q4_1.gguf") else {
        return;
    };
    let d = dir("quant");
    let a = d.join("pirate.gguf");
    let o = train(&q4, &data(&d), &a, "lora", "2");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        Gguf::open(&a)
            .unwrap()
            .get_str("adapter.base.quantization")
            .unwrap(),
        "q4_1"
    );
    for (file, note) in [
        ("qwen2-tiny.Q4_1.gguf", false),
        ("qwen2-tiny.Q8_0.gguf", true),
        ("qwen2-tiny.F16.gguf", true),
        ("qwen2-tiny.gguf", true),
    ] {
        let base = tiny(file).unwrap();
        let o = run(&[
            "generate",
            "--model",
            s(&base),
            "--adapter",
            s(&a),
            "--prompt",
            "the cat",
            "--max-tokens",
            "3",
            "--temperature",
            "0",
            "--threads",
            "1",
        ]);
        let err = stderr(&o);
        assert!(o.status.success(), "{file}: {err}");
        assert_eq!(
            err.contains("note: adapter pirate was made over the q4_1 file of this model"),
            note,
            "{file}: {err}"
        );
    }
    let other = d.join("other.gguf");
    other_weights(&tiny("qwen2-tiny.gguf").unwrap(), &other);
    let e = assert_one_error(
        &run(&[
            "generate",
            "--model",
            s(&other),
            "--adapter",
            s(&a),
            "--prompt",
            "hi",
        ]),
        s(&a),
    );
    assert!(
        e.contains("made for another base model") && e.contains("other weights"),
        "{e}"
    );
}

#[test]
fn resume_takes_the_method_from_the_adapter_and_says_when_there_is_nothing_to_do() {
    let Some((m, d)) = fixture("resume") else {
        return;
    };
    let data = data(&d);
    let a = d.join("robot.gguf");
    assert!(train(&m, &data, &a, "diablo", "2").status.success());
    let before = std::fs::read(&a).unwrap();
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "--model",
            s(&m),
            "--data",
            s(&data),
            "--out",
            s(&a),
            "--resume",
            s(&a),
            "--ctx",
            "16",
            "--threads",
            "1",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let run_s = |v: Vec<String>| run(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let e = assert_one_error(
        &run_s(args(&["--method", "lora", "--steps", "4"])),
        "--method lora",
    );
    assert!(e.contains("a diablo adapter"), "{e}");
    let e = assert_one_error(&run_s(args(&["--steps", "2"])), "nothing to do");
    assert!(e.contains("has done 2 steps"), "{e}");
    assert_eq!(std::fs::read(&a).unwrap(), before, "--out is not rewritten");
    // Without --method, more steps: the adapter's own method is trained and named.
    let o = run_s(args(&["--steps", "3"]));
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("diablo parameters") && err.contains("resuming after step 2"),
        "{err}"
    );
    assert_eq!(Gguf::open(&a).unwrap().get_u64("train.step").unwrap(), 3);
}

#[test]
fn out_is_checked_before_training_starts() {
    let Some((m, d)) = fixture("out") else {
        return;
    };
    let missing = d.join("no/such/folder/a.gguf");
    let t = std::time::Instant::now();
    let e = assert_one_error(
        &run(&[
            "train",
            "--model",
            s(&m),
            "--data",
            s(&data(&d)),
            "--out",
            s(&missing),
            "--steps",
            "1000",
        ]),
        "--out",
    );
    assert!(e.contains("does not exist"), "{e}");
    assert!(t.elapsed().as_secs() < 30, "refused before training");
    let e = assert_one_error(
        &run(&[
            "train",
            "--model",
            s(&m),
            "--data",
            s(&data(&d)),
            "--out",
            s(&d),
        ]),
        "--out",
    );
    assert!(e.contains("is a folder"), "{e}");
}

#[test]
fn strip_gives_the_small_file_and_inspect_tells_parameters_from_train_state() {
    let Some((m, d)) = fixture("strip") else {
        return;
    };
    let a = trained(&m, &d, "a.gguf", "lora", "2");
    let b = d.join("a.small.gguf");
    let o = run(&["strip", s(&a), "-o", s(&b)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (la, lb) = (
        std::fs::metadata(&a).unwrap().len(),
        std::fs::metadata(&b).unwrap().len(),
    );
    assert!(lb * 2 < la, "stripped {lb} bytes vs {la}");
    let inspect = |p: &Path| -> serde_json::Value {
        let o = run(&["inspect", "--json", s(p)]);
        assert!(o.status.success());
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (ia, ib) = (inspect(&a), inspect(&b));
    assert!(ia["train_state_parameters"].as_u64().unwrap() > 0);
    assert_eq!(ib["train_state_parameters"], 0);
    assert_eq!(ia["trained_parameters"], ib["trained_parameters"]);
    assert_eq!(ib["parameters"], ib["trained_parameters"]);
    // The stripped adapter gives the same greedy text.
    let gen = |p: &Path| {
        let o = run(&[
            "generate",
            "--model",
            s(&m),
            "--adapter",
            s(p),
            "--prompt",
            "the cat",
            "--max-tokens",
            "4",
            "--temperature",
            "0",
            "--threads",
            "1",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        o.stdout
    };
    assert_eq!(gen(&a), gen(&b));
    let text = String::from_utf8(run(&["inspect", s(&a)]).stdout).unwrap();
    assert!(
        text.contains("M trained parameters") && text.contains("graft strip"),
        "{text}"
    );
    // A model is not an adapter to strip; nothing is written.
    let c = d.join("c.gguf");
    let e = assert_one_error(&run(&["strip", s(&m), "-o", s(&c)]), s(&m));
    assert!(e.contains("not an adapter"), "{e}");
    assert!(!c.exists());
}

#[test]
fn progress_in_a_pipe_is_one_line_per_update() {
    let Some((m, d)) = fixture("progress") else {
        return;
    };
    let a = d.join("a.gguf");
    let o = run(&[
        "train",
        "--model",
        s(&m),
        "--data",
        s(&data(&d)),
        "--out",
        s(&a),
        "--steps",
        "3",
        "--ctx",
        "16",
        "--rank",
        "2",
        "--threads",
        "1",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    for k in 1..=3 {
        assert!(err.contains(&format!("step {k}/3 loss")), "{err}");
    }
    // The summary is the command's result: on stdout, as JSON.
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["steps"], 3);
    let o = run(&[
        "perplexity",
        "--model",
        s(&m),
        "--file",
        s(&data(&d)),
        "--ctx",
        "16",
        "--max-tokens",
        "64",
        "--threads",
        "1",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("window 1/") && err.contains("\nwindow 2/"),
        "{err:?}"
    );
    assert!(!err.contains('\r'), "{err:?}");
}

#[test]
fn chat_names_adapters_by_file_stem_and_use_switches() {
    use std::io::Write;
    let Some((m, d)) = fixture("chat") else {
        return;
    };
    let (pirate, robot) = (d.join("pirate.gguf"), d.join("robot.gguf"));
    assert!(train(&m, &data(&d), &pirate, "lora", "1").status.success());
    assert!(train(&m, &data(&d), &robot, "diablo", "1").status.success());
    let mut child = common::graft_cmd()
        .args([
            "chat",
            "--model",
            s(&m),
            "--adapter",
            s(&pirate),
            "--temperature",
            "0",
            "--max-tokens",
            "3",
            "--threads",
            "1",
            "--ctx",
            "512",
        ])
        .arg("--adapter-scaled")
        .arg(&robot)
        .arg("0.5")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\n/adapter use robot\nagain\n/adapter add pirate 0.25\n/quit\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("[active: pirate x1.0, robot x0.5]"), "{err}");
    assert!(err.contains("[active: robot x1.0;"), "use switches: {err}");
    assert!(
        err.contains("[active: robot x1.0, pirate x0.25;"),
        "add stacks: {err}"
    );
    assert!(
        err.contains("cached prompt tokens recomputed for the new adapters"),
        "{err}"
    );
    assert!(
        !err.contains("#0") && !err.contains("ActiveAdapters"),
        "{err}"
    );
}

#[test]
fn generate_says_when_the_context_is_full() {
    let Some(m) = tiny("qwen2-tiny.gguf") else {
        return;
    };
    let o = run(&[
        "generate",
        "--model",
        s(&m),
        "--prompt",
        "the cat sat",
        "--ctx",
        "8",
        "--max-tokens",
        "50",
        "--ignore-eos",
        "--temperature",
        "0",
        "--threads",
        "1",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("stopped: the context is full (--ctx 8)"),
        "{err}"
    );
}

#[test]
fn inspect_aligns_its_columns_and_gives_json_numbers() {
    let Some(m) = tiny("qwen2-tiny.gguf") else {
        return;
    };
    let o = run(&["inspect", s(&m)]);
    let text = String::from_utf8(o.stdout).unwrap();
    let columns: Vec<usize> = text
        .lines()
        .filter(|l| !l.starts_with(' '))
        .map(|l| {
            let colon = l.find(':').unwrap();
            colon + 1 + l[colon + 1..].len() - l[colon + 1..].trim_start().len()
        })
        .collect();
    assert!(
        columns.len() > 8 && columns.iter().all(|&c| c == columns[0]),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&run(&["inspect", "--json", s(&m)]).stdout).unwrap();
    for k in [
        "block_count",
        "embedding_length",
        "head_count",
        "head_count_kv",
        "context_length",
    ] {
        assert!(v[k].is_u64(), "{k}: {}", v[k]);
    }
    assert!(v["trained_parameters"].is_null());
}

#[test]
fn export_peft_names_the_hugging_face_base() {
    let Some((m, d)) = fixture("peft") else {
        return;
    };
    let a = trained(&m, &d, "a.gguf", "lora", "1");
    let config = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap()
    };
    // No id in the file: general.name, and a note that says what to pass.
    let out = d.join("p1");
    let o = run(&[
        "export-peft",
        "--model",
        s(&m),
        "--adapter",
        s(&a),
        "-o",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("--base-model"), "{}", stderr(&o));
    assert_eq!(config(&out)["base_model_name_or_path"], "qwen2-tiny");
    let out = d.join("p2");
    let o = run(&[
        "export-peft",
        "--model",
        s(&m),
        "--adapter",
        s(&a),
        "-o",
        s(&out),
        "--base-model",
        "Org/Tiny",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(config(&out)["base_model_name_or_path"], "Org/Tiny");
    // An id in the GGUF (a copy of the model with the key set; same fingerprint).
    let with_id = d.join("tiny-with-id.gguf");
    let g = Gguf::open(&m).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.add_kv(k.clone(), v.clone());
    }
    w.add_kv(
        "general.source.url",
        Value::String("https://huggingface.co/Qwen/Tiny-Test".into()),
    );
    for t in g.tensors() {
        w.add_tensor(t.name.clone(), t.dtype, &t.dims, g.tensor_data(t))
            .unwrap();
    }
    w.write_atomic(&with_id).unwrap();
    let out = d.join("p3");
    let o = run(&[
        "export-peft",
        "--model",
        s(&with_id),
        "--adapter",
        s(&a),
        "-o",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("note:"), "{}", stderr(&o));
    assert_eq!(config(&out)["base_model_name_or_path"], "Qwen/Tiny-Test");
}

/// Bad inputs across the commands: each is one error line naming the file or option, no
/// panic, no repeated cause, nothing written.
#[test]
fn bad_input_sweep() {
    let Some((m, d)) = fixture("sweep") else {
        return;
    };
    let data = data(&d);
    let out = d.join("out.gguf");
    let bad_json = d.join("bad.jsonl");
    std::fs::write(&bad_json, "{\"text\": \"ok\"}\n{not json\n").unwrap();
    let empty = d.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let (m, data, o, bj, e) = (s(&m), s(&data), s(&out), s(&bad_json), s(&empty));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["generate", "--model", e, "--prompt", "x"], e),
        (
            vec!["perplexity", "--model", m, "--file", "/nonexistent.txt"],
            "/nonexistent.txt",
        ),
        (
            vec![
                "perplexity",
                "--model",
                m,
                "--file",
                data,
                "--prompt-tokens",
                "0",
            ],
            "--prompt-tokens",
        ),
        (vec!["inspect", e], e),
        (
            vec![
                "train",
                "--model",
                m,
                "--data",
                "/nonexistent.txt",
                "--out",
                o,
            ],
            "/nonexistent.txt",
        ),
        (
            vec!["train", "--model", m, "--data", bj, "--out", o, "--strict"],
            "bad.jsonl:2",
        ),
        (
            vec![
                "train", "--model", m, "--data", data, "--out", o, "--method", "prefix",
            ],
            "prefix",
        ),
        (
            vec![
                "train",
                "--model",
                m,
                "--data",
                data,
                "--out",
                o,
                "--targets",
                "q,zz",
            ],
            "--targets",
        ),
        (vec!["train", "--model", e, "--data", data, "--out", o], e),
        (
            vec!["strip", "/nonexistent.gguf", "-o", o],
            "/nonexistent.gguf",
        ),
        (
            vec!["merge", "--model", m, "-o", o, "--type", "q99"],
            "--type",
        ),
        (
            vec!["export-peft", "--model", m, "--adapter", e, "-o", o],
            e,
        ),
        (
            vec![
                "generate",
                "--model",
                m,
                "--prompt",
                "x",
                "--adapter-scaled",
                e,
                "big",
            ],
            "--adapter-scaled",
        ),
        (vec!["bench", "--model", m, "--reps", "0"], "--reps"),
        (vec!["chat", "--model", m, "--ctx", "1"], "--ctx"),
    ];
    for (args, names) in cases {
        let r = run(&args);
        assert_one_error(&r, names);
        assert!(!out.exists(), "{args:?} wrote {o}");
    }
}

/// `graft devices` lists the CPU with its memory (text and JSON); a backend this build lacks
/// is one clear error naming what is available, on every command that takes `--backend`, and
/// `generate --json` says where its graphs ran.
#[test]
fn devices_and_backend_choice() {
    let Some((m, d)) = fixture("backends") else {
        return;
    };
    let o = run(&["devices", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cpu = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["type"] == "cpu")
        .expect("a CPU device");
    assert_eq!(cpu["backend"], "cpu");
    assert!(cpu["memory_total"].as_u64().unwrap() > 0);
    assert!(v["usable_backends"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("cpu")));
    let o = run(&["devices"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("CPU"));

    let data = data(&d);
    let out = d.join("x.gguf");
    for args in [
        vec!["generate", "--model", s(&m), "--prompt", "hi"],
        vec!["perplexity", "--model", s(&m), "--file", s(&data)],
        vec!["bench", "--model", s(&m), "--pp", "4", "--tg", "2"],
        vec![
            "train",
            "--model",
            s(&m),
            "--data",
            s(&data),
            "--out",
            s(&out),
        ],
    ] {
        let mut a = args.clone();
        a.extend(["--backend", "vulkan"]);
        // No backend library in reach (scripts/test.sh builds ggml's Vulkan backend for others).
        let o = common::graft_cmd()
            .args(&a)
            .env("GRAFT_BACKEND_DIR", &d)
            .output()
            .unwrap();
        let err = assert_one_error(&o, "the vulkan backend is not available");
        assert!(err.contains("available: cpu"), "{err}");
        // Where graft looked for ggml's Vulkan library, and how to make one.
        assert!(
            err.contains(&graft_ggml_module("vulkan")) && err.contains("GRAFT_BACKEND_DIR"),
            "{err}"
        );
        assert!(!out.exists(), "nothing written on a failed start");
    }
    let o = run(&[
        "generate",
        "--model",
        s(&m),
        "--prompt",
        "hi",
        "--backend",
        "tpu",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("unknown backend 'tpu'"));

    let o = run(&[
        "generate",
        "--model",
        s(&m),
        "--prompt",
        "hi",
        "--max-tokens",
        "3",
        "--temperature",
        "0",
        "--json",
        "--backend",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let b = &v["backend"];
    assert_eq!(b["name"], "cpu");
    let total = b["nodes_total"].as_u64().unwrap();
    assert!(
        total > 0 && b["nodes_on_device"].as_u64() == Some(total),
        "{b}"
    );
}

/// ggml's file name of backend `name`'s library (`libggml-vulkan.so`).
fn graft_ggml_module(name: &str) -> String {
    format!(
        "{}ggml-{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Backend libraries loaded at run time (`GRAFT_BACKEND_DIR`): one that is not a library is
/// named with the loader's reason, in `graft devices` and in the error of the `--backend` that
/// wanted it, and nothing crashes. When scripts/test.sh built ggml's BLAS backend library
/// (scripts/ggml_backend.sh blas) and put its folder in `GRAFT_BACKEND_DIR`, graft loads it:
/// its device is listed and its ggml calls bind to the ggml graft links (the op conformance
/// suite runs its products against the CPU backend).
#[test]
fn backend_libraries_load_at_run_time() {
    let Some((m, d)) = fixture("backend-libraries") else {
        return;
    };
    let fake = d.join("libs");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(
        fake.join(graft_ggml_module("cuda")),
        b"not a shared library",
    )
    .unwrap();
    let dirs = std::env::join_paths(
        std::iter::once(fake.clone()).chain(
            std::env::var_os("GRAFT_BACKEND_DIR")
                .map(|v| std::env::split_paths(&v).collect::<Vec<_>>())
                .unwrap_or_default(),
        ),
    )
    .unwrap();
    let with_libs = |args: &[&str]| {
        common::graft_cmd()
            .args(args)
            .env("GRAFT_BACKEND_DIR", &dirs)
            .output()
            .unwrap()
    };
    let o = with_libs(&["devices", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let libs = v["backend_libraries"].as_array().unwrap();
    let cuda = libs.iter().find(|l| l["backend"] == "cuda").unwrap();
    assert_eq!(cuda["loaded"], false, "{cuda}");
    assert!(
        cuda["path"].as_str().unwrap().starts_with(s(&fake)),
        "{cuda}"
    );
    assert!(!cuda["error"].as_str().unwrap().is_empty(), "{cuda}");

    let err = assert_one_error(
        &with_libs(&[
            "generate",
            "--model",
            s(&m),
            "--prompt",
            "hi",
            "--backend",
            "cuda",
        ]),
        "did not load",
    );
    assert!(
        err.contains(s(&fake)) && err.contains("available: cpu"),
        "{err}"
    );

    let blas = libs.iter().find(|l| l["backend"] == "blas").unwrap();
    let required = std::env::var("GRAFT_REQUIRE_DEVICE")
        .is_ok_and(|v| v.split(',').any(|b| b.trim() == "blas"));
    if blas["path"].is_null() && !required {
        eprintln!("skipping the BLAS library: none in GRAFT_BACKEND_DIR");
        return;
    }
    assert_eq!(blas["loaded"], true, "{blas}");
    let dev = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["backend"] == "blas")
        .unwrap_or_else(|| panic!("no BLAS device: {v}"));
    assert_eq!(dev["type"], "accel");
    // A run beside a loaded library gives the tokens of one without.
    let args = [
        "generate",
        "--model",
        s(&m),
        "--prompt",
        "hi",
        "--max-tokens",
        "3",
        "--temperature",
        "0",
        "--json",
    ];
    let without = common::graft_cmd()
        .args(args)
        .env_remove("GRAFT_BACKEND_DIR")
        .output()
        .unwrap();
    let tokens = |o: &Output| {
        assert!(o.status.success(), "{}", stderr(o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["tokens"].clone()
    };
    assert_eq!(tokens(&with_libs(&args)), tokens(&without));
}
