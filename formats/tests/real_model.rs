//! Reads the real SmolLM2-135M-Instruct Q4_1 model when it is available.
//!
//! The file comes from `$GRAFT_MODEL`, else `<workspace>/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf`
//! (fetched by the project's setup script). Without it the test prints a note and passes.

use std::path::PathBuf;

use graft_formats::{GgmlType, Gguf, GgufWriter};

fn model_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GRAFT_MODEL") {
        return Some(PathBuf::from(p));
    }
    let cached = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    cached.exists().then_some(cached)
}

#[test]
fn smollm2_q4_1() {
    let Some(path) = model_path() else {
        eprintln!(
            "note: SmolLM2 model not found (set GRAFT_MODEL or fetch it into .cache/models); \
             skipping"
        );
        return;
    };
    let g = Gguf::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(g.version() == 2 || g.version() == 3);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(g.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(g.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(g.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    if let Some(scores) = g.get_opt_f32_array("tokenizer.ggml.scores").unwrap() {
        assert_eq!(scores.len(), tokens.len());
    }
    if let Some(types) = g.get_opt_i32_array("tokenizer.ggml.token_type").unwrap() {
        assert_eq!(types.len(), tokens.len());
    }
    let _ = g.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap();

    let emb = g.tensor("token_embd.weight").expect("token_embd.weight");
    assert_eq!(emb.ne(), [576, 49152, 1, 1]);
    let q = g
        .tensor("blk.0.attn_q.weight")
        .expect("blk.0.attn_q.weight");
    assert_eq!(q.ne(), [576, 576, 1, 1]);
    assert!(g.tensors().iter().any(|t| t.dtype == GgmlType::Q4_1));
    let n_blocks = g
        .tensors()
        .iter()
        .filter(|t| t.name.ends_with(".attn_norm.weight"))
        .count();
    assert_eq!(n_blocks, 30);

    // Tensors lie inside the file, aligned, and the mapped slices are aligned in memory.
    let base = g.as_bytes().as_ptr() as usize;
    let mut total = 0u64;
    for t in g.tensors() {
        let data = g.tensor_data(t);
        assert_eq!(data.len() as u64, t.n_bytes, "{}", t.name);
        assert_eq!(t.abs_offset % g.alignment(), 0, "{}", t.name);
        assert_eq!((data.as_ptr() as usize - base) as u64, t.abs_offset);
        assert_eq!(
            data.as_ptr() as usize % g.alignment() as usize,
            0,
            "{}",
            t.name
        );
        total += t.n_bytes;
    }
    assert!(total <= g.file_len() - g.data_offset());
    println!(
        "{}: v{}, {} kv, {} tensors, {} data bytes, alignment {}",
        path.display(),
        g.version(),
        g.metadata().len(),
        g.tensors().len(),
        total,
        g.alignment()
    );

    // Re-writing the file (metadata and borrowed tensor data) gives a file that reads back equal.
    let bytes = GgufWriter::from_gguf(&g).to_bytes().unwrap();
    // The converter lays files out as our writer does, so the bytes match exactly.
    assert!(
        bytes == g.as_bytes(),
        "re-written file differs from the original"
    );
    let g2 = Gguf::from_bytes(bytes).unwrap();
    assert_eq!(g2.metadata(), g.metadata());
    assert_eq!(g2.tensors().len(), g.tensors().len());
    for (a, b) in g.tensors().iter().zip(g2.tensors()) {
        assert_eq!((&a.name, a.dtype, &a.dims), (&b.name, b.dtype, &b.dims));
        assert_eq!(g.tensor_data(a), g2.tensor_data(b), "{}", a.name);
    }
}
