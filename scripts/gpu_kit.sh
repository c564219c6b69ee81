#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on a GPU machine that has nvcc, cmake and Python but no
# Rust toolchain and no network, into .cache/gpu-kit (about 40 MiB; the device tool carries
# ignored paths of at most 64 MiB):
#   bin/graft, bin/conformance   release builds made here (the op conformance test binary)
#   ggml/                        the pinned ggml sources, only what the CUDA and Vulkan backend
#                                libraries build from
#   models/                      qwen2-tiny (real files, tiny) and SmolLM2-135M's header, which
#                                scripts/synth_model.py expands there into a full-size file with
#                                random weights (the real 92 MB file does not fit)
#   adapters/, data/             SmolLM2 adapters of each kind and a text to score
# Then, on the device: scripts/gpu_check.sh (carry .cache/gpu-kit).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
KIT=.cache/gpu-kit
PY=.cache/venv/bin/python
[[ -x $PY ]] || { echo "gpu_kit.sh: run scripts/setup_test_data.sh first (.cache/venv, models)" >&2; exit 1; }
rm -rf "$KIT"
mkdir -p "$KIT"/{bin,models,adapters,data}

# The lent machine's CPU is not this one: ggml is built for AVX2 (any x86-64 server CPU of the
# last decade), in its own target folder, as scripts/bench.py's AVX2 builds are.
export GRAFT_GGML_ISA=avx2 MMTEST_FEATURE=sse2,avx,avx2,fma CARGO_TARGET_DIR=target/avx2
echo "[gpu_kit] release builds (ggml for AVX2)"
cargo build --release -q -p graft --bin graft
cp target/avx2/release/graft "$KIT/bin/graft"
conf=$(cargo test --release -q -p graft-ggml --test conformance --no-run --message-format=json \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "conformance":
        print(m["executable"])' | tail -1)
cp "$conf" "$KIT/bin/conformance"
strip "$KIT/bin/graft" "$KIT/bin/conformance"

echo "[gpu_kit] ggml sources"
src=$(scripts/ggml_backend.sh --print-source)
mkdir -p "$KIT/ggml/src"
cp -r "$src/CMakeLists.txt" "$src/cmake" "$src/include" "$KIT/ggml/"
find "$src/src" -maxdepth 1 -type f -exec cp {} "$KIT/ggml/src/" \;
cp -r "$src/src/ggml-cuda" "$src/src/ggml-vulkan" "$KIT/ggml/src/"
# ggml-base (ggml-quants.c) includes headers of the CPU backend, which the backend libraries
# are built without: those headers only.
mkdir -p "$KIT/ggml/src/ggml-cpu"
{ grep -ho '#include "ggml-cpu/[^"]*"' "$src"/src/*.c "$src"/src/*.cpp || true; } |
    sed 's/.*"ggml-cpu\/\(.*\)"/\1/' | sort -u |
    while read -r h; do cp "$src/src/ggml-cpu/$h" "$KIT/ggml/src/ggml-cpu/"; done

echo "[gpu_kit] models, adapters, data"
cp .cache/models/qwen2-tiny.gguf .cache/models/qwen2-tiny.Q8_0.gguf \
    .cache/models/qwen2-tiny.Q4_0.gguf "$KIT/models/"
for q in Q4_0 Q8_0; do
    $PY scripts/synth_model.py header ".cache/models/SmolLM2-135M-Instruct.$q.gguf" \
        "$KIT/models/SmolLM2-135M-synthetic.$q.header"
done
for a in lora-all-r4-f16 diablo-n64 wegeft-r8 lopa-random; do
    cp ".cache/adapters/$a.gguf" "$KIT/adapters/"
done
cp "$(find .cache/data -name '*.txt' | sort | tail -1)" "$KIT/data/text.txt"

size=$(du -sm "$KIT" | cut -f1)
echo "[gpu_kit] $KIT: $size MiB"
[[ $size -le 60 ]] || { echo "gpu_kit.sh: $size MiB is more than the device tool carries" >&2; exit 1; }
