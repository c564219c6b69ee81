#!/usr/bin/env bash
# The runtime's core tests cross-built for aarch64-unknown-linux-gnu and run under qemu-user, so
# ggml's ARM NEON kernels (and graft's code on a 64-bit ARM target) are exercised on an x86 machine.
#
#   scripts/test_aarch64.sh
#
# Installs what is missing (apt: the aarch64 cross gcc/g++ and libc, qemu-user; rustup: the
# target). Runs graft-formats' and graft-ggml's tests, graft's unit tests and the integration
# tests that use the small generated models (adapters, sessions, bad input); the SmolLM2 tests
# would take an hour under emulation. ggml is built without -march=native and without OpenMP
# for the cross target (backends/ggml-sys/build.rs).
#
# The CLI tests exec the aarch64 `graft` binary through qemu too (GRAFT_TEST_RUNNER, read by
# runtime/tests/common): cargo's target runner applies to test binaries only, and binfmt_misc
# cannot be registered in a container.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

T=aarch64-unknown-linux-gnu
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
[[ -d /usr/aarch64-linux-gnu/include ]] || need+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if [[ ${#need[@]} -gt 0 ]]; then
    echo "[aarch64] apt-get install ${need[*]}"
    apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
rustup target list --installed | grep -qx "$T" || rustup target add "$T"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=/usr/aarch64-linux-gnu"
# No aarch64 Vulkan loader here: the wgpu backend has no device under qemu, and its tests skip.
unset GRAFT_REQUIRE_DEVICE GRAFT_BACKEND_DIR
echo "== aarch64 (qemu-user): $(qemu-aarch64 --version | head -n1)"
cargo test --target "$T" --no-fail-fast -p graft-formats -p graft-ggml
export GRAFT_TEST_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
cargo test --target "$T" --no-fail-fast -p graft --lib --test adapters --test sessions --test bad_input
