//! Fuzz target: arbitrary bytes as a GGUF adapter for the base model (LoRA, DiaBlo, WeGeFT,
//! LoPA, llama.cpp's LoRA layout). Parsing, validation against the base's shapes and the
//! upload to ggml must refuse bad input with an error; whatever loads must run (see
//! `common::Base::run_with`). Seeds: `scripts/make_fuzz_seeds.py`.
#![no_main]

mod common;

use std::sync::Arc;

use graft::Adapter;
use graft_formats::Gguf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = common::base();
    let Ok(g) = Gguf::from_bytes(data.to_vec()) else {
        return;
    };
    let Ok(adapter) = Adapter::from_gguf(&base.model, Arc::new(g), "fuzz".into()) else {
        return;
    };
    base.run_with(adapter);
});
