//! Bytes uploaded to a wgpu device while adapters are switched. Alone in its test binary: the
//! count is per process, and other tests' uploads must not mix in. Without a wgpu device the
//! test says so and passes; `GRAFT_REQUIRE_DEVICE=wgpu` makes that a failure.

mod common;

use std::sync::Arc;

use graft::{ActiveAdapters, Adapter, BackendChoice, LogitsFor, Model, Session};

const PROMPT: &str = "The capital of France is";

/// The base model goes to the device once per device and model; an adapter goes there the first
/// time a session on it activates the adapter, and stays. A switch then uploads the new
/// adapter's bytes the first time and only the graph's small inputs afterwards: never the base.
#[test]
fn switching_adapters_on_wgpu_uploads_only_adapter_bytes() {
    if !common::have_wgpu() {
        return;
    }
    let Some(p) = common::model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let model = Arc::new(Model::load(p).unwrap());
    let (a, b) = (
        common::test_adapter(&model, "lora-qv-r8.gguf"),
        common::test_adapter(&model, "diablo-n7.gguf"),
    );
    let prompt = model.tokenizer().encode(PROMPT, true, true);
    let uploaded = graft_ggml::graft_wgpu::bytes_uploaded;
    let base = model.weight_bytes();
    let before = uploaded();
    let mut s = Session::new(model.clone(), common::device_session(BackendChoice::Wgpu)).unwrap();
    let first = uploaded() - before;
    assert!(
        first >= base,
        "the base goes to the device: {first} of {base} bytes"
    );
    // Inputs of one graph over a few tokens (positions, mask, cache indices): well under this.
    const INPUTS: u64 = 1 << 20;
    let switch = |to: &Arc<Adapter>, s: &mut Session| {
        let before = uploaded();
        s.set_adapters(ActiveAdapters::none().with(to.clone(), 1.0))
            .unwrap();
        s.decode(&prompt, LogitsFor::Last).unwrap();
        s.clear();
        let moved = uploaded() - before;
        eprintln!(
            "switch to {} ({} bytes) and decode: {moved} bytes uploaded (base {base})",
            to.name(),
            to.n_bytes()
        );
        moved
    };
    for to in [&a, &b] {
        let moved = switch(to, &mut s);
        assert!(
            moved <= to.n_bytes() as u64 + INPUTS,
            "first use of {}: {moved} bytes uploaded",
            to.name()
        );
        assert!(
            moved >= to.n_bytes() as u64 / 2,
            "{} goes to the device",
            to.name()
        );
    }
    for to in [&a, &b, &a] {
        let moved = switch(to, &mut s);
        assert!(
            moved < INPUTS,
            "{} is resident: {moved} bytes uploaded",
            to.name()
        );
    }
    let r = s.backend_report();
    assert!(
        r.nodes_on_device * 10 > r.nodes_total * 9,
        "adapter ops run on the device too: {r:?}"
    );
    // A second session on the same device shares the base and the adapters already there.
    let before = uploaded();
    let mut s2 = Session::new(model.clone(), common::device_session(BackendChoice::Wgpu)).unwrap();
    assert!(switch(&b, &mut s2) < INPUTS);
    assert!(uploaded() - before < INPUTS);

    // `gpu_layers`: a session with the last 3 of 30 layers on the device uploads those layers'
    // weights (a copy of its own), not the embeddings or the other layers.
    let before = uploaded();
    let mut cfg = common::device_session(BackendChoice::Wgpu);
    cfg.gpu_layers = Some(3);
    let mut s3 = Session::new(model.clone(), cfg).unwrap();
    s3.decode(&prompt, LogitsFor::Last).unwrap();
    let moved = uploaded() - before;
    eprintln!("3 of 30 layers: {moved} bytes uploaded (base {base})");
    assert!(
        moved > base / 30 && moved < base / 6,
        "3 of 30 layers: {moved} bytes uploaded (base {base})"
    );
}
