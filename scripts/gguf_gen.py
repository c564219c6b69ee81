"""Shared by the deterministic GGUF generators (make_variants.py, make_qwen2_tiny.py,
make_adapters.py): tensor encoding, atomic writing, and the sha256-checked "write the file if
it is missing or stale" step."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import gguf
import numpy as np

QT = gguf.GGMLQuantizationType


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def add_tensor(w: gguf.GGUFWriter, name: str, f32: np.ndarray, qtype: QT) -> None:
    """Adds `f32` (numpy order) as `qtype`: F32 and F16 as they are, others quantized by gguf-py."""
    if qtype == QT.F32:
        w.add_tensor(name, f32)
    elif qtype == QT.F16:
        w.add_tensor(name, f32.astype(np.float16))
    else:
        data = gguf.quants.quantize(f32, qtype)
        w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)


def part_path(path: Path) -> Path:
    """The temporary file a writer for `path` writes to (see `finish`)."""
    return path.with_name(path.name + ".part")


def finish(w: gguf.GGUFWriter, path: Path) -> None:
    """Writes header, metadata and tensors of a writer opened on `part_path(path)`, then renames
    it to `path`, so an interrupted run never leaves a truncated file under the final name."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(part_path(path), path)


def ensure(out: Path, expected: str | None, force: bool, write: Callable[[Path], None],
           label: str) -> tuple[str, bool]:
    """Writes `out` with `write(out)` unless it exists with the expected sha256 (or has none to
    match and `force` is off); prints what happened. Returns (sha256, matches expectation)."""
    if out.is_file() and not force and (not expected or sha256_file(out) == expected):
        print(f"{label}: present {out}")
    else:
        print(f"{label}: writing {out}")
        write(out)
    digest = sha256_file(out)
    ok = not expected or digest == expected
    status = "" if not expected else ("ok" if ok else f"MISMATCH (expected {expected})")
    print(f"{label}: sha256 {digest}  {out.stat().st_size} bytes  {status}")
    return digest, ok


def geometry(model: Path) -> tuple[str, int, dict[str, tuple[int, int]]]:
    """(architecture, layers, {target kind: (n_in, n_out)}) read from a llama/qwen2 model's
    header."""
    r = gguf.GGUFReader(model)

    def field(key: str):
        f = r.fields[key]
        v = f.parts[f.data[0]]
        return bytes(v).decode() if v.dtype == np.uint8 else int(v[0])

    arch = field("general.architecture")
    d = field(f"{arch}.embedding_length")
    ff = field(f"{arch}.feed_forward_length")
    n_head = field(f"{arch}.attention.head_count")
    kv = d // n_head * field(f"{arch}.attention.head_count_kv")
    shape = {"attn_q": (d, d), "attn_k": (d, kv), "attn_v": (d, kv), "attn_output": (d, d),
             "ffn_gate": (d, ff), "ffn_up": (d, ff), "ffn_down": (ff, d)}
    return arch, field(f"{arch}.block_count"), shape
