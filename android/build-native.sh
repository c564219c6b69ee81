#!/usr/bin/env bash
# Builds graft's native libraries for Android and generates the uniffi Kotlin that the :graft
# module compiles:
#
#   graft/src/main/jniLibs/{arm64-v8a,x86_64}/libgraft_uniffi.so   (uniffi, loaded through JNA)
#   graft/src/main/jniLibs/{arm64-v8a,x86_64}/libgraft_jni.so      (the JNI fast path)
#   graft/src/main/jniLibs/{arm64-v8a,x86_64}/libc++_shared.so     (ggml's C++ runtime)
#   graft/build/generated/uniffi/uniffi/graft/graft.kt
#
# Needs: an Android NDK (ANDROID_NDK_HOME or ANDROID_NDK_ROOT), rustup, cargo-ndk
# (cargo install cargo-ndk), cmake and libclang (as for the host build).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

die() {
    echo "build-native.sh: $*" >&2
    exit 2
}

ndk="${ANDROID_NDK_HOME:-${ANDROID_NDK_ROOT:-}}"
[[ -n "$ndk" ]] || die "no Android NDK: set ANDROID_NDK_HOME (or ANDROID_NDK_ROOT) to an installed NDK,
  e.g. \$ANDROID_HOME/ndk/<version> (Android Studio > SDK Manager > SDK Tools > NDK). Nothing was built."
[[ -d "$ndk/toolchains/llvm/prebuilt" ]] ||
    die "$ndk is not an Android NDK (no toolchains/llvm/prebuilt in it). Nothing was built."
command -v rustup >/dev/null || die "rustup is not installed (https://rustup.rs). Nothing was built."
cargo ndk --version >/dev/null 2>&1 ||
    die "cargo-ndk is not installed: cargo install cargo-ndk. Nothing was built."
export ANDROID_NDK_HOME="$ndk"

abis=(arm64-v8a x86_64)
triples=(aarch64-linux-android x86_64-linux-android)
profile=bindings
jnilibs="$HERE/graft/src/main/jniLibs"
target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"

cd "$ROOT"
rustup target add "${triples[@]}"

# 16 KB ELF segment alignment: required of apps on Android 15+ devices with 16 KB pages.
echo "build-native.sh: cargo ndk (${abis[*]}, API 26, profile $profile)"
RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,-z,max-page-size=16384" \
    cargo ndk -t arm64-v8a -t x86_64 --platform 26 -o "$jnilibs" \
    build --profile "$profile" -p graft-uniffi -p graft-jni

prebuilt="$(ls -d "$ndk"/toolchains/llvm/prebuilt/*/ | head -n 1)"
for i in "${!abis[@]}"; do
    abi="${abis[$i]}"
    triple="${triples[$i]}"
    mkdir -p "$jnilibs/$abi"
    for lib in libgraft_uniffi.so libgraft_jni.so; do
        # cargo-ndk copies them into -o as well, but not every version does for a custom profile.
        built="$target_dir/$triple/$profile/$lib"
        [[ -f "$built" ]] || die "$built was not built"
        cp "$built" "$jnilibs/$abi/"
    done
    # ggml is C++ linked against libc++_shared (backends/ggml-sys/build.rs): ship it alongside.
    cxx="$prebuilt/sysroot/usr/lib/$triple/libc++_shared.so"
    [[ -f "$cxx" ]] || die "$cxx not found in the NDK"
    cp "$cxx" "$jnilibs/$abi/"
done

# The Kotlin comes from the host build of the same crate: the libraries above are stripped
# (profile.bindings), and uniffi-bindgen reads the API metadata from the symbol table.
case "$(uname -s)" in
    Darwin) host_lib="$target_dir/debug/libgraft_uniffi.dylib" ;;
    *) host_lib="$target_dir/debug/libgraft_uniffi.so" ;;
esac
out="$HERE/graft/build/generated/uniffi"
echo "build-native.sh: generating Kotlin into $out"
rm -rf "$out"
cargo run -q -p graft-uniffi --features bindgen --bin uniffi-bindgen -- \
    generate --library "$host_lib" --language kotlin --out-dir "$out" --no-format \
    --config "$HERE/uniffi-android.toml"
[[ -f "$out/uniffi/graft/graft.kt" ]] || die "uniffi-bindgen wrote no $out/uniffi/graft/graft.kt"

echo "build-native.sh: done"
for abi in "${abis[@]}"; do
    ls -l "$jnilibs/$abi"
done
