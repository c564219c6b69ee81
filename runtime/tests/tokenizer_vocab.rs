//! Tokenizer conformance against llama.cpp.
//!
//! 1. llama.cpp's own test vectors: `ggml-vocab-*.gguf` with `.gguf.inp` / `.gguf.out`, fetched
//!    into `.cache/vocab/` by `scripts/fetch_vocab_tests.sh`. Each input is encoded with
//!    `add_special = false, parse_special = false`, as `tests/test-tokenizer-0.cpp` does, and must
//!    match exactly. A missing directory fails the test unless `GRAFT_SKIP_VOCAB=1`.
//! 2. The SmolLM2 model's tokenizer (pre-tokenizer "smollm") against ids produced by
//!    llama-cpp-python (`tests/fixtures/gen_smollm_tokens.py` -> `smollm_tokens.json`); skipped
//!    with a note when the model file is absent.

use std::path::{Path, PathBuf};

use graft::tokenizer::{ChatMessage, Decoder, Tokenizer, TokenizerError};
use graft_formats::Gguf;

/// Vocabularies whose model and pre-tokenizer we implement.
const SUPPORTED: &[&str] = &[
    "llama-bpe",
    "llama-spm",
    "qwen2",
    "qwen35",
    "gpt-2",
    "phi-3",
    "falcon",
    "deepseek-llm",
    "deepseek-coder",
    "mpt",
    "starcoder",
    "refact",
    "command-r",
];
/// Vocabularies with other models (WordPiece, Gemma-4's BPE): must fail cleanly.
const UNSUPPORTED: &[&str] = &["bert-bge", "gemma-4"];

fn vocab_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("GRAFT_VOCAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/vocab"));
    if dir.join("ggml-vocab-llama-bpe.gguf").exists() {
        return Some(dir);
    }
    if std::env::var("GRAFT_SKIP_VOCAB").as_deref() == Ok("1") {
        eprintln!(
            "note: {} missing, vocab tests skipped (GRAFT_SKIP_VOCAB=1)",
            dir.display()
        );
        return None;
    }
    panic!(
        "{} is missing: run scripts/fetch_vocab_tests.sh (or set GRAFT_SKIP_VOCAB=1)",
        dir.display()
    );
}

fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let g = Gguf::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(&g)
}

/// Inputs and expected ids, in llama.cpp's `.inp` / `.out` format.
fn read_cases(gguf: &Path) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(gguf.with_extension("gguf.inp")).expect("read .inp");
    let out = std::fs::read_to_string(gguf.with_extension("gguf.out")).expect("read .out");
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut pos = 0;
    while pos < inp.len() {
        match inp[pos..].find(sep) {
            Some(n) => {
                inputs.push(inp[pos..pos + n].to_string());
                pos += n + sep.len();
            }
            None => {
                inputs.push(inp[pos..].to_string());
                break;
            }
        }
    }
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("token id"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{}: .inp/.out case counts differ",
        gguf.display()
    );
    inputs.into_iter().zip(outputs).collect()
}

#[test]
fn llama_cpp_vocab_vectors() {
    let Some(dir) = vocab_dir() else { return };
    let mut failures = Vec::new();
    for name in SUPPORTED {
        let path = dir.join(format!("ggml-vocab-{name}.gguf"));
        let tok = load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let cases = read_cases(&path);
        let mut passed = 0;
        for (text, want) in &cases {
            let got = tok.encode(text, false, false);
            if &got == want {
                passed += 1;
            } else {
                failures.push(format!(
                    "{name}: {text:?}\n   want {want:?}\n    got {got:?}"
                ));
            }
        }
        println!("{name:>15}: {passed}/{} vectors match", cases.len());
    }
    for name in UNSUPPORTED {
        let path = dir.join(format!("ggml-vocab-{name}.gguf"));
        if path.exists() {
            let err = load(&path)
                .err()
                .unwrap_or_else(|| panic!("{name} should be unsupported"));
            println!("{name:>15}: unsupported ({err})");
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn vocab_decode_roundtrip_and_streaming() {
    let Some(dir) = vocab_dir() else { return };
    let text = "Hello world! 你好, мир 🦙🦙 3.14159 \n\n\t  'tis   x";
    for name in ["llama-bpe", "llama-spm", "qwen2", "gpt-2"] {
        let tok = load(&dir.join(format!("ggml-vocab-{name}.gguf"))).unwrap();
        let ids = tok.encode(text, false, false);
        // streaming must reproduce the concatenated pieces exactly
        let mut d = Decoder::new(&tok);
        let mut streamed: String = ids.iter().map(|&id| d.push(id)).collect();
        streamed.push_str(&d.finish());
        assert_eq!(streamed, text, "{name}: streaming decode");
        if name == "llama-bpe" {
            // clean_up_tokenization_spaces applies to whole-sequence decoding
            assert_eq!(tok.decode(&tok.encode("a , b", false, false)), "a, b");
        } else {
            assert_eq!(tok.decode(&ids), text, "{name}: decode");
        }
    }
    let spm = load(&dir.join("ggml-vocab-llama-spm.gguf")).unwrap();
    assert_eq!(spm.encode("", true, false), vec![1]);
    assert_eq!(spm.encode("Hi", true, false)[0], 1);
    assert!(spm.is_eog(2));
    let l3 = load(&dir.join("ggml-vocab-llama-bpe.gguf")).unwrap();
    assert!(l3.add_bos());
    assert_eq!(l3.encode("Hi", true, false)[0], 128000);
    let eot = l3.token_id("<|eot_id|>").unwrap();
    assert!(l3.is_eog(eot));
    assert_eq!(l3.eot(), Some(eot));
    assert_eq!(l3.encode("<|eot_id|>", false, true), vec![eot]);
    assert_ne!(l3.encode("<|eot_id|>", false, false), vec![eot]);
}

#[derive(Debug)]
struct SmolCase {
    text: String,
    add_special: bool,
    parse_special: bool,
    ids: Vec<u32>,
}

fn smollm_cases() -> Vec<SmolCase> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm_tokens.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| SmolCase {
            text: c["text"].as_str().unwrap().to_string(),
            add_special: c["add_special"].as_bool().unwrap(),
            parse_special: c["parse_special"].as_bool().unwrap(),
            ids: c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect(),
        })
        .collect()
}

fn smollm_model() -> Option<PathBuf> {
    let path = std::env::var_os("GRAFT_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "note: {} not found, SmolLM2 tokenizer test skipped",
            path.display()
        );
        None
    }
}

#[test]
fn smollm2_matches_llama_cpp() {
    let Some(path) = smollm_model() else { return };
    let tok = load(&path).unwrap();
    assert_eq!(tok.pre_tokenizer(), Some("smollm"));
    assert!(!tok.add_bos());
    let mut bad = Vec::new();
    let cases = smollm_cases();
    for c in &cases {
        let got = tok.encode(&c.text, c.add_special, c.parse_special);
        if got != c.ids {
            bad.push(format!(
                "{:?} (special {}/{})\n   want {:?}\n    got {:?}",
                c.text, c.add_special, c.parse_special, c.ids, got
            ));
        }
    }
    println!(
        "smollm: {}/{} cases match",
        cases.len() - bad.len(),
        cases.len()
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));

    // end of generation and chat
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert!(tok.is_eog(im_end));
    assert!(tok.is_eog(tok.token_id("<|endoftext|>").unwrap()));
    assert_eq!(tok.eot(), Some(im_end));
    let prompt = tok
        .apply_chat_template(&[ChatMessage::new("user", "What is 2+2?")], true)
        .unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode(&prompt, false, true);
    assert_eq!(ids[0], tok.token_id("<|im_start|>").unwrap());
    assert_eq!(tok.decode(&ids), prompt);
}
