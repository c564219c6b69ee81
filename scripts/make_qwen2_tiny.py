#!/usr/bin/env python3
"""Write a tiny random-weight qwen2-architecture GGUF and variants of it.

Outputs in .cache/models/ (same random weights in every file):
  qwen2-tiny.gguf        all tensors F32                     (general.file_type ALL_F32)
  qwen2-tiny.F16.gguf    2-D weight matrices F16, rest F32   (MOSTLY_F16)
  qwen2-tiny.Q8_0.gguf   2-D weight matrices Q8_0, rest F32  (MOSTLY_Q8_0)
  qwen2-tiny.Q4_0.gguf   2-D weight matrices Q4_0, rest F32  (MOSTLY_Q4_0)
  qwen2-tiny.Q4_1.gguf   2-D weight matrices Q4_1, rest F32  (MOSTLY_Q4_1)
"2-D weight matrices" includes token_embd.weight and output.weight; norms and the q/k/v biases
stay F32. The quantized tensors are made from the F32 weights with gguf.quants.quantize.
gguf 0.19.0 can dequantize but not quantize K-quants (Q2_K..Q6_K), so there are no K-quant
variants (n_embd 128 is not a multiple of the 256-wide K-quant block anyway).

Model: n_embd 128, 2 blocks, 4 heads (head dim 32), 2 KV heads (GQA), n_ff 352, rope freq base
1e6 (qwen2 uses NEOX-style rope), rms eps 1e-6, context_length 4096, q/k/v biases (no output-
projection bias), separate (untied) output.weight.

Vocabulary: a valid byte-level gpt2 BPE vocab: the 256 byte tokens in GPT-2 order (id 0 = "!"),
then the MERGES below in rank order (one token per merge), then <|endoftext|>, <|im_start|>,
<|im_end|> (CONTROL tokens). tokenizer.ggml.pre = "qwen2", add_bos_token = false,
bos = padding = <|endoftext|>, eos = <|im_end|>.

Weights: numpy Generator(PCG64(SEED)).standard_normal in float32, scaled so that activations
stay O(1) and the logits are well spread (std ~3): embeddings N(0,1), linear layers
N(0, 1/sqrt(fan_in)), biases N(0, 0.5^2), norm weights 1 + N(0, 0.1^2),
output N(0, (3/sqrt(n_embd))^2).

Deterministic: the same numpy + gguf versions give the same bytes (scripts/requirements-ref.txt);
the sha256 of each file is printed and checked against EXPECTED_SHA256.

Usage: python scripts/make_qwen2_tiny.py [--force] [--models-dir DIR]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf_gen import add_tensor, ensure, finish, part_path
from gguf import LlamaFileType as FT

ROOT = Path(__file__).resolve().parent.parent
ARCH = "qwen2"
SEED = 20240613

N_EMBD = 128
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 352
N_CTX_TRAIN = 4096
ROPE_FREQ_BASE = 1000000.0
RMS_EPS = 1e-6
HEAD_DIM = N_EMBD // N_HEAD

MERGES = [
    "Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r", "Ġ s", "a t", "Ġ w", "Ġ o",
    "e n", "Ġ c", "i t", "i s", "a n", "o r", "e s", "Ġ b", "e d", "Ġ f", "in g", "Ġ p",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# file suffix -> (general.file_type, type of the 2-D weight matrices)
VARIANTS: dict[str, tuple[FT, QT]] = {
    "": (FT.ALL_F32, QT.F32),
    "F16": (FT.MOSTLY_F16, QT.F16),
    "Q8_0": (FT.MOSTLY_Q8_0, QT.Q8_0),
    "Q4_0": (FT.MOSTLY_Q4_0, QT.Q4_0),
    "Q4_1": (FT.MOSTLY_Q4_1, QT.Q4_1),
}

# Produced with gguf==0.19.0, numpy==2.4.6 (scripts/requirements-ref.txt).
EXPECTED_SHA256: dict[str, str] = {
    "": "a8ef6b296af60e0439301457eea0b3821b21021b920251df77174c2c3b83fc64",
    "F16": "0ef2653a1cb814d6b4cb4b99349c1dfddca9b7a1cceae40077d3867f511d9f16",
    "Q8_0": "b8a8f05d5ddfefa7eb749f44ed106fd2bd3d7d217b91842e4206e8922f882ad5",
    "Q4_0": "aace5ea98a0851074fbeeb526f5c4a7ed3759d04baee62c961c538a159b65913",
    "Q4_1": "096bc6a96626c2d76a13c626c6a978a209a5f09c67a2f18414941051093fea25",
}


def file_name(suffix: str) -> str:
    return "qwen2-tiny.gguf" if not suffix else f"qwen2-tiny.{suffix}.gguf"


def bytes_to_unicode() -> list[tuple[int, str]]:
    """GPT-2's byte -> printable unicode character table, in GPT-2 vocab order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [(b, chr(c)) for b, c in zip(bs, cs)]


def build_vocab() -> tuple[list[str], list[int], list[str]]:
    tokens = [ch for _, ch in bytes_to_unicode()]
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    known = set(tokens)
    for m in MERGES:
        a, b = m.split(" ")
        assert a in known and b in known, f"merge {m!r} uses unknown token"
        merged = a + b
        assert merged not in known, f"merge {m!r} duplicates a token"
        tokens.append(merged)
        types.append(int(gguf.TokenType.NORMAL))
        known.add(merged)
    for s in SPECIALS:
        tokens.append(s)
        types.append(int(gguf.TokenType.CONTROL))
    return tokens, types, MERGES


def build_weights(n_vocab: int) -> list[tuple[str, np.ndarray]]:
    """(name, float32 array in numpy [rows, cols] = GGUF [ne1, ne0] order), in file order."""
    rng = np.random.Generator(np.random.PCG64(SEED))

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def linear(n_out: int, n_in: int) -> np.ndarray:
        return normal((n_out, n_in), 1.0 / np.sqrt(n_in))

    def norm(n: int) -> np.ndarray:
        return np.float32(1.0) + normal((n,), 0.1)

    n_kv = N_HEAD_KV * HEAD_DIM
    out: list[tuple[str, np.ndarray]] = [("token_embd.weight", normal((n_vocab, N_EMBD), 1.0))]
    for i in range(N_LAYER):
        p = f"blk.{i}."
        out += [
            (p + "attn_norm.weight", norm(N_EMBD)),
            (p + "attn_q.weight", linear(N_EMBD, N_EMBD)),
            (p + "attn_q.bias", normal((N_EMBD,), 0.5)),
            (p + "attn_k.weight", linear(n_kv, N_EMBD)),
            (p + "attn_k.bias", normal((n_kv,), 0.5)),
            (p + "attn_v.weight", linear(n_kv, N_EMBD)),
            (p + "attn_v.bias", normal((n_kv,), 0.5)),
            (p + "attn_output.weight", linear(N_EMBD, N_EMBD)),
            (p + "ffn_norm.weight", norm(N_EMBD)),
            (p + "ffn_gate.weight", linear(N_FF, N_EMBD)),
            (p + "ffn_up.weight", linear(N_FF, N_EMBD)),
            (p + "ffn_down.weight", linear(N_EMBD, N_FF)),
        ]
    out += [
        ("output_norm.weight", norm(N_EMBD)),
        ("output.weight", normal((n_vocab, N_EMBD), 3.0 / np.sqrt(N_EMBD))),
    ]
    return out


def write_model(path: Path, file_type: FT, wtype: QT, vocab, weights) -> None:
    tokens, types, merges = vocab
    w = gguf.GGUFWriter(part_path(path), ARCH)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name("qwen2-tiny")
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(ROPE_FREQ_BASE)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_file_type(int(file_type))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, f32 in weights:
        add_tensor(w, name, f32, wtype if f32.ndim == 2 else QT.F32)
    finish(w, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=ROOT / ".cache" / "models")
    ap.add_argument("--force", action="store_true", help="rewrite outputs that already exist")
    args = ap.parse_args()
    args.models_dir.mkdir(parents=True, exist_ok=True)

    print(f"gguf {importlib.metadata.version('gguf')}, numpy {np.__version__}")
    vocab = build_vocab()
    weights = build_weights(len(vocab[0]))
    print(f"n_vocab {len(vocab[0])}, {len(weights)} tensors, seed {SEED}")
    ok = True
    for suffix, (file_type, wtype) in VARIANTS.items():
        out = args.models_dir / file_name(suffix)
        _, matches = ensure(out, EXPECTED_SHA256.get(suffix), args.force,
                            lambda o, ft=file_type, wt=wtype: write_model(o, ft, wt, vocab, weights),
                            out.name)
        ok = ok and matches
    if not ok:
        print("sha256 mismatch: use the pinned versions in scripts/requirements-ref.txt, or regenerate the "
              "fixtures (runtime/tests/fixtures/README.md) and update EXPECTED_SHA256", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
