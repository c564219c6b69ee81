#!/usr/bin/env bash
# The test command of the README and of CI. From a fresh machine it installs what is missing,
# fetches the test data, computes llama.cpp's reference outputs for this CPU (cached outside the
# clone), then runs formatting, lints, a short run of each fuzz target, every test binary,
# the bindings' tests and the aarch64 tests under qemu. Every stage runs even after a failure
# (and every test binary within `cargo test`); the failed stages are listed at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# ggml's cmake build is shared by every profile and target directory (backends/ggml-sys/build.rs);
# keeping it beside the other caches lets fresh clones (CI) reuse it too.
export GRAFT_GGML_CACHE="${GRAFT_GGML_CACHE:-${GRAFT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/graft}/ggml}"
# The wgpu backend's tests run on Mesa's lavapipe (installed by install_deps.sh): a missing
# device is a failure here, not a skip. Without a desktop session, Mesa's device-select layer
# prints an XDG_RUNTIME_DIR error for every Vulkan instance; it only orders GPUs for a display.
# ggml's BLAS and Vulkan backends, built as libraries graft loads at run time (set-up below),
# must load too.
export GRAFT_REQUIRE_DEVICE="${GRAFT_REQUIRE_DEVICE-wgpu,blas}"
[[ -z "${XDG_RUNTIME_DIR:-}" ]] && export NODEVICE_SELECT=1
T0=$SECONDS

echo "== machine"
scripts/machine_info.sh
echo "== set-up"
scripts/install_deps.sh
scripts/machine_info.sh | sed -n '/^cmake/p'
scripts/setup_test_data.sh
scripts/references.sh
# The tests of backend libraries loaded at run time (what carries CUDA to a graft binary built
# without it) load ggml's BLAS backend, which needs no GPU, and ggml's Vulkan backend, which
# runs on lavapipe: the op conformance suite runs every op it claims against the CPU backend
# (the whole-model tests stay on graft's wgpu there: README, "wgpu and ggml's Vulkan backend
# on lavapipe"). Its build (about 2-4 minutes) is kept beside ggml's.
export GRAFT_BACKENDS_CACHE="${GRAFT_BACKENDS_CACHE:-$(dirname "$GRAFT_GGML_CACHE")/backends}"
GRAFT_BACKEND_DIR="$(scripts/ggml_backend.sh blas | tail -1)"
if [[ "${GRAFT_SKIP_GGML_VULKAN:-0}" != 1 ]]; then
    GRAFT_BACKEND_DIR="$GRAFT_BACKEND_DIR:$(scripts/ggml_backend.sh vulkan | tail -1)"
    GRAFT_REQUIRE_DEVICE="$GRAFT_REQUIRE_DEVICE,vulkan"
    # ggml-vulkan hides CPU implementations such as lavapipe unless they are named.
    export GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES-0}"
fi
export GRAFT_BACKEND_DIR
echo "== set-up took $((SECONDS - T0)) s"

# Every stage runs even after one fails; the failed ones are listed at the end.
failed=()
stage() {
    local name=$1 t=$SECONDS
    shift
    echo "== $name"
    if ! "$@"; then
        failed+=("$name")
        echo "!! $name failed"
    fi
    echo "== $name took $((SECONDS - t)) s"
}
stage "cargo fmt --check" cargo fmt --all -- --check
stage "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
stage "fuzz smoke" scripts/fuzz_smoke.sh "${GRAFT_FUZZ_SECONDS:-30}"
stage "cargo test" cargo test --workspace --no-fail-fast
# wgpu binds the kernels' parameter blocks as a storage buffer where the device allows one
# more, else as a uniform buffer (backends/wgpu/src/gpu.rs): lavapipe takes the first, so the
# conformance suite runs again on the second (`--workspace`: the features, hence the binary,
# of the stage above; `-p graft-ggml` alone would rebuild it).
stage "wgpu conformance, uniform parameter blocks" \
    env GRAFT_WGPU_PARAMS=uniform cargo test --workspace --test conformance
stage "bindings" scripts/test_bindings.sh
if [[ "${GRAFT_SKIP_AARCH64:-0}" == 1 ]]; then
    echo "== aarch64: skipped (GRAFT_SKIP_AARCH64=1)"
else
    stage "aarch64 (cross-built, run under qemu-user)" scripts/test_aarch64.sh
fi
echo "== all stages took $((SECONDS - T0)) s"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED stages: ${failed[*]}" >&2
    exit 1
fi
echo "all stages passed"
