#!/usr/bin/env bash
# llama.cpp's reference outputs, computed on this machine, for the tests that compare graft with
# llama.cpp (runtime/tests/reference_llamacpp.rs, adapters_reference.rs).
#
#   scripts/references.sh            make them if this machine has none yet, then link them
#   scripts/references.sh --env      only make the llama-cpp-python environment; print its python
#   scripts/references.sh --env-avx2 the same, built for an AVX2-only x86-64 CPU (what llama.cpp
#                                    runs on AMD Zen 2/3 and older Intel), for benchmarks of that
#                                    instruction set on a CPU that has more (scripts/bench.py --isa)
#
# Why on this machine: ggml (in graft and in llama.cpp alike) is compiled with -march=native, and
# its prompt kernels (tinyBLAS, quantized dot products) round differently on AVX-512 and on AVX2,
# so llama.cpp's logits move by up to ~1 between CPUs while graft and llama.cpp on the same CPU
# agree exactly. References made elsewhere would test the CPU, not graft.
#
# What it does (each step skipped when its output is cached):
#   1. llama-cpp-python (pinned below) built from source for this CPU (~15 min on 2 cores), its
#      wheel and a venv with it, gguf and numpy kept in
#        $GRAFT_CACHE/llama-cpp-python-<version>-<cpu hash>/{wheel,venv}
#   2. runtime/tests/fixtures/gen_reference.py and gen_adapter_reference.py (~5 min) write every
#      llama.cpp output (base models in every type, qwen2-tiny, LoRA, LoPA, merged-weight DiaBlo and
#      WeGeFT, perplexity, greedy tokens with their top-2 margins) into
#        $GRAFT_CACHE/references/<key>/{reference,adapters,machine.json}
#      where <key> hashes the CPU (model name and ISA flags, scripts/machine_info.sh --cpu), the
#      llama-cpp-python version and the scripts that make the models, adapters and references.
#   3. .cache/references in the repository becomes a link to that folder; the tests read it there
#      (or from $GRAFT_REFERENCES_DIR) and check its machine.json against this CPU.
#
# GRAFT_CACHE defaults to ${XDG_CACHE_HOME:-~/.cache}/graft: outside the clone, so fresh clones (CI)
# reuse it. Needs the models and adapters of scripts/setup_test_data.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

LLAMA_CPP_PYTHON=0.3.36
CACHE="${GRAFT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/graft}"
FIX=runtime/tests/fixtures

log() { echo "[references] $*"; }
die() { echo "[references] ERROR: $*" >&2; exit 1; }
sha() { sha256sum "$@" | cut -c1-64; }

cpu="$(scripts/machine_info.sh --cpu)"
cpu_hash="$(printf '%s' "$cpu" | sha | cut -c1-12)"
ENV_DIR="$CACHE/llama-cpp-python-$LLAMA_CPP_PYTHON-$cpu_hash"
CMAKE_ISA=()
if [[ "${1:-}" == "--env-avx2" ]]; then
    # ggml's instruction-set options as an AVX2-only build sets them; nothing native.
    ENV_DIR="$CACHE/llama-cpp-python-$LLAMA_CPP_PYTHON-avx2"
    CMAKE_ISA=(-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON
               -DGGML_FMA=ON -DGGML_F16C=ON)
fi
PY="$ENV_DIR/venv/bin/python"

# Runs "$@" with its output in $1's log file, printing a line a minute so a CI log shows progress.
with_heartbeat() {
    local logfile="$1" what="$2"
    shift 2
    "$@" >"$logfile" 2>&1 &
    local pid=$! start=$SECONDS
    while kill -0 "$pid" 2>/dev/null; do
        sleep 5
        if (( (SECONDS - start) % 60 < 5 && SECONDS - start >= 60 )); then
            log "  $what: $(( (SECONDS - start) / 60 )) min"
        fi
    done
    if ! wait "$pid"; then
        tail -n 40 "$logfile" >&2
        die "$what failed (full log: $logfile)"
    fi
}

ensure_env() {
    if [[ -x "$PY" ]] && "$PY" -c "import llama_cpp, gguf, numpy" >/dev/null 2>&1 \
        && [[ "$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')" == "$LLAMA_CPP_PYTHON" ]]; then
        return
    fi
    mkdir -p "$ENV_DIR"
    rm -rf "$ENV_DIR/venv"
    python3 -m venv "$ENV_DIR/venv"
    "$ENV_DIR/venv/bin/pip" install -q --upgrade pip
    local wheel
    wheel="$(ls "$ENV_DIR"/wheel/llama_cpp_python-"$LLAMA_CPP_PYTHON"-*.whl 2>/dev/null | head -n1 || true)"
    if [[ -z "$wheel" ]]; then
        command -v cmake >/dev/null || die "cmake is missing (scripts/install_deps.sh installs it)"
        log "building llama-cpp-python $LLAMA_CPP_PYTHON from source for ${CMAKE_ISA[*]:-this CPU ($cpu)}"
        log "  ~15 min on 2 cores, once per CPU kind; the wheel is kept in $ENV_DIR/wheel"
        rm -rf "$ENV_DIR/wheel.tmp"
        # --no-binary: a prebuilt generic wheel would run other kernels than graft's native ggml.
        # --no-cache-dir: pip's wheel cache is keyed by the sdist alone, so a wheel built for
        # other CMAKE_ARGS (or another CPU) would come back from it.
        with_heartbeat "$ENV_DIR/wheel-build.log" "llama-cpp-python build" \
            env CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" CMAKE_ARGS="${CMAKE_ISA[*]}" \
            "$ENV_DIR/venv/bin/pip" wheel --no-deps --no-binary llama-cpp-python --no-cache-dir \
            -w "$ENV_DIR/wheel.tmp" "llama-cpp-python==$LLAMA_CPP_PYTHON"
        mv -T "$ENV_DIR/wheel.tmp" "$ENV_DIR/wheel"
        wheel="$(ls "$ENV_DIR"/wheel/llama_cpp_python-"$LLAMA_CPP_PYTHON"-*.whl | head -n1)"
    fi
    log "venv with $(basename "$wheel") and scripts/requirements-ref.txt"
    "$ENV_DIR/venv/bin/pip" install -q "$wheel" -r scripts/requirements-ref.txt
    "$PY" -c "import llama_cpp, gguf, numpy" || die "the llama-cpp-python venv does not import"
}

if [[ "${1:-}" == "--env" || "${1:-}" == "--env-avx2" ]]; then
    ensure_env >&2
    echo "$PY"
    exit 0
fi
[[ $# -eq 0 ]] || die "usage: scripts/references.sh [--env]"

# Everything the references are a function of, besides the model bytes (checked by sha256 in the
# scripts that make them and again by the tests).
inputs=(
    "$FIX/gen_reference.py" "$FIX/gen_adapter_reference.py" "$FIX/adapters/manifest.json"
    scripts/make_variants.py scripts/make_qwen2_tiny.py scripts/make_adapters.py
    scripts/fetch_model.sh scripts/requirements-ref.txt
)
key="$( { printf '%s\n' "$cpu" "llama-cpp-python $LLAMA_CPP_PYTHON"; sha "${inputs[@]}"; } | sha | cut -c1-16)"
REF_DIR="$CACHE/references/$cpu_hash-$key"

if [[ -f "$REF_DIR/machine.json" ]]; then
    log "cached for this CPU: $REF_DIR"
else
    ensure_env
    mkdir -p "$CACHE/references"
    tmp="$(mktemp -d "$CACHE/references/.tmp-XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    log "llama.cpp reference outputs -> $REF_DIR (~5 min)"
    OPENBLAS_NUM_THREADS=1 "$PY" "$FIX/gen_reference.py" --out "$tmp/reference"
    OPENBLAS_NUM_THREADS=1 "$PY" "$FIX/gen_adapter_reference.py" --out "$tmp/adapters" \
        --ref "$tmp/reference" --tmp "$tmp"
    "$PY" - "$tmp/machine.json" "$cpu" "$key" <<'EOF'
import json, sys, datetime, platform
import llama_cpp
from llama_cpp import llama_cpp as c
out, cpu, key = sys.argv[1:]
json.dump({"cpu": cpu, "key": key, "machine": platform.machine(),
           "llama_cpp_python_version": llama_cpp.__version__,
           "system_info": c.llama_print_system_info().decode().strip(),
           "made": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
          open(out, "w"), indent=2)
EOF
    rm -rf "$REF_DIR"
    mv -T "$tmp" "$REF_DIR"
    trap - EXIT
fi
mkdir -p .cache
ln -sfn "$REF_DIR" .cache/references
log "ok: .cache/references -> $REF_DIR"
