#!/usr/bin/env bash
# System packages and tools the build and tests need (Debian/Ubuntu):
#   cmake (builds ggml), libclang (bindgen), a JDK (JNI tests), Mesa's lavapipe and the Vulkan
#   loader (the wgpu backend's tests), rustfmt/clippy components.
# Skips what is already installed.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
# bindgen needs libclang itself (libclang.so / libclang-N.so); libclang-cpp.so, which other
# packages bring, does not do.
if ! compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null \
    && ! compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null \
    && ! compgen -G '/usr/lib/*-linux-gnu/libclang-[0-9]*.so*' >/dev/null; then
    need+=(libclang-dev)
fi
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v javac >/dev/null 2>&1 || need+=(default-jdk-headless)  # the JNI bindings' tests
# Mesa's lavapipe (a Vulkan device on the CPU) and the Vulkan loader: the wgpu backend's tests
# run on it (GRAFT_REQUIRE_DEVICE=wgpu in scripts/test.sh).
if ! compgen -G '/usr/share/vulkan/icd.d/lvp_icd*.json' >/dev/null; then
    need+=(mesa-vulkan-drivers)
fi
if ! compgen -G '/usr/lib/*-linux-gnu/libvulkan.so.1' >/dev/null; then
    need+=(libvulkan1)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "[install_deps] apt-get install ${need[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
for comp in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$comp" || rustup component add "$comp"
done
echo "[install_deps] ok"
