#!/usr/bin/env python3
"""A GGUF model with a real model's header and random weights, for benchmarks where the real
file cannot be shipped (the GPU test machine takes about 64 MiB and has no network).

    scripts/synth_model.py header MODEL.gguf OUT.header     (here: keep the header and a layout)
    scripts/synth_model.py expand OUT.header MODEL.gguf       (there: write the full file)

`header` copies the bytes before the tensor data (metadata, tokenizer, tensor table) and
appends a JSON layout of each tensor's type, offset and size; it needs the `gguf` package
(.cache/venv). `expand` needs only the standard library: it writes the header and fills each
tensor with seeded random blocks whose scales are small and finite, so that every kernel runs
on ordinary values. Speed does not depend on the values; tokens do, so compare backends on this
file with each other, never with the real model.
"""
import json
import os
import random
import struct
import sys

MAGIC = b"\nGRAFT-SYNTH-LAYOUT\n"

# ggml type -> (block bytes, elements per block, {byte offset of an f16 scale: its value}).
# The scales give weights of about the spread of a trained model's (standard deviation 0.02),
# so that activations stay in range over the layers and the logits stay moderate.
BLOCKS = {
    0: (4, 1, None),  # F32: filled with ones (norm weights)
    1: (2, 1, None),  # F16: small random values
    2: (18, 32, {0: 0.004}),  # Q4_0: d (q - 8)
    3: (20, 32, {0: 0.004, 2: -0.03}),  # Q4_1: d q + m
    6: (22, 32, {0: 0.002}),  # Q5_0
    7: (24, 32, {0: 0.002, 2: -0.03}),  # Q5_1
    8: (34, 32, {0: 0.00027}),  # Q8_0: d q, q in [-128, 127]
    10: (84, 256, {80: 0.001, 82: 0.0005}),  # Q2_K: d, dmin
    11: (110, 256, {108: 0.0005}),  # Q3_K
    12: (144, 256, {0: 0.0005, 2: 0.0005}),  # Q4_K: d, dmin
    13: (176, 256, {0: 0.0005, 2: 0.0005}),  # Q5_K
    14: (210, 256, {208: 0.000015}),  # Q6_K: d, int8 sub-scales
}


def header(model, out):
    import gguf  # noqa: PLC0415 (only this step needs it)

    r = gguf.GGUFReader(model)
    start = min(t.data_offset for t in r.tensors)
    layout = []
    for t in r.tensors:
        ty = int(t.tensor_type)
        if ty not in BLOCKS:
            sys.exit(f"synth_model.py: {t.name} has ggml type {ty}, which expand cannot fill")
        layout.append({"type": ty, "offset": int(t.data_offset) - start, "bytes": int(t.n_bytes)})
    size = os.path.getsize(model) - start
    with open(model, "rb") as f, open(out, "wb") as o:
        o.write(f.read(start))
        o.write(MAGIC + json.dumps({"data_bytes": size, "tensors": layout}).encode())
    print(f"{out}: {start} header bytes, {len(layout)} tensors, {size} data bytes")


def fill(rng, ty, n):
    size, _, scales = BLOCKS[ty]
    if ty == 0:
        return struct.pack("<f", 1.0) * (n // 4)
    buf = bytearray(rng.randbytes(n))
    if ty == 1:
        # Sign and two mantissa bits random, exponent 7: |x| in [2^-8, 2^-7).
        buf[1::2] = bytes((b & 0x83) | (7 << 2) for b in buf[1::2])
        return buf
    nblocks = n // size
    for off, value in scales.items():
        f16 = struct.pack("<e", value)
        buf[off::size] = f16[:1] * nblocks
        buf[off + 1 :: size] = f16[1:] * nblocks
    return buf


def expand(hdr, out, seed=0):
    raw = open(hdr, "rb").read()
    cut = raw.rindex(MAGIC)
    layout = json.loads(raw[cut + len(MAGIC) :])
    rng = random.Random(seed)
    with open(out + ".part", "wb") as o:
        o.write(raw[:cut])
        pos = 0
        for t in sorted(layout["tensors"], key=lambda t: t["offset"]):
            o.write(b"\0" * (t["offset"] - pos))
            o.write(fill(rng, t["type"], t["bytes"]))
            pos = t["offset"] + t["bytes"]
        o.write(b"\0" * (layout["data_bytes"] - pos))
    os.replace(out + ".part", out)
    print(f"{out}: {os.path.getsize(out)} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("header", "expand"):
        sys.exit(__doc__)
    (header if sys.argv[1] == "header" else expand)(sys.argv[2], sys.argv[3])
