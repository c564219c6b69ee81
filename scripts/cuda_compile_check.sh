#!/usr/bin/env bash
# Compiles ggml's CUDA backend from the pinned sources on a machine without a GPU or a CUDA
# install, with the CUDA toolkit from PyPI: scripts/ggml_backend.sh cuda, as the GPU check runs
# it (no flash-attention kernels; sm_90 unless CMAKE_CUDA_ARCHITECTURES says otherwise):
#
#   scripts/cuda_compile_check.sh
#
# Not part of scripts/test.sh: the whole library is about 150 CUDA objects, about an hour on 2
# cores. The toolkit (CUDA 13: PyPI's cu12 packages carry no nvcc driver) is installed under
# .cache/cuda-toolkit and laid out as a toolkit root; the library goes to .cache/cuda-check.
# PyPI has no driver stub (libcuda.so), so the check builds with GGML_CUDA_NO_VMM=ON, which
# only drops the direct link to the driver.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
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
PATH="$TK/root/bin:$PATH" CUDAToolkit_ROOT="$TK/root" \
    CMAKE_CUDA_ARCHITECTURES="${CMAKE_CUDA_ARCHITECTURES:-90}" GGML_CUDA_FA=OFF \
    GGML_BACKEND_CMAKE_ARGS="-DGGML_CUDA_NO_VMM=ON" \
    exec scripts/ggml_backend.sh cuda "$ROOT/.cache/cuda-check"
