//! Fuzz target: parse arbitrary bytes as GGUF; on success, touch every metadata value and the
//! data of every tensor. Any panic, out-of-bounds access or runaway allocation is a bug.
#![no_main]

use graft_formats::{Gguf, GgufWriter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::from_bytes(data.to_vec()) else {
        return;
    };
    let mut acc = 0u64;
    for (key, value) in g.metadata() {
        acc = acc.wrapping_add(value.to_string().len() as u64);
        assert!(g.get(key).is_some());
        let _ = g.get_u32(key);
        let _ = g.get_f32_array(key);
        let _ = g.get_str_array(key);
    }
    for t in g.tensors() {
        let bytes = g.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.n_bytes);
        acc = acc.wrapping_add(bytes.iter().map(|&b| u64::from(b)).sum::<u64>());
        assert!(g.tensor(&t.name).is_some());
    }
    // What was read can be written back, and reads back the same. (Overlapping tensors each
    // get their own aligned copy when re-written, so a small input can legitimately describe a
    // huge output; keep the round trip to outputs of a sane size.)
    let projected: u64 = g.tensors().iter().map(|t| t.n_bytes + g.alignment()).sum();
    if projected > 64 << 20 {
        return;
    }
    let out = GgufWriter::from_gguf(&g)
        .to_bytes()
        .expect("re-write a valid file");
    let g2 = Gguf::from_bytes(out).expect("re-read a re-written file");
    assert_eq!(g2.metadata().len(), g.metadata().len());
    assert_eq!(g2.tensors().len(), g.tensors().len());
    std::hint::black_box(acc);
});
