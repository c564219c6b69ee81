#!/usr/bin/env python3
"""Make the test adapters for SmolLM2-135M-Instruct (llama arch) in .cache/adapters/.

The file layout and math of every adapter type are in ADAPTER_FORMAT.md (project docs). All values
are seeded random numbers (numpy PCG64), except lopa-saturated, which holds exact token-embedding
rows of the base model. Reference outputs made from these files are in
runtime/tests/fixtures/adapters/ (runtime/tests/fixtures/gen_adapter_reference.py); the
parameters of every file are recorded in runtime/tests/fixtures/adapters/manifest.json.

  lora-qv-r8.gguf         lora, rank 8, attn_q + attn_v, all 30 layers, alpha 16, F32
  lora-all-r4-f16.gguf    lora, rank 4, all 7 kinds, all 30 layers, alpha 0 (scale = s_user), F16
  lora-ffn-r32-q8.gguf    lora, rank 32, ffn_gate/ffn_up/ffn_down, layers 0..9, alpha 32, Q8_0
  diablo-n7.gguf          diablo, N=7 (non-divisible block sizes), all 7 kinds, layers 0/13/29, F32
  diablo-n64.gguf         diablo, N=64, attn_q/attn_v/ffn_up, all 30 layers, F16
  wegeft-r8.gguf          wegeft, rank 8, alpha 8: own pairs for attn_q/attn_k in layers 0/15/29,
                          shared pairs (no blk.N. prefix) for attn_v/attn_output/ffn_gate/ffn_up/ffn_down
  lopa-saturated.gguf     lopa, m=4, r=2: fc weights 0, fc2 biases +8 (gate == 1.0 exactly), z_shared
                          = the base model's token_embd rows of tokens LOPA_TOKENS ("The quick brown fox")
  lopa-random.gguf        lopa, m=3, r=4, random weights (gate not saturated), F32

Magnitudes: each random update is sized relative to a typical |w| of the target kind (KIND_STD, the
std of the base weights of that kind) so the logits move by a few units while greedy text stays
sane (see the fixture README for measured effects).

DiaBlo padding: when N does not divide a dimension, the last block sticks out of the matrix; the
out-of-range rows/columns of every block are filled with random values too (they must be ignored:
x is zero-padded and d is cut to n_out), so a loader that indexes them wrongly is caught.

Needs only gguf + numpy (scripts/requirements-ref.txt) and the Q4_1 base model (for the token
embedding rows of lopa-saturated). Output bytes are deterministic; the sha256 of each file is
printed and checked against EXPECTED_SHA256.

Usage: python scripts/make_adapters.py [--force] [--models-dir DIR] [--out DIR] [--manifest FILE]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import sys
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf_gen import add_tensor, ensure, finish, part_path, sha256_file

ROOT = Path(__file__).resolve().parent.parent
BASE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MANIFEST = ROOT / "runtime" / "tests" / "fixtures" / "adapters" / "manifest.json"

# SmolLM2-135M geometry
N_LAYER = 30
N_EMBD = 576
N_FF = 1536
N_EMBD_KV = 192  # 3 kv heads x 64
ALL_LAYERS = list(range(N_LAYER))
ARCH = "llama"  # general.architecture of the files (the base's)
KINDS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
# (n_in, n_out) of y = W x for each kind; the GGUF tensor is ne=[n_in, n_out]
SHAPE = {
    "attn_q": (N_EMBD, N_EMBD),
    "attn_k": (N_EMBD, N_EMBD_KV),
    "attn_v": (N_EMBD, N_EMBD_KV),
    "attn_output": (N_EMBD, N_EMBD),
    "ffn_gate": (N_EMBD, N_FF),
    "ffn_up": (N_EMBD, N_FF),
    "ffn_down": (N_FF, N_EMBD),
}
# rounded std of the base weights of each kind (layer 0), used to size the random updates
KIND_STD = {"attn_q": 0.28, "attn_k": 0.40, "attn_v": 0.047, "attn_output": 0.065,
            "ffn_gate": 0.185, "ffn_up": 0.19, "ffn_down": 0.19}

# lopa-saturated: "The quick brown fox" (the first 4 tokens of the `english` reference prompt)
LOPA_TOKENS = [504, 2365, 6354, 16438]

DTYPE_NAME = {QT.F32: "f32", QT.F16: "f16", QT.Q8_0: "q8_0"}

# Produced with gguf==0.19.0, numpy==2.4.6 (scripts/requirements-ref.txt).
EXPECTED_SHA256: dict[str, str] = {
    "lora-qv-r8.gguf": "7283b563a281bb0ba5ca0d86894a94000af8c2a56d762f1ad5eb7150b70f89b3",
    "lora-all-r4-f16.gguf": "7fd63578b434cddc0439cdc00ee04cffd0df151e9483f3125a78bf1276dcffdd",
    "lora-ffn-r32-q8.gguf": "e8d6db9278ec91e742544cf4812e36b1cf88d3d796f4557056e595b702f81b48",
    "diablo-n7.gguf": "e71f60351c1cad77c75809a51d154bfa30bb6c17ac168992ca3a75c9bfb9ccc3",
    "diablo-n64.gguf": "106def22b3e85c39e5385c643d377b5328551d49715e3c351f7dbe8d3e5ed6c1",
    "wegeft-r8.gguf": "473341f2e49b5257e02796b814c96315f4cd16463bbc5d31c7eca1d7c14d55f9",
    "lopa-saturated.gguf": "53edd5cc22525931f5acffcf7ccc2265225122dbd4908a50701cd7d281356a71",
    "lopa-random.gguf": "85952490439ac54a9f04a66e9c77888c459679d7c03cd923d981a3bfeffc4dcb",
}


def rng_for(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


class Adapter:
    """Collects metadata + tensors; numpy arrays are row-major (numpy shape = reversed ne)."""

    def __init__(self, file: str, adapter_type: str, description: str):
        self.file = file
        self.adapter_type = adapter_type
        self.description = description
        self.kv: list[tuple[str, str, object]] = []
        self.tensors: list[tuple[str, np.ndarray, QT]] = []
        self.manifest: dict = {"file": file, "kind": adapter_type}

    def add(self, name: str, arr: np.ndarray, qtype: QT) -> None:
        self.tensors.append((name, np.ascontiguousarray(arr, dtype=np.float32), qtype))

    def write(self, path: Path) -> None:
        w = gguf.GGUFWriter(part_path(path), ARCH)
        w.add_type("adapter")  # general.type
        w.add_name(path.stem)  # general.name
        w.add_string("adapter.type", self.adapter_type)
        w.add_string("adapter.description", self.description)
        for kind, key, val in self.kv:
            if kind == "f32":
                w.add_float32(key, float(val))
            elif kind == "u32":
                w.add_uint32(key, int(val))
            else:
                w.add_string(key, str(val))
        for name, arr, qtype in self.tensors:
            add_tensor(w, name, arr, qtype)
        finish(w, path)


# ---- lora -----------------------------------------------------------------------------------
def make_lora(file: str, seed: int, rank: int, alpha: float, kinds: list[str], layers: list[int],
              qtype: QT, rel: float) -> Adapter:
    """B A sized so that scale * B A has entries of std ~ rel * KIND_STD (A rows ~ unit norm)."""
    ad = Adapter(file, "lora", f"test lora: rank {rank}, alpha {alpha}, {'/'.join(kinds)}, "
                               f"{len(layers)} layers, {DTYPE_NAME[qtype]}, seed {seed}")
    ad.kv.append(("f32", "adapter.lora.alpha", alpha))
    scale = alpha / rank if alpha else 1.0
    rng = rng_for(seed)
    for il in layers:
        for kind in kinds:
            n_in, n_out = SHAPE[kind]
            a = normal(rng, (rank, n_in), 1.0 / math.sqrt(n_in))  # ne=[n_in, r]
            # entries of B A have std sqrt(r) * std_a * std_b = sqrt(r/n_in) * std_b
            std_b = rel * KIND_STD[kind] * math.sqrt(n_in / rank) / scale
            b = normal(rng, (n_out, rank), std_b)  # ne=[r, n_out]
            ad.add(f"blk.{il}.{kind}.weight.lora_a", a, qtype)
            ad.add(f"blk.{il}.{kind}.weight.lora_b", b, qtype)
    ad.manifest.update({"targets": {"kinds": kinds, "layers": layers}, "rank": rank, "alpha": alpha,
                        "dtype": DTYPE_NAME[qtype], "seed": seed, "rel_std": rel})
    return ad


# ---- diablo ---------------------------------------------------------------------------------
def diablo_geometry(n_in: int, n_out: int, n: int) -> tuple[int, int, int]:
    bs_in = -(-n_in // n)
    bs_out = -(-n_out // n)
    nb = max(-(-n_in // bs_in), -(-n_out // bs_out))
    return bs_in, bs_out, nb


def make_diablo(file: str, seed: int, n: int, kinds: list[str], layers: list[int], qtype: QT,
                rel: float) -> Adapter:
    """Rows of the block-diagonal update get ~ rel times the energy of a base row."""
    ad = Adapter(file, "diablo", f"test diablo: N={n}, {'/'.join(kinds)}, {len(layers)} layers, "
                                 f"{DTYPE_NAME[qtype]}, seed {seed}")
    ad.kv.append(("u32", "adapter.diablo.blocks", n))
    rng = rng_for(seed)
    geom = {}
    for il in layers:
        for kind in kinds:
            n_in, n_out = SHAPE[kind]
            bs_in, bs_out, nb = diablo_geometry(n_in, n_out, n)
            geom[kind] = {"bs_in": bs_in, "bs_out": bs_out, "nb": nb}
            std = rel * KIND_STD[kind] * math.sqrt(n_in / bs_in)
            d = normal(rng, (nb, bs_out, bs_in), std)  # ne=[bs_in, bs_out, Nb]
            ad.add(f"blk.{il}.{kind}.weight.diablo", d, qtype)
    ad.manifest.update({"targets": {"kinds": kinds, "layers": layers}, "blocks": n, "geometry": geom,
                        "dtype": DTYPE_NAME[qtype], "seed": seed, "rel_std": rel,
                        "padding": "out-of-range block entries are random (must be ignored)"})
    return ad


# ---- wegeft ---------------------------------------------------------------------------------
def make_wegeft(file: str, seed: int, rank: int, alpha: float, own: dict[str, list[int]],
                shared: list[str], qtype: QT, rel: float) -> Adapter:
    """phi, psi ~ N(0, sqrt(rel / n_in)): the singular values of scale * phi^T psi are ~ rel."""
    ad = Adapter(file, "wegeft", f"test wegeft: rank {rank}, alpha {alpha}, own pairs "
                                 f"{', '.join(f'{k}@{v}' for k, v in own.items())}, shared "
                                 f"{'/'.join(shared)}, {DTYPE_NAME[qtype]}, seed {seed}")
    ad.kv.append(("f32", "adapter.wegeft.alpha", alpha))
    scale = alpha / rank
    rng = rng_for(seed)

    def pair(prefix: str, kind: str) -> None:
        n_in, _ = SHAPE[kind]
        std = math.sqrt(rel / scale / n_in)
        ad.add(f"{prefix}{kind}.weight.wegeft_phi", normal(rng, (rank, n_in), std), qtype)  # ne=[n_in, r]
        ad.add(f"{prefix}{kind}.weight.wegeft_psi", normal(rng, (rank, n_in), std), qtype)

    for il in ALL_LAYERS:
        for kind, layers in own.items():
            if il in layers:
                pair(f"blk.{il}.", kind)
    for kind in shared:
        pair("", kind)
    ad.manifest.update({"targets": {"own": own, "shared": shared}, "rank": rank, "alpha": alpha,
                        "dtype": DTYPE_NAME[qtype], "seed": seed, "rel_sv": rel})
    return ad


# ---- lopa -----------------------------------------------------------------------------------
def lopa_header(ad: Adapter, m: int, r: int) -> None:
    ad.kv.append(("u32", "adapter.lopa.virtual_tokens", m))
    ad.kv.append(("u32", "adapter.lopa.rank", r))
    ad.kv.append(("str", "adapter.lopa.encoder", "mean_embed"))


def make_lopa_saturated(file: str, token_embd: np.ndarray) -> Adapter:
    m, r, h, d = len(LOPA_TOKENS), 2, N_EMBD, N_EMBD
    ad = Adapter(file, "lopa", "test lopa: fc weights 0, fc2 biases +8 -> gate sigmoid(128) == 1; "
                               f"z_shared = token_embd rows {LOPA_TOKENS}")
    lopa_header(ad, m, r)
    ad.add("lopa.z_shared", token_embd[LOPA_TOKENS], QT.F32)  # ne=[d, m]: m rows of d
    for side, n_out in (("u", m * r), ("v", d * r)):
        ad.add(f"lopa.{side}.fc1.weight", np.zeros((h, h), np.float32), QT.F32)
        ad.add(f"lopa.{side}.fc1.bias", np.zeros((h,), np.float32), QT.F32)
        ad.add(f"lopa.{side}.fc2.weight", np.zeros((n_out, h), np.float32), QT.F32)
        ad.add(f"lopa.{side}.fc2.bias", np.full((n_out,), 8.0, np.float32), QT.F32)
    ad.manifest.update({"virtual_tokens": m, "rank": r, "encoder": "mean_embed", "dtype": "f32",
                        "z_shared_tokens": LOPA_TOKENS, "z_shared_text": "The quick brown fox",
                        "gate": "U V^T = 128 everywhere, sigmoid == 1.0 in f32: Z = z_shared"})
    return ad


def make_lopa_random(file: str, seed: int, m: int, r: int) -> Adapter:
    h, d = N_EMBD, N_EMBD
    ad = Adapter(file, "lopa", f"test lopa: m={m}, r={r}, random weights, seed {seed}")
    lopa_header(ad, m, r)
    rng = rng_for(seed)
    ad.add("lopa.z_shared", normal(rng, (m, d), 0.136), QT.F32)  # ~ token_embd std
    for side, n_out in (("u", m * r), ("v", d * r)):
        # e (mean embedding) has rms ~0.03-0.05: fc1 maps it to O(1) pre-activations
        ad.add(f"lopa.{side}.fc1.weight", normal(rng, (h, h), 25.0 / math.sqrt(h)), QT.F32)
        ad.add(f"lopa.{side}.fc1.bias", normal(rng, (h,), 0.5), QT.F32)
        ad.add(f"lopa.{side}.fc2.weight", normal(rng, (n_out, h), 1.0 / math.sqrt(h)), QT.F32)
        ad.add(f"lopa.{side}.fc2.bias", normal(rng, (n_out,), 0.3), QT.F32)
    ad.manifest.update({"virtual_tokens": m, "rank": r, "encoder": "mean_embed", "dtype": "f32",
                        "seed": seed})
    return ad


def build(token_embd: np.ndarray) -> list[Adapter]:
    return [
        make_lora("lora-qv-r8.gguf", 101, 8, 16.0, ["attn_q", "attn_v"], ALL_LAYERS, QT.F32, 0.08),
        make_lora("lora-all-r4-f16.gguf", 102, 4, 0.0, KINDS, ALL_LAYERS, QT.F16, 0.04),
        make_lora("lora-ffn-r32-q8.gguf", 103, 32, 32.0, ["ffn_gate", "ffn_up", "ffn_down"],
                  list(range(10)), QT.Q8_0, 0.08),
        make_diablo("diablo-n7.gguf", 201, 7, KINDS, [0, 13, 29], QT.F32, 0.15),
        make_diablo("diablo-n64.gguf", 202, 64, ["attn_q", "attn_v", "ffn_up"], ALL_LAYERS, QT.F16, 0.07),
        make_wegeft("wegeft-r8.gguf", 301, 8, 8.0, {"attn_q": [0, 15, 29], "attn_k": [0, 15, 29]},
                    ["attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"], QT.F32, 0.3),
        make_lopa_saturated("lopa-saturated.gguf", token_embd),
        make_lopa_random("lopa-random.gguf", 401, 3, 4),
    ]


def load_token_embd(models_dir: Path) -> np.ndarray:
    src = models_dir / BASE
    if not src.is_file():
        raise SystemExit(f"missing {src}: run scripts/fetch_model.sh first")
    got = sha256_file(src)
    if got != BASE_SHA256:
        raise SystemExit(f"sha256 mismatch for {src}: expected {BASE_SHA256}, got {got}")
    reader = gguf.GGUFReader(src)
    t = next(t for t in reader.tensors if t.name == "token_embd.weight")
    f32 = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
    return f32.reshape(tuple(int(x) for x in reversed(t.shape)))  # (n_vocab, n_embd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=ROOT / ".cache" / "models")
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "adapters")
    ap.add_argument("--manifest", type=Path, default=MANIFEST,
                    help="where to write manifest.json (only when every sha256 matches, or new)")
    ap.add_argument("--force", action="store_true", help="rewrite outputs that already exist")
    args = ap.parse_args()
    print(f"gguf {importlib.metadata.version('gguf')}, numpy {np.__version__}")
    args.out.mkdir(parents=True, exist_ok=True)

    # all adapters are cheap to build in memory (a few seconds); only missing/stale files are written
    adapters = build(load_token_embd(args.models_dir))
    ok = True
    manifest = []
    for ad in adapters:
        out = args.out / ad.file
        digest, matches = ensure(out, EXPECTED_SHA256.get(ad.file), args.force, ad.write, ad.file)
        ok = ok and matches
        manifest.append({**ad.manifest, "sha256": digest, "bytes": out.stat().st_size,
                         "description": ad.description,
                         "tensors": len(ad.tensors)})
    if not ok:
        print("sha256 mismatch: use the pinned versions in scripts/requirements-ref.txt, or regenerate the "
              "fixtures (runtime/tests/fixtures/adapters/README.md) and update EXPECTED_SHA256",
              file=sys.stderr)
        return 1
    if args.manifest and (not args.manifest.is_file() or args.force):
        args.manifest.parent.mkdir(parents=True, exist_ok=True)
        doc = {"base_model_file": BASE, "base_model_sha256": BASE_SHA256,
               "made_by": "scripts/make_adapters.py", "gguf_version": importlib.metadata.version("gguf"),
               "numpy_version": np.__version__, "adapters": manifest}
        args.manifest.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
