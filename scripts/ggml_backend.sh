#!/usr/bin/env bash
# Builds one of ggml's backends (CUDA, Vulkan, BLAS) as a library that graft loads at run time
# (GGML_BACKEND_DL), from the same pinned ggml sources graft links:
#
#   scripts/ggml_backend.sh cuda|vulkan|blas [OUT_DIR]
#   scripts/ggml_backend.sh --print-source      (the ggml source directory it builds from)
#
# OUT_DIR (default .cache/backends/<name>-<key>, or $GRAFT_BACKENDS_CACHE/<name>-<key>) receives libggml-<name>.so and the
# libggml-base.so it links; the last line printed is OUT_DIR. Point graft at it with
# GRAFT_BACKEND_DIR=OUT_DIR (or copy both files beside the graft binary):
#   GRAFT_BACKEND_DIR=$(scripts/ggml_backend.sh cuda | tail -1) graft devices
# A finished build is reused. The ggml sources come from cargo's registry (the pinned
# llama-cpp-sys-2 package); GGML_SRC=<llama.cpp/ggml> overrides that where there is no cargo
# (the GPU test machine: scripts/gpu_check.sh). CUDA needs nvcc; it compiles for the GPUs
# nvidia-smi lists (CMAKE_CUDA_ARCHITECTURES overrides). Vulkan needs glslc and the Vulkan
# headers (1.3.261 or later; fetched from Debian 13 where the system's are older), BLAS
# OpenBLAS: this script installs them with apt when missing.
# GGML_BACKEND_CMAKE_ARGS adds cmake definitions (word-split; part of the build's key).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
name=${1:?usage: scripts/ggml_backend.sh cuda|vulkan|blas [OUT_DIR]}
case "$name" in
    cuda | vulkan | blas | --print-source) ;;
    *) echo "ggml_backend.sh: '$name' is not a backend this script builds (cuda, vulkan, blas)" >&2; exit 2 ;;
esac

apt_install() { # installs the Debian packages given, as root or with sudo
    echo "[ggml_backend] apt-get install $*" >&2
    local sudo=""
    [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# Vulkan headers 1.4.309 (Debian 13's libvulkan-dev) under .cache; prints their include dir.
# The package is fetched by its pinned name and checksum; should Debian have replaced it, the
# current one is found in Debian 13's package index and checked against the index's checksum.
vulkan_headers() {
    local dir="${GRAFT_BACKENDS_CACHE:-$ROOT/.cache}/vulkan-headers" mirror=http://deb.debian.org/debian
    local file=pool/main/v/vulkan-loader/libvulkan-dev_1.4.309.0-1_amd64.deb
    local sha=8d329d465e16168afff58b1bd0dd6db46aac2cc3f56054a481b25a04e90b345a
    if [[ ! -f "$dir/.complete" ]]; then
        rm -rf "$dir" && mkdir -p "$dir"
        if ! curl -fsS -m 120 -o "$dir/pkg.deb" "$mirror/$file"; then
            read -r file sha < <(curl -fsS -m 120 "$mirror/dists/trixie/main/binary-amd64/Packages.xz" \
                | xz -dc | awk '/^Package: /{p = ($2 == "libvulkan-dev")}
                    p && /^Filename: /{f = $2} p && /^SHA256: /{print f, $2; exit}')
            curl -fsS -m 120 -o "$dir/pkg.deb" "$mirror/$file" \
                || { echo "ggml_backend.sh: could not fetch $mirror/$file" >&2; exit 1; }
        fi
        echo "$sha  $dir/pkg.deb" | sha256sum -c --quiet - >&2 \
            || { echo "ggml_backend.sh: $file does not have its checksum" >&2; exit 1; }
        dpkg-deb -x "$dir/pkg.deb" "$dir" && rm "$dir/pkg.deb"
        touch "$dir/.complete"
    fi
    echo "$dir/usr/include"
}

if [[ -z "${GGML_SRC:-}" ]]; then
    GGML_SRC=$(cd "$ROOT" && cargo metadata --format-version 1 2>/dev/null | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
p = [p for p in m["packages"] if p["name"] == "llama-cpp-sys-2"][0]
print(os.path.join(os.path.dirname(p["manifest_path"]), "llama.cpp", "ggml"))')
fi
[[ -f "$GGML_SRC/CMakeLists.txt" ]] || { echo "ggml_backend.sh: no ggml sources at $GGML_SRC" >&2; exit 1; }
if [[ $name == --print-source ]]; then
    echo "$GGML_SRC"
    exit 0
fi

args=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_BACKEND_DL=ON -DGGML_CPU=OFF
      -DGGML_NATIVE=OFF -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF -DGGML_CCACHE=OFF
      # The module finds the libggml-base.so copied beside it, and the libraries it links
      # (libcudart, libcublas, ...) where it was built against them.
      -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON "-DCMAKE_INSTALL_RPATH=\$ORIGIN"
      -DCMAKE_INSTALL_RPATH_USE_LINK_PATH=ON)
case "$name" in
    cuda)
        [[ -x /usr/local/cuda/bin/nvcc ]] && PATH="$PATH:/usr/local/cuda/bin"
        command -v nvcc >/dev/null || { echo "ggml_backend.sh: cuda needs nvcc (the CUDA toolkit)" >&2; exit 1; }
        # The GPUs present (nvidia-smi's compute capability, 9.0 -> 90), else cmake's "native".
        arch=${CMAKE_CUDA_ARCHITECTURES:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null \
            | tr -d . | sort -u | paste -sd';')}
        # One GPU, no NCCL; GGML_CUDA_FA=OFF leaves out the flash-attention kernels (a large
        # share of the build; graft uses them only with --flash-attn).
        args+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=${arch:-native}" -DGGML_CUDA_NCCL=OFF
               "-DGGML_CUDA_FA=${GGML_CUDA_FA:-ON}")
        ;;
    vulkan)
        need=()
        command -v glslc >/dev/null || need+=(glslc)
        [[ -f /usr/include/vulkan/vulkan.hpp ]] || need+=(libvulkan-dev)
        compgen -G '/usr/share/cmake/SPIRV-Headers/*' >/dev/null \
            || compgen -G '/usr/lib/*/cmake/SPIRV-Headers/*' >/dev/null || need+=(spirv-headers)
        [[ ${#need[@]} -eq 0 ]] || apt_install "${need[@]}"
        # The pinned ggml-vulkan uses VK_EXT_layer_settings (Vulkan headers 1.3.261 and later;
        # Debian 12 has 1.3.239): older system headers are replaced by Debian 13's (headers
        # only, unpacked under .cache; the loader and drivers stay the system's).
        have=$(sed -n 's/^#define VK_HEADER_VERSION \([0-9]*\).*/\1/p' /usr/include/vulkan/vulkan_core.h)
        if [[ ${have:-0} -lt 261 ]]; then
            inc=$(vulkan_headers)
            echo "[ggml_backend] the system's Vulkan headers are 1.3.${have:-?}; using $inc" >&2
            args+=("-DVulkan_INCLUDE_DIR=$inc")
        fi
        args+=(-DGGML_VULKAN=ON)
        ;;
    blas)
        # ggml's BLAS backend (an accelerator device beside the CPU) over OpenBLAS: the module
        # scripts/test.sh loads to test run-time loading on machines without a GPU.
        need=()
        compgen -G '/usr/lib/*/libopenblas.so' >/dev/null || need+=(libopenblas-dev)
        command -v pkg-config >/dev/null || need+=(pkg-config)
        [[ ${#need[@]} -eq 0 ]] || apt_install "${need[@]}"
        args+=(-DGGML_BLAS=ON -DGGML_BLAS_VENDOR=OpenBLAS)
        ;;
esac
# shellcheck disable=SC2206 # word-split on purpose
args+=(${GGML_BACKEND_CMAKE_ARGS:-})

# The key covers the sources' version and the configuration.
key=$( (cat "$GGML_SRC/CMakeLists.txt" "$GGML_SRC/src/ggml-$name/CMakeLists.txt"; echo "${args[*]}") \
    | sha256sum | cut -c1-12)
out=${2:-${GRAFT_BACKENDS_CACHE:-$ROOT/.cache/backends}/$name-$key}
lib="libggml-$name.so"
if [[ -f "$out/$lib" && -f "$out/.complete" ]]; then
    echo "[ggml_backend] $out/$lib is built" >&2
    echo "$out"
    exit 0
fi
build="$out/build"
mkdir -p "$build"
# ggml is built as a subproject (as graft's own build does): its standalone mode wants files
# the packaged sources leave out (ggml.pc.in).
cat >"$build/CMakeLists.txt" <<EOF
cmake_minimum_required(VERSION 3.14)
project(graft_ggml_backend C CXX)
add_subdirectory("$GGML_SRC" ggml)
EOF
t0=$SECONDS
echo "[ggml_backend] building ggml's $name backend from $GGML_SRC (cmake ${args[*]})" >&2
cmake -S "$build" -B "$build/out" "${args[@]}" >"$out/cmake-configure.log" 2>&1 \
    || { tail -30 "$out/cmake-configure.log" >&2; exit 1; }
cmake --build "$build/out" --target "ggml-$name" -j "$(nproc)" >"$out/cmake-build.log" 2>&1 \
    || { tail -40 "$out/cmake-build.log" >&2; exit 1; }
# The module and the base library it links (by its soname), side by side.
module=$(find "$build/out" -name "$lib" -print -quit)
[[ -n "$module" ]] || { echo "ggml_backend.sh: the build made no $lib" >&2; exit 1; }
cp "$module" "$out/$lib"
# (By its soname, the shortest of libggml-base.so.0.26.0, .so.0 and .so.)
base=$(find "$build/out" -name 'libggml-base.so.*' | awk '{ print length, $0 }' | sort -n | head -1 | cut -d' ' -f2)
cp -L "$base" "$out/$(basename "$base")"
rm -rf "$build"
touch "$out/.complete"
echo "[ggml_backend] built $out/$lib in $((SECONDS - t0)) s" >&2
echo "$out"
