#!/usr/bin/env python3
"""Adapters for the adapter benchmarks (README), into .cache/adapters/bench/ (not used by tests):

  lora-r16-all.gguf      LoRA rank 16 on all attention and MLP targets of all 30 layers, F16
                         (~10 MB: also the "load a 10 MB adapter" file)
  lora-r16-all-b.gguf    the same shape, another seed (for switch timing)
  diablo-n64-all.gguf    DiaBlo N=64 on all 7 targets of all layers, F32
  wegeft-r64-all.gguf    WeGeFT rank 64, a pair per target kind per layer, F32
  wegeft-r16-shared.gguf WeGeFT rank 16 in the paper's LLM layout: one pair per target kind,
                         shared by all layers, all 7 kinds, F32
  lora-r64-all.gguf      LoRA rank 64 on all targets, F32: about WeGeFT r64's multiply-adds
  *-f16.gguf             diablo-n64-all, wegeft-r64-all and wegeft-r16-shared stored in F16
  lora-r8-qv-{0..9}.gguf ten small LoRAs (RSS with 10 adapters loaded)

With --model M (any llama/qwen2 GGUF), instead: the two adapters of the batched-decoding
benchmark for that model's geometry, into .cache/adapters/bench/<model stem>/:

  lora-r8-qv.gguf        LoRA rank 8 on attn_q and attn_v of all layers, F32
  diablo-n64-all.gguf    DiaBlo N=64 on all 7 targets of all layers, F32

Uses the builders of make_adapters.py (gguf + numpy only).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_adapters as ma  # noqa: E402
from gguf import GGMLQuantizationType as QT  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", type=Path, help="make the batched-benchmark adapters for this model")
args = ap.parse_args()
out = ma.ROOT / ".cache" / "adapters" / "bench"
if args.model:
    from gguf_gen import geometry  # noqa: E402

    ma.ARCH, n_layer, ma.SHAPE = geometry(args.model)
    ma.ALL_LAYERS = list(range(n_layer))
    out = out / args.model.name.removesuffix(".gguf")
out.mkdir(parents=True, exist_ok=True)
jobs = [
    lambda: ma.make_lora("lora-r16-all.gguf", 501, 16, 32.0, ma.KINDS, ma.ALL_LAYERS, QT.F16, 0.05),
    lambda: ma.make_lora("lora-r16-all-b.gguf", 502, 16, 32.0, ma.KINDS, ma.ALL_LAYERS, QT.F16, 0.05),
    lambda: ma.make_diablo("diablo-n64-all.gguf", 503, 64, ma.KINDS, ma.ALL_LAYERS, QT.F32, 0.05),
    lambda: ma.make_wegeft("wegeft-r64-all.gguf", 504, 64, 64.0, {k: ma.ALL_LAYERS for k in ma.KINDS}, [],
                           QT.F32, 0.1),
    lambda: ma.make_wegeft("wegeft-r16-shared.gguf", 505, 16, 16.0, {}, ma.KINDS, QT.F32, 0.1),
    # LoRA with WeGeFT r64's multiply-adds per token (r·(n_in + n_out) vs 2·r·n_in), F32 like it.
    lambda: ma.make_lora("lora-r64-all.gguf", 506, 64, 128.0, ma.KINDS, ma.ALL_LAYERS, QT.F32, 0.05),
    # The same adapters stored in F16 (half the bytes read per token).
    lambda: ma.make_diablo("diablo-n64-all-f16.gguf", 503, 64, ma.KINDS, ma.ALL_LAYERS, QT.F16, 0.05),
    lambda: ma.make_wegeft("wegeft-r64-all-f16.gguf", 504, 64, 64.0, {k: ma.ALL_LAYERS for k in ma.KINDS}, [],
                           QT.F16, 0.1),
    lambda: ma.make_wegeft("wegeft-r16-shared-f16.gguf", 505, 16, 16.0, {}, ma.KINDS, QT.F16, 0.1),
] + [
    (lambda i=i: ma.make_lora(f"lora-r8-qv-{i}.gguf", 600 + i, 8, 16.0, ["attn_q", "attn_v"], ma.ALL_LAYERS,
                              QT.F32, 0.05))
    for i in range(10)
]
if args.model:
    jobs = [
        lambda: ma.make_lora("lora-r8-qv.gguf", 701, 8, 16.0, ["attn_q", "attn_v"], ma.ALL_LAYERS, QT.F32,
                             0.05),
        lambda: ma.make_diablo("diablo-n64-all.gguf", 702, 64, ma.KINDS, ma.ALL_LAYERS, QT.F32, 0.05),
    ]
for job in jobs:
    ad = job()
    p = out / ad.file
    if p.is_file():
        print(f"{p}: present")
        continue
    ad.write(p)
    print(f"{p}: {p.stat().st_size / 1e6:.1f} MB")
