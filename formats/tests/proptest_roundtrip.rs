//! Property tests: writer -> reader round-trips, and mutated or truncated files never panic.

use graft_formats::{Array, GgmlType, Gguf, GgufWriter, Value};
use proptest::prelude::*;

fn finite_f32() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("not NaN", |x| !x.is_nan())
}

fn finite_f64() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("not NaN", |x| !x.is_nan())
}

fn flat_array() -> impl Strategy<Value = Array> {
    let n = 0..6usize;
    prop_oneof![
        prop::collection::vec(any::<u8>(), n.clone()).prop_map(Array::U8),
        prop::collection::vec(any::<i8>(), n.clone()).prop_map(Array::I8),
        prop::collection::vec(any::<u16>(), n.clone()).prop_map(Array::U16),
        prop::collection::vec(any::<i16>(), n.clone()).prop_map(Array::I16),
        prop::collection::vec(any::<u32>(), n.clone()).prop_map(Array::U32),
        prop::collection::vec(any::<i32>(), n.clone()).prop_map(Array::I32),
        prop::collection::vec(any::<u64>(), n.clone()).prop_map(Array::U64),
        prop::collection::vec(any::<i64>(), n.clone()).prop_map(Array::I64),
        prop::collection::vec(finite_f32(), n.clone()).prop_map(Array::F32),
        prop::collection::vec(finite_f64(), n.clone()).prop_map(Array::F64),
        prop::collection::vec(any::<bool>(), n.clone()).prop_map(Array::Bool),
        prop::collection::vec("\\PC{0,12}", n).prop_map(Array::String),
    ]
}

fn array() -> impl Strategy<Value = Array> {
    // Depth up to 4 (the reader's limit).
    flat_array().prop_recursive(3, 24, 4, |inner| {
        prop::collection::vec(inner, 0..4).prop_map(Array::Array)
    })
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        finite_f32().prop_map(Value::F32),
        finite_f64().prop_map(Value::F64),
        any::<bool>().prop_map(Value::Bool),
        "\\PC{0,40}".prop_map(Value::String),
        array().prop_map(Value::Array),
    ]
}

/// A tensor: dtype, dims (ne0 a multiple of the block size) and a seed for its bytes.
fn tensor() -> impl Strategy<Value = (GgmlType, Vec<u64>, u8)> {
    (
        prop::sample::select(GgmlType::ALL.to_vec()),
        1..=3u64,
        prop::collection::vec(1..=3u64, 0..=3),
        any::<u8>(),
    )
        .prop_map(|(dtype, k, rest, seed)| {
            let mut dims = vec![k * dtype.block_size()];
            dims.extend(rest);
            (dtype, dims, seed)
        })
}

fn data_for(dtype: GgmlType, dims: &[u64], seed: u8) -> Vec<u8> {
    let rows: u64 = dims[1..].iter().product();
    let n = dtype.row_bytes(dims[0]).unwrap() * rows;
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[derive(Debug, Clone)]
struct Model {
    alignment: u64,
    kvs: Vec<(String, Value)>,
    tensors: Vec<(String, GgmlType, Vec<u64>, Vec<u8>)>,
}

fn model() -> impl Strategy<Value = Model> {
    (
        prop::sample::select(vec![1u64, 2, 4, 8, 16, 32, 64, 256]),
        prop::collection::vec(("[a-z][a-z0-9_.]{0,15}", value()), 0..8),
        prop::collection::vec(tensor(), 0..5),
    )
        .prop_map(|(alignment, raw_kvs, raw_tensors)| {
            let mut seen = std::collections::HashSet::new();
            let kvs = raw_kvs
                .into_iter()
                .filter(|(k, _)| seen.insert(k.clone()))
                .collect();
            let tensors = raw_tensors
                .into_iter()
                .enumerate()
                .map(|(i, (dtype, dims, seed))| {
                    let data = data_for(dtype, &dims, seed);
                    (format!("blk.{i}.w"), dtype, dims, data)
                })
                .collect();
            Model {
                alignment,
                kvs,
                tensors,
            }
        })
}

fn write(m: &Model) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set_alignment(m.alignment).unwrap();
    for (k, v) in &m.kvs {
        w.add_kv(k.clone(), v.clone());
    }
    for (name, dtype, dims, data) in &m.tensors {
        w.add_tensor(name.clone(), *dtype, dims, data.as_slice())
            .unwrap();
    }
    w.to_bytes().unwrap()
}

/// Reads everything a caller could read; must never panic.
fn touch_everything(g: &Gguf) -> u64 {
    let mut acc = 0u64;
    for (k, v) in g.metadata() {
        acc = acc
            .wrapping_add(k.len() as u64)
            .wrapping_add(v.to_string().len() as u64);
        assert!(g.get(k).is_some());
        let _ = g.get_u32(k);
        let _ = g.get_f32_array(k);
        let _ = g.get_i32_array(k);
        let _ = g.get_str_array(k);
    }
    for t in g.tensors() {
        let data = g.tensor_data(t);
        assert_eq!(data.len() as u64, t.n_bytes);
        assert_eq!(t.offset % g.alignment(), 0);
        acc = acc.wrapping_add(data.iter().map(|&b| u64::from(b)).sum::<u64>());
        assert!(g.tensor(&t.name).is_some());
    }
    acc
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(m in model()) {
        let bytes = write(&m);
        prop_assert_eq!(bytes.len() as u64 % m.alignment, 0);
        let g = Gguf::from_bytes(bytes.clone()).unwrap();
        prop_assert_eq!(g.version(), 3);
        prop_assert_eq!(g.alignment(), m.alignment);

        let mut expected_kvs = m.kvs.clone();
        if m.alignment != 32 {
            expected_kvs.insert(0, ("general.alignment".to_string(), Value::U32(m.alignment as u32)));
        }
        prop_assert_eq!(g.metadata(), expected_kvs.as_slice());

        prop_assert_eq!(g.tensors().len(), m.tensors.len());
        for (t, (name, dtype, dims, data)) in g.tensors().iter().zip(&m.tensors) {
            prop_assert_eq!(&t.name, name);
            prop_assert_eq!(t.dtype, *dtype);
            prop_assert_eq!(&t.dims, dims);
            prop_assert_eq!(t.abs_offset % m.alignment, 0);
            prop_assert_eq!(g.tensor_data(t), data.as_slice());
        }
        touch_everything(&g);

        // Reader -> writer reproduces the file byte for byte.
        prop_assert_eq!(GgufWriter::from_gguf(&g).to_bytes().unwrap(), bytes);
    }
}

/// A mutation applied to a valid file.
#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite one byte.
    Byte(usize, u8),
    /// Overwrite 8 bytes with an interesting u64 (lengths, counts, offsets).
    Word(usize, u64),
    /// Remove a range of bytes.
    Delete(usize, usize),
    /// Insert bytes.
    Insert(usize, Vec<u8>),
    /// Cut the file.
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop::sample::select(vec![
        0u64,
        1,
        3,
        4,
        5,
        8,
        9,
        13,
        31,
        32,
        255,
        1 << 16,
        u32::MAX as u64,
        1 << 32,
        1 << 40,
        i64::MAX as u64,
        1 << 63,
        u64::MAX,
        u64::MAX - 31,
    ]);
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        3 => (any::<usize>(), interesting).prop_map(|(i, v)| Mutation::Word(i, v)),
        1 => (any::<usize>(), 1..16usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len();
    match m {
        Mutation::Byte(i, b) => bytes[i % len] = *b,
        Mutation::Word(i, v) => {
            let at = i % len;
            for (k, b) in v.to_le_bytes().iter().enumerate() {
                if let Some(slot) = bytes.get_mut(at + k) {
                    *slot = *b;
                }
            }
        }
        Mutation::Delete(i, n) => {
            let at = i % len;
            bytes.drain(at..(at + n).min(len));
        }
        Mutation::Insert(i, v) => {
            let at = i % (len + 1);
            bytes.splice(at..at, v.iter().copied());
        }
        Mutation::Truncate(i) => bytes.truncate(i % len),
    }
}

/// A small but varied valid file: every value type, nested arrays, quantized tensors.
fn seed_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama")
        .add_kv("llama.block_count", 2u32)
        .add_kv("llama.rope.freq_base", 10000.0f32)
        .add_kv("tokenizer.ggml.tokens", vec!["<s>", "a", "bc", "\u{00e9}"])
        .add_kv("tokenizer.ggml.scores", vec![0.0f32, -1.0, -2.0, -3.0])
        .add_kv("tokenizer.ggml.token_type", vec![3i32, 1, 1, 1])
        .add_kv("flag", true)
        .add_kv("big", u64::MAX)
        .add_kv("neg", -5i64)
        .add_kv("d", 0.5f64)
        .add_kv(
            "nested",
            vec![Array::U8(vec![1, 2]), Array::String(vec!["x".into()])],
        );
    w.add_tensor_f32("token_embd.weight", &[4, 2], &[0.0; 8])
        .unwrap();
    w.add_tensor(
        "blk.0.attn_q.weight",
        GgmlType::Q4_1,
        &[32, 2],
        vec![1u8; 40],
    )
    .unwrap();
    w.add_tensor(
        "blk.0.ffn_up.weight",
        GgmlType::Q6_K,
        &[256],
        vec![2u8; 210],
    )
    .unwrap();
    w.to_bytes().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic(muts in prop::collection::vec(mutation(), 1..6)) {
        let mut bytes = seed_file();
        for m in &muts {
            apply(&mut bytes, m);
        }
        if let Ok(g) = Gguf::from_bytes(bytes) {
            touch_everything(&g);
        }
    }

    #[test]
    fn random_bytes_after_a_valid_header_never_panic(
        n_tensors in prop::sample::select(vec![0u64, 1, 2, 1000, u64::MAX]),
        n_kv in prop::sample::select(vec![0u64, 1, 2, 1000, u64::MAX]),
        tail in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&n_tensors.to_le_bytes());
        bytes.extend_from_slice(&n_kv.to_le_bytes());
        bytes.extend_from_slice(&tail);
        if let Ok(g) = Gguf::from_bytes(bytes) {
            touch_everything(&g);
        }
    }
}

#[test]
fn seed_file_is_valid() {
    let g = Gguf::from_bytes(seed_file()).unwrap();
    assert_eq!(g.tensors().len(), 3);
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 2);
    touch_everything(&g);
}
