//! Interoperability with the reference writer: `fixtures/gguf_py_tiny.gguf` was written by
//! llama.cpp's gguf-py (PyPI `gguf`) with `fixtures/make_fixtures.py`.

use graft_formats::{GgmlType, Gguf, GgufWriter, Value};

fn fixture() -> Gguf {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gguf_py_tiny.gguf"
    );
    Gguf::open(path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn reads_a_gguf_py_file() {
    let g = fixture();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_str("general.name").unwrap(), "tiny");
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 2);
    assert_eq!(
        g.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(),
        1e-5
    );
    assert!(!g.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(g.get_u64("test.u64").unwrap(), 1 << 40);
    assert_eq!(g.get("test.i8"), Some(&Value::I8(-7)));
    assert_eq!(g.get("test.f64"), Some(&Value::F64(0.125)));
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap(),
        ["<s>", "a", "\u{e9}t\u{e9}"]
    );
    assert_eq!(
        &*g.get_f32_array("tokenizer.ggml.scores").unwrap(),
        [0.0, -1.5, -2.5]
    );
    assert_eq!(
        &*g.get_i32_array("tokenizer.ggml.token_type").unwrap(),
        [3, 1, 1]
    );

    let a = g.tensor("a.weight").unwrap();
    assert_eq!((a.dtype, a.ne()), (GgmlType::F32, [3, 2, 1, 1]));
    let vals: Vec<f32> = g
        .tensor_data(a)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(vals, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);

    let b = g.tensor("b.weight").unwrap();
    assert_eq!(
        (b.dtype, b.dims.as_slice(), b.n_bytes),
        (GgmlType::F16, &[4u64][..], 8)
    );
    let halves: Vec<f32> = g
        .tensor_data(b)
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    assert_eq!(halves, [1.0, -2.0, 0.5, 4.0]);

    let c = g.tensor("c.weight").unwrap();
    assert_eq!(
        (c.dtype, c.ne(), c.n_bytes),
        (GgmlType::Q8_0, [32, 2, 1, 1], 68)
    );
    for t in g.tensors() {
        assert_eq!(t.abs_offset % 64, 0, "{}", t.name);
    }
}

#[test]
fn rewriting_a_gguf_py_file_keeps_everything() {
    let g = fixture();
    let g2 = Gguf::from_bytes(GgufWriter::from_gguf(&g).to_bytes().unwrap()).unwrap();
    assert_eq!(g2.metadata(), g.metadata());
    assert_eq!(g2.alignment(), 64);
    for (a, b) in g.tensors().iter().zip(g2.tensors()) {
        assert_eq!(
            (&a.name, a.dtype, &a.dims, a.offset),
            (&b.name, b.dtype, &b.dims, b.offset)
        );
        assert_eq!(g.tensor_data(a), g2.tensor_data(b));
    }
    // gguf-py lays the file out as we do, so the bytes are identical too.
    assert_eq!(GgufWriter::from_gguf(&g).to_bytes().unwrap(), g.as_bytes());
}
