#!/usr/bin/env python3
"""Make F32 / Q8_0 / Q4_0 variants of SmolLM2-135M-Instruct from the Q4_1 GGUF.

Input:  .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf   (scripts/fetch_model.sh)
Output: .cache/models/SmolLM2-135M-Instruct.F32.gguf
        .cache/models/SmolLM2-135M-Instruct.Q8_0.gguf
        .cache/models/SmolLM2-135M-Instruct.Q4_0.gguf

Every tensor of the source is first dequantized to F32 with gguf.quants (the Q4_1 file holds
Q4_1 weight matrices, a Q8_0 token embedding and F32 norms). Then:

  F32   every tensor stays F32 (general.file_type = ALL_F32).
  Q8_0  every 2-D weight matrix except token_embd.weight is quantized to Q8_0 from the F32 values
        with gguf.quants.quantize; token_embd.weight is Q8_0 too; 1-D norms stay F32.
  Q4_0  every 2-D weight matrix except token_embd.weight is quantized to Q4_0; 1-D norms stay F32;
        token_embd.weight is Q8_0.

Token embedding: SmolLM2 ties the output head to token_embd.weight, so that tensor is both the
embedding table and the LM head. llama.cpp's llama-quantize keeps the (tied) output tensor at
higher precision than the rest (Q6_K for Q4_0/Q4_1 files) and the source Q4_1 file stores it as
Q8_0. gguf-py cannot write K-quants, so the quantized variants keep it at Q8_0, i.e. exactly the
bytes of the source file (re-quantizing a dequantized Q8_0 block to Q8_0 reproduces it). The F32
variant stores it as F32.

Metadata is copied key by key, in the source order and with the source value types; only
general.file_type is changed. Tensor order, names and alignment follow the source.

The output is deterministic (same numpy + gguf versions -> same bytes); the sha256 of each file is
printed and checked against EXPECTED_SHA256 below (fixtures in runtime/tests/fixtures/reference/
record the sha256 of the model they were made from). Use the pinned versions in
scripts/requirements-ref.txt.

Usage: python scripts/make_variants.py [--force] [--models-dir DIR]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf_gen import add_tensor, ensure, finish, part_path, sha256_file
from gguf import GGUFValueType as VT
from gguf import LlamaFileType as FT

ROOT = Path(__file__).resolve().parent.parent
STEM = "SmolLM2-135M-Instruct"
SOURCE = f"{STEM}.Q4_1.gguf"
SOURCE_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# variant -> (general.file_type, type of 2-D weight matrices, type of token_embd.weight)
VARIANTS: dict[str, tuple[FT, QT, QT]] = {
    "F32": (FT.ALL_F32, QT.F32, QT.F32),
    "Q8_0": (FT.MOSTLY_Q8_0, QT.Q8_0, QT.Q8_0),
    "Q4_0": (FT.MOSTLY_Q4_0, QT.Q4_0, QT.Q8_0),
}

# Produced with gguf==0.19.0, numpy==2.4.6 (scripts/requirements-ref.txt).
EXPECTED_SHA256: dict[str, str] = {
    "F32": "f0089e79d6755eb5fbbf61cf4a16ba6bd79641f199875d1dc38cef994afdd0fd",
    "Q8_0": "0c1d3326cd9793cfb7296113c063dd5c24e2bd734b48ec1a3d01b7158eca9387",
    "Q4_0": "c624c2bea4349b36453448197f53b3935a96da7934904c124a612716c348a8ff",
}


def copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, file_type: FT) -> None:
    for field in reader.fields.values():
        name = field.name
        if name.startswith("GGUF."):
            continue  # header pseudo-fields (version, counts)
        if name == gguf.Keys.General.ARCHITECTURE:
            continue  # GGUFWriter writes it first, as the source does
        vtype = field.types[0]
        if name == gguf.Keys.General.FILE_TYPE:
            writer.add_key_value(name, int(file_type), vtype)
            continue
        sub_type = None
        if vtype == VT.ARRAY:
            sub_type = field.types[1]
            if len(field.types) > 2:
                raise SystemExit(f"nested array metadata not supported: {name}")
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub_type)


def target_type(name: str, n_dims: int, weight_type: QT, embd_type: QT) -> QT:
    if n_dims < 2:
        return QT.F32  # norms stay F32
    if name == "token_embd.weight":
        return embd_type
    return weight_type


def write_variant(reader: gguf.GGUFReader, dequant: dict[str, np.ndarray], variant: str, out: Path) -> None:
    file_type, weight_type, embd_type = VARIANTS[variant]
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(part_path(out), arch)
    align = reader.fields.get(gguf.Keys.General.ALIGNMENT)
    if align is not None:
        writer.data_alignment = int(align.contents())
    copy_metadata(reader, writer, file_type)
    for t in reader.tensors:
        f32 = dequant[t.name]
        add_tensor(writer, t.name, f32, target_type(t.name, len(t.shape), weight_type, embd_type))
    finish(writer, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=ROOT / ".cache" / "models")
    ap.add_argument("--force", action="store_true", help="rewrite outputs that already exist")
    ap.add_argument("--only", choices=sorted(VARIANTS), action="append", help="make only this variant")
    args = ap.parse_args()

    src = args.models_dir / SOURCE
    if not src.is_file():
        print(f"missing {src}: run scripts/fetch_model.sh first", file=sys.stderr)
        return 1
    got = sha256_file(src)
    if got != SOURCE_SHA256:
        print(f"sha256 mismatch for {src}: expected {SOURCE_SHA256}, got {got}", file=sys.stderr)
        return 1

    print(f"gguf {importlib.metadata.version('gguf')}, numpy {np.__version__}")
    variants = args.only or list(VARIANTS)
    reader = None
    dequant: dict[str, np.ndarray] = {}
    ok = True
    for variant in variants:
        def write(out: Path, variant: str = variant) -> None:
            nonlocal reader
            if reader is None:
                print(f"reading and dequantizing {src}")
                reader = gguf.GGUFReader(src)
                for t in reader.tensors:
                    f32 = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
                    # numpy shape is the reverse of the GGUF (ne0, ne1, ...) shape
                    dequant[t.name] = np.ascontiguousarray(f32.reshape(tuple(int(d) for d in reversed(t.shape))))
            write_variant(reader, dequant, variant, out)

        out = args.models_dir / f"{STEM}.{variant}.gguf"
        _, matches = ensure(out, EXPECTED_SHA256.get(variant), args.force, write, variant)
        ok = ok and matches
    if not ok:
        print("sha256 mismatch: use the pinned versions in scripts/requirements-ref.txt, or regenerate the "
              "fixtures (runtime/tests/fixtures/README.md) and update EXPECTED_SHA256", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
