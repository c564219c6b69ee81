//! Hand-built malformed GGUF buffers: each must be rejected with its specific error.

use graft_formats::gguf::limits;
use graft_formats::{FormatError, Gguf, GgufWriter};

/// Little-endian byte builder for GGUF pieces.
#[derive(Clone, Default)]
struct B(Vec<u8>);

impl B {
    /// Magic, version, tensor count, kv count.
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> B {
        B::default()
            .raw(b"GGUF")
            .u32(version)
            .u64(n_tensors)
            .u64(n_kv)
    }
    fn raw(mut self, b: &[u8]) -> B {
        self.0.extend_from_slice(b);
        self
    }
    fn u8(self, v: u8) -> B {
        self.raw(&[v])
    }
    fn u32(self, v: u32) -> B {
        self.raw(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> B {
        self.raw(&v.to_le_bytes())
    }
    fn str(self, s: &[u8]) -> B {
        self.u64(s.len() as u64).raw(s)
    }
    /// A kv pair with a u32 value.
    fn kv_u32(self, key: &str, v: u32) -> B {
        self.str(key.as_bytes()).u32(4).u32(v)
    }
    /// A kv pair with a string value.
    fn kv_str(self, key: &str, v: &str) -> B {
        self.str(key.as_bytes()).u32(8).str(v.as_bytes())
    }
    /// A tensor info.
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> B {
        let mut b = self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            b = b.u64(d);
        }
        b.u32(ty).u64(offset)
    }
    /// Zero padding up to a multiple of `align`, then `n` data bytes.
    fn data(mut self, align: usize, n: usize) -> B {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self.0.resize(self.0.len() + n, 0xAB);
        self
    }
    fn parse(self) -> Result<Gguf, FormatError> {
        Gguf::from_bytes(self.0)
    }
}

fn err(b: B) -> FormatError {
    match b.parse() {
        Ok(g) => panic!("expected an error, parsed {g:?}"),
        Err(e) => e,
    }
}

#[test]
fn a_minimal_valid_file_parses() {
    let g = B::header(3, 1, 1)
        .kv_str("general.architecture", "llama")
        .tensor("t", &[4], 0, 0)
        .data(32, 16)
        .parse()
        .unwrap();
    assert_eq!(g.tensors().len(), 1);
    assert_eq!(g.tensor_data(&g.tensors()[0]), &[0xAB; 16]);
    // Version 2 has the same layout.
    assert_eq!(B::header(2, 0, 0).parse().unwrap().version(), 2);
}

#[test]
fn bad_magic() {
    let e = err(B::default().raw(b"GGUX").u32(3).u64(0).u64(0));
    assert!(
        matches!(e, FormatError::BadMagic { found } if &found == b"GGUX"),
        "{e}"
    );
    let e = err(B::default().raw(b"\x00\x01\x02\x03"));
    assert!(matches!(e, FormatError::BadMagic { .. }), "{e}");
}

#[test]
fn unsupported_versions() {
    for v in [0, 1, 4, 0x0300_0000 /* big-endian v3 */] {
        let e = err(B::header(v, 0, 0));
        assert!(
            matches!(e, FormatError::UnsupportedVersion(x) if x == v),
            "{e}"
        );
    }
}

#[test]
fn truncated_at_each_header_stage() {
    // Counts are checked against the bytes left first (13 per kv, 32 per tensor info), so
    // each case keeps enough bytes to pass that check and still ends inside its field.
    const LONG: &[u8] = b"a_rather_long_tensor_name";
    let cases: Vec<(B, &str)> = vec![
        (B::default(), "magic"),
        (B::default().raw(b"GG"), "magic"),
        (B::default().raw(b"GGUF"), "version"),
        (
            B::default().raw(b"GGUF").u32(3).raw(&[0; 5]),
            "tensor count",
        ),
        (B::default().raw(b"GGUF").u32(3).u64(0), "kv count"),
        (
            B::header(3, 0, 1).u64(20).raw(b"general.na").raw(&[0; 3]),
            "key",
        ),
        (
            B::header(3, 0, 1).str(b"abcdefghij").raw(&[4, 0]),
            "value type",
        ),
        (
            B::header(3, 0, 1).str(b"k").u32(4).raw(&[1, 2]),
            "u32 value",
        ),
        (
            B::header(3, 0, 1)
                .str(b"k")
                .u32(8)
                .u64(10)
                .raw(b"abc")
                .raw(&[0; 2]),
            "string value",
        ),
        (
            B::header(3, 0, 1).str(b"k").u32(9).u32(6).raw(&[0; 5]),
            "array length",
        ),
        (
            B::header(3, 1, 0)
                .u64(100)
                .raw(b"blk.0.attn_q.weight")
                .raw(&[0; 13]),
            "tensor name",
        ),
        (B::header(3, 1, 0).str(LONG).raw(&[1, 0]), "tensor n_dims"),
        (
            B::header(3, 1, 0)
                .str(b"t")
                .u32(4)
                .u64(2)
                .u64(2)
                .raw(&[0; 14]),
            "tensor dimension",
        ),
        (
            B::header(3, 1, 0).str(LONG).u32(1).u64(2).raw(&[0, 0]),
            "tensor type",
        ),
        (
            B::header(3, 1, 0)
                .str(LONG)
                .u32(1)
                .u64(2)
                .u32(0)
                .raw(&[0; 7]),
            "tensor offset",
        ),
    ];
    for (i, (b, stage)) in cases.into_iter().enumerate() {
        let len = b.0.len() as u64;
        let e = err(b);
        match &e {
            FormatError::Truncated {
                what,
                offset,
                need,
                have,
                ..
            } => {
                assert_eq!(what, &stage, "case {i}: {e}");
                assert!(have < need && offset + have == len, "case {i}: {e}");
            }
            _ => panic!("case {i} ({stage}): expected Truncated, got {e:?}"),
        }
    }
}

#[test]
fn truncated_array_data() {
    // An f32 array whose length fits the count check but not the bytes: 3 elements, 10 bytes.
    let e = err(B::header(3, 0, 1)
        .str(b"k")
        .u32(9)
        .u32(6)
        .u64(3)
        .raw(&[0; 10]));
    // Three 4-byte elements need 12 bytes but only 10 are left: caught before allocating, and
    // reported as a cut-short file.
    assert!(
        matches!(
            e,
            FormatError::Truncated {
                what: "array elements",
                need: 12,
                have: 10,
                ..
            }
        ),
        "{e}"
    );
    // A string array: the count fits (2 x 8 bytes) but the second string is cut.
    let e = err(B::header(3, 0, 1)
        .str(b"k")
        .u32(9)
        .u32(8)
        .u64(2)
        .str(b"ab")
        .u64(5)
        .raw(b"xy"));
    assert!(
        matches!(&e, FormatError::Truncated { what: "string array element", item, .. } if item == "k"),
        "{e}"
    );
}

#[test]
fn huge_string_lengths() {
    let e = err(B::header(3, 0, 1).u64(u64::MAX).raw(&[0; 16]));
    assert!(
        matches!(
            e,
            FormatError::TooLarge {
                what: "key",
                value: u64::MAX,
                ..
            }
        ),
        "{e}"
    );
    let e = err(B::header(3, 0, 1)
        .u64(limits::MAX_KEY_LEN + 1)
        .raw(&[b'a'; 64]));
    assert!(
        matches!(e, FormatError::TooLarge { what: "key", .. }),
        "{e}"
    );
    let e = err(B::header(3, 0, 1).str(b"k").u32(8).u64(1 << 62).raw(b"abc"));
    assert!(
        matches!(&e, FormatError::TooLarge { what: "string value", item, .. } if item == "k"),
        "{e}"
    );
    // Under the cap but longer than the file.
    let e = err(B::header(3, 0, 1).str(b"k").u32(8).u64(1000).raw(b"abc"));
    assert!(
        matches!(
            e,
            FormatError::Truncated {
                what: "string value",
                need: 1000,
                have: 3,
                ..
            }
        ),
        "{e}"
    );
    let e = err(B::header(3, 1, 0).u64(u64::MAX / 2).raw(&[0; 40]));
    assert!(
        matches!(
            e,
            FormatError::TooLarge {
                what: "tensor name",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn huge_array_lengths() {
    for elem_ty in [0u32, 4, 7, 8, 9, 12] {
        let e = err(B::header(3, 0, 1)
            .str(b"arr")
            .u32(9)
            .u32(elem_ty)
            .u64(u64::MAX)
            .raw(&[0; 64]));
        assert!(
            matches!(&e, FormatError::TooLarge { what: "array length", value: u64::MAX, item, .. } if item == "arr"),
            "elem type {elem_ty}: {e}"
        );
    }
    // Nested: the inner array's length is checked against what is left.
    let e = err(B::header(3, 0, 1)
        .str(b"n")
        .u32(9)
        .u32(9)
        .u64(1)
        .u32(6)
        .u64(1 << 40)
        .raw(&[0; 8]));
    assert!(
        matches!(
            e,
            FormatError::TooLarge {
                what: "array length",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn huge_counts() {
    let e = err(B::header(3, u64::MAX, 0).raw(&[0; 100]));
    assert!(
        matches!(
            e,
            FormatError::TooLarge {
                what: "tensor count",
                value: u64::MAX,
                max: 3,
                ..
            }
        ),
        "{e}"
    );
    let e = err(B::header(3, 0, 1 << 40).raw(&[0; 100]));
    assert!(
        matches!(
            e,
            FormatError::TooLarge {
                what: "kv count",
                ..
            }
        ),
        "{e}"
    );
    // Plausible at the header, impossible after the metadata used up the bytes.
    let e = err(B::header(3, 2, 1)
        .kv_str("k", &"x".repeat(50))
        .raw(&[0; 40]));
    assert!(
        matches!(
            e,
            FormatError::Truncated {
                what: "tensor infos",
                need: 64,
                have: 40,
                ..
            }
        ),
        "{e}"
    );
    assert!(e
        .to_string()
        .starts_with("the file is truncated: tensor infos at offset"));
}

#[test]
fn bad_dimension_counts_and_zero_dims() {
    let e = err(B::header(3, 1, 0)
        .tensor("t5", &[1, 1, 1, 1, 1], 0, 0)
        .data(32, 4));
    assert!(
        matches!(&e, FormatError::BadShape { tensor, .. } if tensor == "t5"),
        "{e}"
    );
    let e = err(B::header(3, 1, 0).tensor("t0", &[], 0, 0).raw(&[0; 40]));
    assert!(
        matches!(&e, FormatError::BadShape { tensor, .. } if tensor == "t0"),
        "{e}"
    );
    let e = err(B::header(3, 1, 0).str(b"big").u32(u32::MAX).raw(&[0; 40]));
    assert!(
        matches!(&e, FormatError::BadShape { tensor, .. } if tensor == "big"),
        "{e}"
    );
    let e = err(B::header(3, 1, 0).tensor("z", &[4, 0], 0, 0).data(32, 16));
    assert!(
        matches!(&e, FormatError::BadShape { tensor, dims, .. } if tensor == "z" && dims == &[4, 0]),
        "{e}"
    );
}

#[test]
fn overflowing_element_count_and_offsets() {
    let e = err(B::header(3, 1, 0)
        .tensor("o", &[1 << 32, 1 << 32], 0, 0)
        .data(32, 0));
    assert!(
        matches!(&e, FormatError::BadShape { tensor, reason, .. } if tensor == "o" && reason.contains("overflow")),
        "{e}"
    );
    let e = err(B::header(3, 1, 0)
        .tensor("o", &[u64::MAX], 0, 0)
        .data(32, 0));
    assert!(matches!(e, FormatError::BadShape { .. }), "{e}");
    // Bytes overflow although elements fit in i64.
    let e = err(B::header(3, 1, 0)
        .tensor("o", &[1 << 62], 28, 0)
        .data(32, 0));
    assert!(matches!(e, FormatError::BadShape { .. }), "{e}");
    // Aligned offset near u64::MAX: start + size overflows.
    let e = err(B::header(3, 1, 0).tensor("far", &[4], 0, !31).data(32, 16));
    assert!(
        matches!(&e, FormatError::TensorOutOfBounds { tensor, .. } if tensor == "far"),
        "{e}"
    );
}

#[test]
fn unknown_value_types() {
    let e = err(B::header(3, 0, 1).str(b"k").u32(13).u32(0));
    assert!(
        matches!(&e, FormatError::UnknownValueType { key, ty: 13 } if key == "k"),
        "{e}"
    );
    let e = err(B::header(3, 0, 1).str(b"arr").u32(9).u32(99).u64(0));
    assert!(
        matches!(&e, FormatError::UnknownValueType { key, ty: 99 } if key == "arr"),
        "{e}"
    );
}

#[test]
fn unknown_tensor_types() {
    for ty in [4u32, 5, 31, 36, 43, 1000] {
        let e = err(B::header(3, 1, 0).tensor("w", &[32], ty, 0).data(32, 64));
        assert!(
            matches!(&e, FormatError::UnknownTensorType { tensor, ty: t } if tensor == "w" && *t == ty),
            "{e}"
        );
    }
}

#[test]
fn misaligned_offsets() {
    let e = err(B::header(3, 2, 0)
        .tensor("a", &[1], 0, 0)
        .tensor("b", &[1], 0, 4)
        .data(32, 64));
    assert!(
        matches!(&e, FormatError::Misaligned { tensor, offset: 4, alignment: 32 } if tensor == "b"),
        "{e}"
    );
    // With general.alignment = 8 the same offset 8 is fine, 12 is not.
    B::header(3, 1, 1)
        .kv_u32("general.alignment", 8)
        .tensor("a", &[1], 0, 8)
        .data(8, 16)
        .parse()
        .unwrap();
    let e = err(B::header(3, 1, 1)
        .kv_u32("general.alignment", 8)
        .tensor("a", &[1], 0, 12)
        .data(8, 16));
    assert!(
        matches!(
            e,
            FormatError::Misaligned {
                offset: 12,
                alignment: 8,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn data_past_end_of_file() {
    // The tensor table says the data ends at byte `expected`; the file is one byte short.
    let b = B::header(3, 1, 0).tensor("w", &[8], 0, 0).data(32, 31);
    let len = b.0.len() as u64;
    let e = err(b);
    match e {
        FormatError::TruncatedData { expected, found } => {
            assert_eq!((expected, found), (len + 1, len));
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(
        FormatError::TruncatedData {
            expected: 100,
            found: 60
        }
        .to_string(),
        "the file is truncated: its tensor data needs 100 bytes, the file has 60"
    );
    // Header ends, data section missing entirely.
    let e = err(B::header(3, 1, 0).tensor("w", &[8], 0, 0));
    assert!(matches!(e, FormatError::TruncatedData { .. }), "{e}");
}

#[test]
fn block_size_mismatch() {
    // q4_0 needs ne0 to be a multiple of 32.
    let e = err(B::header(3, 1, 0).tensor("q", &[16, 2], 2, 0).data(32, 64));
    assert!(
        matches!(&e, FormatError::BadShape { tensor, reason, .. } if tensor == "q" && reason.contains("block size")),
        "{e}"
    );
}

#[test]
fn duplicates() {
    let e = err(B::header(3, 0, 2).kv_u32("a", 1).kv_u32("a", 2));
    assert!(
        matches!(&e, FormatError::DuplicateKey(k) if k == "a"),
        "{e}"
    );
    let e = err(B::header(3, 2, 0)
        .tensor("t", &[1], 0, 0)
        .tensor("t", &[1], 0, 32)
        .data(32, 64));
    assert!(
        matches!(&e, FormatError::DuplicateTensor(t) if t == "t"),
        "{e}"
    );
}

#[test]
fn invalid_utf8() {
    let e = err(B::header(3, 0, 1).str(b"bad\xff").u32(4).u32(1));
    assert!(
        matches!(
            e,
            FormatError::InvalidUtf8 {
                what: "key",
                offset: 32,
                ..
            }
        ),
        "{e}"
    );
    let e = err(B::header(3, 0, 1).str(b"k").u32(8).str(b"\xc3\x28"));
    assert!(
        matches!(&e, FormatError::InvalidUtf8 { what: "string value", item, .. } if item == "k"),
        "{e}"
    );
    let e = err(B::header(3, 0, 1)
        .str(b"toks")
        .u32(9)
        .u32(8)
        .u64(2)
        .str(b"ok")
        .str(b"\x80"));
    assert!(
        matches!(&e, FormatError::InvalidUtf8 { what: "string array element", item, .. } if item == "toks"),
        "{e}"
    );
    let e = err(B::header(3, 1, 0)
        .str(b"\xfe")
        .u32(1)
        .u64(1)
        .u32(0)
        .u64(0)
        .data(32, 4));
    assert!(
        matches!(
            e,
            FormatError::InvalidUtf8 {
                what: "tensor name",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn bad_alignment_values() {
    for a in [0u32, 3, 48, 100] {
        let e = err(B::header(3, 0, 1).kv_u32("general.alignment", a));
        assert!(
            matches!(e, FormatError::BadAlignment { value } if value == u64::from(a)),
            "{a}: {e}"
        );
    }
    let e = err(B::header(3, 0, 1).kv_str("general.alignment", "32"));
    assert!(
        matches!(&e, FormatError::WrongType { key, .. } if key == "general.alignment"),
        "{e}"
    );
    // Any power of two, any integer width.
    let g = B::header(3, 0, 1)
        .str(b"general.alignment")
        .u32(0)
        .u8(64)
        .parse()
        .unwrap();
    assert_eq!(g.alignment(), 64);
}

#[test]
fn invalid_bool_and_deep_nesting() {
    let e = err(B::header(3, 0, 1).str(b"flag").u32(7).u8(2));
    assert!(
        matches!(&e, FormatError::InvalidBool { key, value: 2, .. } if key == "flag"),
        "{e}"
    );
    // Five nested arrays; the innermost is empty.
    let mut b = B::header(3, 0, 1).str(b"deep").u32(9);
    for _ in 0..5 {
        b = b.u32(9).u64(1);
    }
    let e = err(b.u32(0).u64(0));
    assert!(
        matches!(
            e,
            FormatError::TooLarge {
                what: "array nesting depth",
                value: 5,
                max: 4,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama")
        .add_kv("tokenizer.ggml.tokens", vec!["a", "bb", "ccc"])
        .add_kv("scores", vec![0.5f32, 1.5])
        .add_kv("flag", true);
    w.add_tensor_f32("a", &[2, 2], &[1.0, 2.0, 3.0, 4.0])
        .unwrap();
    w.add_tensor("b", graft_formats::GgmlType::Q8_0, &[32], vec![7u8; 34])
        .unwrap();
    let bytes = w.to_bytes().unwrap();
    let full = Gguf::from_bytes(bytes.clone()).unwrap();
    let data_end = full
        .tensors()
        .iter()
        .map(|t| t.abs_offset + t.n_bytes)
        .max()
        .unwrap();
    for cut in 0..data_end as usize {
        let e = Gguf::from_bytes(bytes[..cut].to_vec()).expect_err("truncated file parsed");
        assert!(
            matches!(
                e,
                FormatError::Truncated { .. } | FormatError::TruncatedData { .. }
            ),
            "cut at {cut}: {e:?}"
        );
    }
}

#[test]
fn open_errors_name_the_path() {
    let dir = std::env::temp_dir().join(format!("graft-formats-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.gguf");
    let e = Gguf::open(&missing).unwrap_err();
    assert!(
        matches!(&e, FormatError::Io { path, .. } if path == &missing),
        "{e}"
    );
    // One message with each fact once: the cause is printed, not also returned as a source.
    assert_eq!(
        e.to_string(),
        format!("{}: No such file or directory", missing.display())
    );
    assert!(std::error::Error::source(&e).is_none());
    // A directory is named as one (mapping it would say "No such device").
    let e = Gguf::open(&dir).unwrap_err();
    assert!(
        e.to_string().ends_with("is a directory, not a GGUF file"),
        "{e}"
    );

    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, B::header(1, 0, 0).0).unwrap();
    let e = Gguf::open(&bad).unwrap_err();
    assert!(e.to_string().contains("bad.gguf"), "{e}");
    assert!(
        matches!(e.root(), FormatError::UnsupportedVersion(1)),
        "{e}"
    );

    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let e = Gguf::open(&empty).unwrap_err();
    assert!(
        matches!(e.root(), FormatError::Truncated { what: "magic", .. }),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Found by the fuzzer: `general.alignment` = 2^31 (an i64 power of two) made the writer pad
/// 2 GiB when round-tripping an otherwise empty file.
#[test]
fn huge_alignment_is_refused() {
    let bytes: [u8; 63] = [
        71, 71, 85, 70, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0, 0, 0,
        0, 0, 0, 103, 101, 110, 101, 114, 97, 108, 46, 97, 108, 105, 103, 110, 109, 101, 110, 116,
        11, 0, 0, 0, 0, 0, 0, 128, 0, 0, 0, 0, 97, 0,
    ];
    assert!(matches!(
        graft_formats::Gguf::from_bytes(bytes.to_vec()),
        Err(graft_formats::FormatError::BadAlignment { value: 2147483648 })
    ));
    assert!(graft_formats::GgufWriter::new()
        .set_alignment(1 << 21)
        .is_err());
    assert!(graft_formats::GgufWriter::new()
        .set_alignment(1 << 20)
        .is_ok());
}
