"""The Python bindings over the whole API, on the real SmolLM2-135M model.

Run by scripts/test_bindings.sh (which builds the package with scripts/bindings.sh):
  GRAFT_PY_PKG   folder with graft.py and libgraft_uniffi.so
  GRAFT_BIN      the graft CLI, whose greedy output is the reference for the same model,
                 adapter and prompt
  GRAFT_ROOT     the repository (models and adapters in .cache/, made by
                 scripts/setup_test_data.sh)
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

sys.path.insert(0, os.environ["GRAFT_PY_PKG"])
import graft  # noqa: E402

ROOT = Path(os.environ.get("GRAFT_ROOT", Path(__file__).resolve().parents[4]))
GRAFT_BIN = os.environ["GRAFT_BIN"]
MODEL = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_Q8 = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct.Q8_0.gguf"
MODEL_Q4_0 = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct.Q4_0.gguf"
ADAPTERS = ROOT / ".cache" / "adapters"
LORA = ADAPTERS / "lora-qv-r8.gguf"
DIABLO = ADAPTERS / "diablo-n64.gguf"
WEGEFT = ADAPTERS / "wegeft-r8.gguf"
LOPA = ADAPTERS / "lopa-random.gguf"
QWEN = ROOT / ".cache" / "models" / "qwen2-tiny.gguf"
THREADS = 2
N = 24
PROMPT = "The quick brown fox jumps over the lazy dog. The capital of France is"
PROMPT2 = "def fibonacci(n):"
GREEDY = graft.GenerateOptions(max_tokens=N, temperature=0.0)


def cli(prompt: str, *adapters: Path, max_tokens: int = N) -> str:
    """`graft generate` greedy text for the same model, adapters and prompt."""
    cmd = [GRAFT_BIN, "generate", "--model", str(MODEL), "--prompt", prompt, "--max-tokens",
           str(max_tokens), "--temperature", "0", "--threads", str(THREADS), "--json"]
    for a in adapters:
        cmd += ["--adapter", str(a)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)["text"]


@pytest.fixture(scope="module")
def engine():
    e = graft.Engine.open(str(MODEL), graft.EngineOptions(threads=THREADS))
    yield e
    e.release()


def test_info(engine):
    info = engine.info()
    assert info.architecture == "llama"
    assert info.vocab_size == 49152
    assert info.quant_type == "q4_1"
    assert 130_000_000 < info.parameters < 140_000_000
    assert info.chat_template
    assert info.context_length == 2048
    assert graft.version()


def test_generate_matches_cli(engine):
    s = engine.session()
    assert s.generate(PROMPT, N, 0.0) == cli(PROMPT)


def test_adapters_load_list_and_unload(engine):
    a = engine.load_adapter(str(LORA))
    assert a.name() == "lora-qv-r8"
    assert a.kind() == graft.AdapterKind.LORA
    b = engine.load_adapter_named(str(DIABLO), "robot")
    assert b.info().kind == graft.AdapterKind.DIABLO and b.info().rank == 64
    names = [i.name for i in engine.adapters()]
    assert "lora-qv-r8" in names and "robot" in names
    info = next(i for i in engine.adapters() if i.name == "lora-qv-r8")
    assert info.rank == 8 and "blk.0.attn_q.weight" in info.targets and info.bytes > 0
    c = engine.load_adapter_bytes(LORA.read_bytes(), "from-bytes")
    assert c.info().path is None and c.info().bytes == info.bytes
    engine.unload_adapter("from-bytes")
    assert engine.adapter("from-bytes") is None
    with pytest.raises(graft.GraftError.InvalidArgument):
        engine.unload_adapter("from-bytes")
    check = engine.check_adapter(str(WEGEFT))
    assert check.fits and check.kind == graft.AdapterKind.WEGEFT


@pytest.mark.parametrize("adapter", [LORA, DIABLO, WEGEFT, LOPA], ids=lambda p: p.stem)
def test_each_adapter_kind_matches_cli(engine, adapter):
    s = engine.session()
    s.set_adapters([graft.AdapterUse(adapter=engine.load_adapter(str(adapter)), scale=1.0)])
    assert s.generate_with(PROMPT, GREEDY).text == cli(PROMPT, adapter)


def test_switch_base_adapter_base_in_one_session(engine):
    lora = engine.load_adapter(str(LORA))
    s = engine.session()
    base = s.generate(PROMPT, N, 0.0)
    assert base == cli(PROMPT)
    s.reset()
    sw = s.set_adapters([graft.AdapterUse(adapter=lora, scale=1.0)])
    assert not sw.cache_recomputed  # the cache was empty after reset()
    assert s.generate(PROMPT, N, 0.0) == cli(PROMPT, LORA)
    assert s.active_adapters() == ["lora-qv-r8"]
    # Switching with a conversation in the cache recomputes it.
    sw = s.set_adapters([])
    assert sw.cache_recomputed and sw.tokens > 0
    s.reset()
    assert s.generate(PROMPT, N, 0.0) == base


def test_two_adapters_swapped_between_messages(engine):
    lora = engine.load_adapter(str(LORA))
    diablo = engine.load_adapter(str(DIABLO))
    s = engine.session()
    s.set_adapters([graft.AdapterUse(adapter=lora, scale=1.0)])
    first = s.generate(PROMPT, 8, 0.0)
    s.set_adapters([graft.AdapterUse(adapter=diablo, scale=1.0)])
    second = s.generate(" And then", 8, 0.0)
    assert first and second
    assert s.context_used() > 0
    # Both at once, with scales.
    s.reset()
    s.set_adapters([graft.AdapterUse(adapter=lora, scale=0.5),
                    graft.AdapterUse(adapter=diablo, scale=1.0)])
    assert s.active_adapters() == ["lora-qv-r8", "diablo-n64"]
    assert s.generate(PROMPT, 8, 0.0)


def test_two_sessions_on_two_threads(engine):
    lora = engine.load_adapter(str(LORA))
    wegeft = engine.load_adapter(str(WEGEFT))
    want = {"lora": cli(PROMPT, LORA), "wegeft": cli(PROMPT2, WEGEFT)}
    jobs = {"lora": (lora, PROMPT), "wegeft": (wegeft, PROMPT2)}
    got: dict[str, str] = {}
    errors: list[BaseException] = []

    def work(key: str) -> None:
        try:
            adapter, prompt = jobs[key]
            s = engine.session()
            s.set_adapters([graft.AdapterUse(adapter=adapter, scale=1.0)])
            got[key] = s.generate(prompt, N, 0.0)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert got == want


def test_one_session_from_two_threads_waits(engine):
    s = engine.session()
    out: list[str] = []

    def work() -> None:
        s.reset()
        out.append(s.generate(PROMPT, 8, 0.0))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2 and all(o for o in out)


class Collect(graft.TokenListener):
    def __init__(self, stop_after: int | None = None, on_first=None):
        self.pieces: list[str] = []
        self.stop_after = stop_after
        self.on_first = on_first

    def on_token(self, text: str) -> bool:
        self.pieces.append(text)
        if len(self.pieces) == 1 and self.on_first:
            self.on_first()
        return self.stop_after is None or len(self.pieces) < self.stop_after


def test_streaming_gives_the_text_in_order(engine):
    s = engine.session()
    listener = Collect()
    r = s.generate_with(PROMPT, GREEDY, listener)
    assert len(listener.pieces) > 1
    assert "".join(listener.pieces) == r.text == cli(PROMPT)
    assert r.stop_reason in (graft.StopReason.MAX_TOKENS, graft.StopReason.END_OF_GENERATION)
    assert 0 < len(r.tokens) <= N and r.prompt_tokens > 0
    assert r.timings.decode_tokens_per_s > 0


def test_listener_returning_false_stops(engine):
    r = engine.session().generate_with(PROMPT, GREEDY, Collect(stop_after=3))
    assert r.stop_reason == graft.StopReason.CANCELLED and len(r.tokens) == 3


def test_cancel_from_another_thread(engine):
    s = engine.session()
    long = graft.GenerateOptions(max_tokens=200, temperature=0.0, stop_at_eog=False)
    listener = Collect(on_first=lambda: threading.Thread(target=s.cancel).start())
    r = s.generate_with(PROMPT, long, listener)
    assert r.stop_reason == graft.StopReason.CANCELLED
    assert len(r.tokens) < 20, len(r.tokens)


def test_async_generate(engine):
    s = engine.session()

    async def main():
        return await s.generate_async(PROMPT, GREEDY)

    r = asyncio.run(main())
    assert r.text == cli(PROMPT)


def test_chat_applies_the_template_and_reuses_the_cache(engine):
    s = engine.session()
    msgs = [graft.ChatMessage(role="user", content="What is the capital of France?")]
    r1 = s.chat(msgs, GREEDY)
    assert r1.text
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    # The same as the CLI on the rendered template (SmolLM2's chatml, no default system turn).
    assert r1.text == cli(prompt) or r1.text.strip() == cli(prompt).strip()
    msgs += [graft.ChatMessage(role="assistant", content=r1.text.strip()),
             graft.ChatMessage(role="user", content="And of Italy?")]
    r2 = s.chat(msgs, GREEDY)
    assert r2.text
    # Only the new turn was evaluated: the cached conversation was reused.
    assert r2.prompt_tokens < 30, r2.prompt_tokens


def test_training_changes_the_output_and_loads(engine, tmp_path):
    out = tmp_path / "fox.gguf"
    examples = [graft.TrainExample(prompt="", completion="The capital of France is Rome. " * 8)] * 4
    t = engine.trainer(graft.TrainOptions(
        method="lora", output_path=str(out), examples=examples, steps=12, learning_rate=0.01,
        rank=4, context_length=64, seed=1))
    seen: list[graft.TrainProgress] = []

    class Progress(graft.TrainListener):
        def on_progress(self, p):
            seen.append(p)
            return True

    report = t.run(Progress())
    assert report.steps == 12 and not report.stopped
    assert [p.step for p in seen] == list(range(1, 13))
    assert seen[-1].loss < seen[0].loss
    assert t.parameters() > 0
    adapter = engine.load_adapter(str(out))
    s = engine.session()
    base = s.generate(PROMPT, N, 0.0)
    s.reset()
    s.set_adapters([graft.AdapterUse(adapter=adapter, scale=1.0)])
    assert s.generate(PROMPT, N, 0.0) != base


def test_training_cancel_leaves_a_loadable_checkpoint(engine, tmp_path):
    out = tmp_path / "stopped.gguf"
    t = engine.trainer(graft.TrainOptions(
        method="diablo", output_path=str(out), blocks=64, steps=50, context_length=32,
        examples=[graft.TrainExample(prompt="Q: hi\nA:", completion=" hello there")] * 4))

    class CancelAt2(graft.TrainListener):
        def on_progress(self, p):
            if p.step == 2:
                threading.Thread(target=t.cancel).start()
            return True

    report = t.run(CancelAt2())
    assert report.stopped and 2 <= report.steps < 50
    a = engine.load_adapter(str(out))
    assert a.kind() == graft.AdapterKind.DIABLO
    # Resuming continues from the checkpoint's step (here with gradient checkpointing).
    t2 = engine.trainer(graft.TrainOptions(
        method="diablo", output_path=str(out), resume_path=str(out), steps=report.steps + 1,
        context_length=32, examples=[graft.TrainExample(prompt="Q: hi\nA:", completion=" yo")],
        gradient_checkpointing=True))
    assert t2.run().steps == report.steps + 1


# ---- errors ----------------------------------------------------------------------------------

def test_missing_file():
    with pytest.raises(graft.GraftError.File) as e:
        graft.Engine("/nonexistent/model.gguf")
    assert "/nonexistent/model.gguf" in str(e.value)


def test_directory_as_model(tmp_path):
    with pytest.raises(graft.GraftError.File):
        graft.Engine(str(tmp_path))


def test_truncated_gguf(tmp_path):
    p = tmp_path / "truncated.gguf"
    with open(MODEL, "rb") as f:
        p.write_bytes(f.read(1_000_000))
    with pytest.raises(graft.GraftError.InvalidModel):
        graft.Engine(str(p))


def test_not_a_gguf(tmp_path):
    p = tmp_path / "text.gguf"
    p.write_text("hello")
    with pytest.raises(graft.GraftError.InvalidModel):
        graft.Engine(str(p))


def test_missing_adapter(engine):
    with pytest.raises(graft.GraftError.File):
        engine.load_adapter("/nonexistent/adapter.gguf")


def test_model_file_as_adapter(engine):
    with pytest.raises(graft.GraftError.InvalidAdapter):
        engine.load_adapter(str(MODEL))


def test_adapter_for_another_architecture(engine, tmp_path):
    # A LoRA trained over qwen2-tiny does not load on SmolLM2 (llama).
    qwen = graft.Engine.open(str(QWEN), graft.EngineOptions(threads=THREADS))
    out = tmp_path / "qwen-lora.gguf"
    qwen.trainer(graft.TrainOptions(output_path=str(out), steps=1, context_length=16, rank=2,
                                    examples=[graft.TrainExample(completion="the cat sat")] * 2)).run()
    with pytest.raises(graft.GraftError.InvalidAdapter) as e:
        engine.load_adapter(str(out))
    assert "architecture" in str(e.value)
    check = engine.check_adapter(str(out))
    assert not check.fits and "architecture" in check.reason


def test_adapter_for_another_base(engine, tmp_path):
    # An adapter trained here records this base's fingerprint; the same file with another
    # fingerprint is an adapter made for another base model.
    out = tmp_path / "mine.gguf"
    engine.trainer(graft.TrainOptions(output_path=str(out), steps=1, context_length=16, rank=2,
                                      examples=[graft.TrainExample(completion="the cat sat")] * 2)).run()
    fp = engine.info().fingerprint.encode()
    data = out.read_bytes()
    assert data.count(fp) == 1
    other = bytes(reversed(fp))
    assert len(other) == len(fp) and other != fp
    bad = tmp_path / "other-base.gguf"
    bad.write_bytes(data.replace(fp, other))
    with pytest.raises(graft.GraftError.WrongBase) as e:
        engine.load_adapter(str(bad))
    assert "another base model" in str(e.value)


def test_lora_whose_shapes_do_not_fit(engine, tmp_path):
    import numpy as np
    import gguf

    p = tmp_path / "bad-shape.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", 8.0)
    w.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((8, 100), dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((576, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(graft.GraftError.InvalidAdapter) as e:
        engine.load_adapter(str(p))
    assert "blk.0.attn_q" in str(e.value)


def test_context_full():
    e = graft.Engine.open(str(MODEL), graft.EngineOptions(threads=THREADS, context_length=8))
    with pytest.raises(graft.GraftError.ContextFull):
        e.session().generate(PROMPT, 4, 0.0)


def test_invalid_arguments(engine):
    s = engine.session()
    with pytest.raises(graft.GraftError.InvalidArgument):
        s.generate_with(PROMPT, graft.GenerateOptions(temperature=-1.0))
    with pytest.raises(graft.GraftError.InvalidArgument):
        s.generate("", 4, 0.0)
    with pytest.raises(graft.GraftError.InvalidArgument):
        graft.Engine.open(str(MODEL), graft.EngineOptions(threads=0))
    with pytest.raises(graft.GraftError.InvalidArgument) as e:
        graft.Engine.open(str(MODEL), graft.EngineOptions(backend="metal"))
    assert "available: cpu" in str(e.value)
    with pytest.raises(graft.GraftError.InvalidArgument):
        graft.Engine.open(str(MODEL), graft.EngineOptions(backend="tpu"))
    on_cpu = graft.Engine.open(str(MODEL), graft.EngineOptions(threads=THREADS, backend="cpu"))
    assert on_cpu.session().generate(PROMPT, 2, 0.0)
    repacked = graft.Engine.open(str(MODEL_Q4_0), graft.EngineOptions(threads=THREADS, cpu_repack=True))
    assert repacked.session().generate(PROMPT, 2, 0.0)
    repacked.release()
    if "wgpu" in os.environ.get("GRAFT_REQUIRE_DEVICE", ""):
        # The last 2 layers on the device (lavapipe in CI), the rest on the CPU.
        split = graft.Engine.open(str(MODEL), graft.EngineOptions(threads=THREADS, backend="wgpu",
                                                                  gpu_layers=2))
        assert split.session().generate(PROMPT, 2, 0.0)
        # Training runs where the engine's sessions run: the same loss as on the CPU (ggml's
        # standard ops there, the trainer's GEMM rewrites here), some nodes on the device.
        with tempfile.TemporaryDirectory() as d:
            ex = [graft.TrainExample(completion="the cat sat on the mat")]
            runs = [e.trainer(graft.TrainOptions(output_path=str(Path(d) / f"{i}.gguf"), steps=1,
                                                 context_length=16, rank=2, examples=ex)).run()
                    for i, e in enumerate([split, on_cpu])]
        assert runs[0].backend == "wgpu" and runs[1].backend == "cpu"
        assert 0 < runs[0].nodes_on_device < runs[0].nodes_total
        assert abs(runs[0].final_loss - runs[1].final_loss) < 1e-2 * runs[1].final_loss
        split.release()
    on_cpu.release()
    with pytest.raises(graft.GraftError.InvalidArgument):
        engine.trainer(graft.TrainOptions(output_path="x.gguf", method="nope",
                                          examples=[graft.TrainExample(completion="a b c")]))


def test_train_output_folder_is_checked_first(engine, tmp_path):
    with pytest.raises(graft.GraftError.File) as e:
        engine.trainer(graft.TrainOptions(output_path=str(tmp_path / "no" / "such" / "a.gguf"),
                                          examples=[graft.TrainExample(completion="a b c")]))
    assert "does not exist" in str(e.value)


def test_listener_that_raises_becomes_an_error(engine):
    class Boom(graft.TokenListener):
        def on_token(self, text):
            raise RuntimeError("boom")

    s = engine.session()
    with pytest.raises(graft.GraftError.Callback):
        s.generate_with(PROMPT, GREEDY, Boom())
    # The session is still usable.
    s.reset()
    assert s.generate(PROMPT, N, 0.0) == cli(PROMPT)


def test_use_after_close():
    e = graft.Engine.open(str(MODEL), graft.EngineOptions(threads=THREADS))
    s = e.session()
    e.release()
    with pytest.raises(graft.GraftError.Closed):
        e.session()
    with pytest.raises(graft.GraftError.Closed):
        e.load_adapter(str(LORA))
    # A session made before keeps working until it is closed itself.
    assert s.generate(PROMPT, 4, 0.0)
    s.release()
    with pytest.raises(graft.GraftError.Closed):
        s.generate(PROMPT, 4, 0.0)


def test_a_panic_does_not_cross_the_boundary():
    with pytest.raises(graft.InternalError):
        graft.debug_panic()
    assert graft.version()
