#!/usr/bin/env bash
# Everything the test suite reads, into the ignored .cache/ folder (each step skipped when its
# output is present):
#   - the default model (SmolLM2-135M-Instruct Q4_1) and the State of the Union texts,
#   - its F32 / Q8_0 / Q4_0 variants, the tiny qwen2 models and the test adapters (made with the pinned PyPI
#     gguf + numpy in .cache/venv; byte-identical to the ones the fixtures were made from),
#   - llama.cpp's tokenizer test vectors.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/fetch_model.sh

VENV=.cache/venv
if ! "$VENV/bin/python" -c "import gguf, numpy" >/dev/null 2>&1; then
    echo "[setup] python venv with $(grep -v '^#' scripts/requirements-ref.txt | xargs)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r scripts/requirements-ref.txt
fi
M=.cache/models
if [ ! -s "$M/SmolLM2-135M-Instruct.F32.gguf" ] || [ ! -s "$M/SmolLM2-135M-Instruct.Q8_0.gguf" ] \
    || [ ! -s "$M/SmolLM2-135M-Instruct.Q4_0.gguf" ]; then
    "$VENV/bin/python" scripts/make_variants.py
fi
if [ ! -s "$M/qwen2-tiny.gguf" ] || [ ! -s "$M/qwen2-tiny.Q4_1.gguf" ]; then
    "$VENV/bin/python" scripts/make_qwen2_tiny.py
fi
A=.cache/adapters
for f in lora-qv-r8 lora-all-r4-f16 lora-ffn-r32-q8 diablo-n7 diablo-n64 wegeft-r8 lopa-saturated lopa-random; do
    if [ ! -s "$A/$f.gguf" ]; then "$VENV/bin/python" scripts/make_adapters.py; break; fi
done
scripts/fetch_vocab_tests.sh
echo "[setup] test data ready in .cache/"
