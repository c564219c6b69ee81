//! Fuzz target: PEFT LoRA import (`adapter_config.json` + `adapter_model.safetensors`) for the
//! base model. The input is the config's text, a NUL byte, then the safetensors bytes. Bad
//! input must get an error; what imports must load as a GGUF LoRA and run (an import that
//! writes a file graft itself refuses is a bug). Seeds: `scripts/make_fuzz_seeds.py`.
#![no_main]

mod common;

use std::sync::Arc;

use graft::adapter::import_peft_bytes;
use graft::Adapter;
use graft_formats::Gguf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = common::base();
    let Some(split) = data.iter().position(|&b| b == 0) else {
        return;
    };
    let Ok(config) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let Ok(gguf) = import_peft_bytes(&base.model, config, &data[split + 1..]) else {
        return;
    };
    let g = Gguf::from_bytes(gguf).expect("an imported LoRA parses as GGUF");
    let adapter = Adapter::from_gguf(&base.model, Arc::new(g), "imported".into())
        .unwrap_or_else(|e| panic!("an imported LoRA must load: {e}"));
    base.run_with(adapter);
});
