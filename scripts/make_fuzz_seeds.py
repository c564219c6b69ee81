#!/usr/bin/env python3
"""Seed inputs for the fuzz targets that load adapters (fuzz/fuzz_targets/adapter_load.rs and
peft_import.rs): small valid adapters of every kind for the fuzz base model (by default the small
qwen2 test model, .cache/models/qwen2-tiny.gguf), so that libFuzzer starts from files that load
and mutates its way into the validation paths rather than guessing the GGUF layout.

  adapter_load/  lora (F32 q/v, F16 all kinds, Q8_0 rank 32), diablo (N=4 F16, N=3 F32, not
                 dividing the dimensions), wegeft (own and shared pairs), lopa (m=2, r=2),
                 and a llama.cpp-style LoRA without graft's metadata
  peft_import/   adapter_config.json, a NUL byte, adapter_model.safetensors: F32 q/v, BF16
                 with rank_pattern/alpha_pattern, rsLoRA over MLP targets

The layouts are those of ADAPTER_FORMAT.md (project docs). Deterministic (numpy PCG64). Needs
gguf + numpy (scripts/requirements-ref.txt).

Usage: python scripts/make_fuzz_seeds.py [--model M] [--out fuzz/corpus]
"""
from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf_gen import add_tensor, finish, geometry, part_path

ROOT = Path(__file__).resolve().parent.parent
KINDS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
HF = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
      "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
      "ffn_down": "mlp.down_proj"}


def write_adapter(path: Path, arch: str, kind: str, kv: list[tuple[str, object]],
                  tensors: list[tuple[str, np.ndarray, QT]], graft_meta: bool = True) -> None:
    w = gguf.GGUFWriter(part_path(path), arch)
    w.add_type("adapter")
    if graft_meta:
        w.add_name(path.stem)
        w.add_string("adapter.description", f"fuzz seed {path.stem}")
    w.add_string("adapter.type", kind)
    for key, val in kv:
        if isinstance(val, float):
            w.add_float32(key, val)
        elif isinstance(val, int):
            w.add_uint32(key, val)
        else:
            w.add_string(key, str(val))
    for name, arr, qtype in tensors:
        add_tensor(w, name, np.ascontiguousarray(arr, dtype=np.float32), qtype)
    finish(w, path)


def normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def adapters(out: Path, arch: str, n_layer: int, shape: dict[str, tuple[int, int]]) -> None:
    rng = np.random.Generator(np.random.PCG64(7))
    last = n_layer - 1

    def lora(rank: int, kinds: list[str], layers: list[int], qtype: QT):
        t = []
        for il in layers:
            for k in kinds:
                n_in, n_out = shape[k]
                t.append((f"blk.{il}.{k}.weight.lora_a", normal(rng, (rank, n_in), 0.1), qtype))
                t.append((f"blk.{il}.{k}.weight.lora_b", normal(rng, (n_out, rank), 0.1), qtype))
        return t

    write_adapter(out / "lora-qv-f32.gguf", arch, "lora", [("adapter.lora.alpha", 4.0)],
                  lora(2, ["attn_q", "attn_v"], list(range(n_layer)), QT.F32))
    write_adapter(out / "lora-all-f16.gguf", arch, "lora", [("adapter.lora.alpha", 0.0)],
                  lora(1, KINDS, [last], QT.F16))
    write_adapter(out / "lora-down-q8.gguf", arch, "lora", [("adapter.lora.alpha", 32.0)],
                  lora(32, ["ffn_down"], [0], QT.Q8_0))
    write_adapter(out / "lora-llamacpp.gguf", arch, "lora", [("adapter.lora.alpha", 2.0)],
                  lora(2, ["attn_k"], [0], QT.F32), graft_meta=False)

    def diablo(n: int, kinds: list[str], qtype: QT):
        t = []
        for k in kinds:
            n_in, n_out = shape[k]
            bs_in, bs_out = -(-n_in // n), -(-n_out // n)
            nb = max(-(-n_in // bs_in), -(-n_out // bs_out))
            t.append((f"blk.0.{k}.weight.diablo", normal(rng, (nb, bs_out, bs_in), 0.05), qtype))
        return t

    write_adapter(out / "diablo-n4-f16.gguf", arch, "diablo", [("adapter.diablo.blocks", 4)],
                  diablo(4, ["attn_q", "ffn_down"], QT.F16))
    write_adapter(out / "diablo-n3-f32.gguf", arch, "diablo", [("adapter.diablo.blocks", 3)],
                  diablo(3, ["attn_v"], QT.F32))

    def pair(prefix: str, k: str, rank: int):
        n_in, _ = shape[k]
        return [(f"{prefix}{k}.weight.wegeft_{p}", normal(rng, (rank, n_in), 0.1), QT.F32)
                for p in ("phi", "psi")]

    write_adapter(out / "wegeft-r2.gguf", arch, "wegeft", [("adapter.wegeft.alpha", 2.0)],
                  pair("", "attn_k", 2) + pair("blk.0.", "ffn_up", 2))

    m, r = 2, 2
    d = shape["attn_q"][0]
    t = [("lopa.z_shared", normal(rng, (m, d), 0.05), QT.F32)]
    for side, n_out in (("u", m * r), ("v", d * r)):
        t += [(f"lopa.{side}.fc1.weight", normal(rng, (d, d), 0.05), QT.F32),
              (f"lopa.{side}.fc1.bias", normal(rng, (d,), 0.05), QT.F32),
              (f"lopa.{side}.fc2.weight", normal(rng, (n_out, d), 0.05), QT.F32),
              (f"lopa.{side}.fc2.bias", normal(rng, (n_out,), 0.05), QT.F32)]
    write_adapter(out / "lopa-m2-r2.gguf", arch, "lopa",
                  [("adapter.lopa.virtual_tokens", m), ("adapter.lopa.rank", r),
                   ("adapter.lopa.encoder", "mean_embed")], t)


def safetensors(tensors: dict[str, np.ndarray], dtype: str) -> bytes:
    """The safetensors layout: u64 header length, JSON header (padded to 8 bytes), data."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        if dtype == "F32":
            blob = arr.astype("<f4").tobytes()
        else:  # BF16: the top half of each f32
            blob = (arr.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def peft(out: Path, n_layer: int, shape: dict[str, tuple[int, int]]) -> None:
    rng = np.random.Generator(np.random.PCG64(8))

    def seed(name: str, config: dict, ranks: dict[tuple[int, str], int], dtype: str) -> None:
        t = {}
        for (il, k), rank in ranks.items():
            n_in, n_out = shape[k]
            prefix = f"base_model.model.model.layers.{il}.{HF[k]}"
            t[f"{prefix}.lora_A.weight"] = normal(rng, (rank, n_in), 0.1)
            t[f"{prefix}.lora_B.weight"] = normal(rng, (n_out, rank), 0.1)
        (out / name).write_bytes(json.dumps(config).encode() + b"\0" + safetensors(t, dtype))

    base = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "bias": "none"}
    seed("qv-f32", {**base, "r": 2, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
         {(il, k): 2 for il in range(n_layer) for k in ("attn_q", "attn_v")}, "F32")
    seed("patterns-bf16", {**base, "r": 2, "lora_alpha": 4, "rank_pattern": {"o_proj": 4},
                           "alpha_pattern": {"o_proj": 16}, "target_modules": ["k_proj", "o_proj"]},
         {(0, "attn_k"): 2, (0, "attn_output"): 4}, "BF16")
    seed("rslora-mlp", {**base, "r": 1, "lora_alpha": 2, "use_rslora": True,
                        "target_modules": ["gate_proj", "up_proj", "down_proj"]},
         {(n_layer - 1, k): 1 for k in ("ffn_gate", "ffn_up", "ffn_down")}, "F32")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / ".cache/models/qwen2-tiny.gguf")
    ap.add_argument("--out", type=Path, default=ROOT / "fuzz/corpus")
    a = ap.parse_args()
    arch, n_layer, shape = geometry(a.model)
    for sub in ("adapter_load", "peft_import"):
        (a.out / sub).mkdir(parents=True, exist_ok=True)
    adapters(a.out / "adapter_load", arch, n_layer, shape)
    peft(a.out / "peft_import", n_layer, shape)
    for sub in ("adapter_load", "peft_import"):
        files = sorted((a.out / sub).glob("*"))
        print(f"{sub}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
