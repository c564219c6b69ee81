#!/usr/bin/env bash
# Compiles ggml's CUDA backend from the pinned sources on a machine without a GPU or a CUDA
# install, with the CUDA toolkit from PyPI, configured as scripts/ggml_backend.sh cuda configures
# it for the GPU check (sm_90 by default; CMAKE_CUDA_ARCHITECTURES overrides):
#
#   scripts/cuda_compile_check.sh [JOBS]          (--configure-only: stop after cmake's configure)
#
# Not part of scripts/test.sh: the whole library is about 150 CUDA objects, about an hour on 2
# cores. The toolkit (CUDA 13: PyPI's cu12 packages carry no nvcc driver) is installed under
# .cache/cuda-toolkit and laid out as a toolkit root; the build goes to .cache/cuda-check.
# PyPI has no driver stub (libcuda.so), so the check builds with GGML_CUDA_NO_VMM=ON, which
# only drops the direct link to the driver.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
configure_only=0
if [[ ${1:-} == --configure-only ]]; then
    configure_only=1
    shift
fi
JOBS=${1:-$(nproc)}
TK=$ROOT/.cache/cuda-toolkit
if [[ ! -x $TK/root/bin/nvcc ]]; then
    echo "[cuda_check] installing the CUDA toolkit from PyPI into $TK"
    python3 -m venv "$TK/venv"
    "$TK/venv/bin/pip" install -q nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cublas nvidia-cuda-cccl
    cu=$(find "$TK/venv" -type d -path '*/site-packages/nvidia/cu1[0-9]' | head -1)
    [[ -x $cu/bin/nvcc ]] || { echo "cuda_compile_check.sh: no nvcc in the PyPI packages" >&2; exit 1; }
    rm -rf "$TK/root"
    mkdir -p "$TK/root/lib64"
    ln -s "$cu/bin" "$TK/root/bin"
    ln -s "$cu/nvvm" "$TK/root/nvvm"
    ln -s "$cu/include" "$TK/root/include"
    # Development names (libcudart.so, ...) beside the versioned files; nvcc.profile reads lib/.
    for f in "$cu"/lib/*.so.*; do
        b=$(basename "$f")
        ln -s "$f" "$TK/root/lib64/$b"
        ln -sf "$f" "$TK/root/lib64/${b%%.so.*}.so"
    done
    ln -s "$cu"/lib/*.a "$TK/root/lib64/"
    ln -s lib64 "$TK/root/lib"
fi
"$TK/root/bin/nvcc" --version | tail -1

src=$(cargo metadata --format-version 1 | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
p = [p for p in m["packages"] if p["name"] == "llama-cpp-sys-2"][0]
print(os.path.join(os.path.dirname(p["manifest_path"]), "llama.cpp", "ggml"))')
B=$ROOT/.cache/cuda-check
mkdir -p "$B"
cat >"$B/CMakeLists.txt" <<EOF
cmake_minimum_required(VERSION 3.14)
project(graft_ggml_cuda_check C CXX)
add_subdirectory("$src" ggml)
EOF
export PATH="$TK/root/bin:$PATH" CUDAToolkit_ROOT="$TK/root"
cmake -S "$B" -B "$B/out" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_BACKEND_DL=ON \
    -DGGML_CPU=OFF -DGGML_NATIVE=OFF -DGGML_CUDA=ON -DGGML_CUDA_NCCL=OFF -DGGML_CUDA_FA=OFF \
    -DGGML_CUDA_NO_VMM=ON "-DCMAKE_CUDA_ARCHITECTURES=${CMAKE_CUDA_ARCHITECTURES:-90}" \
    -DCMAKE_CUDA_COMPILER="$TK/root/bin/nvcc" >"$B/configure.log" 2>&1 \
    || { tail -30 "$B/configure.log" >&2; exit 1; }
echo "[cuda_check] configured: $B/out ($(grep -c 'Building CUDA' "$B/out/ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir/build.make") CUDA objects)"
[[ $configure_only == 1 ]] && exit 0
t0=$SECONDS
set +e
cmake --build "$B/out" --target ggml-cuda -j "$JOBS" 2>&1 | tee "$B/build.log" | grep -E '^\[|error'
status=${PIPESTATUS[0]}
set -e
[[ $status -eq 0 ]] || { echo "cuda_compile_check.sh: the CUDA backend did not compile" >&2; exit 1; }
echo "[cuda_check] ggml's CUDA backend compiled in $((SECONDS - t0)) s: $(find "$B/out" -name 'libggml-cuda.so')"
