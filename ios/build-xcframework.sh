#!/usr/bin/env bash
# Builds what Package.swift needs, on macOS with Xcode:
#
#   GraftFFI.xcframework      libgraft_uniffi.a (Rust runtime + ggml with Metal) for iOS devices
#                             (arm64), the iOS simulator (arm64 + x86_64) and macOS (arm64),
#                             with the uniffi C header as the clang module graftFFI
#   Sources/Graft/graft.swift the generated Swift bindings
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

die() {
    echo "build-xcframework.sh: $*" >&2
    exit 2
}

[[ "$(uname -s)" == Darwin ]] ||
    die "needs macOS with Xcode (xcodebuild, lipo and the iOS SDKs); this is $(uname -s). Nothing was built."
for tool in xcodebuild xcrun lipo rustup cargo; do
    command -v "$tool" >/dev/null || die "$tool not found (install Xcode and rustup). Nothing was built."
done

profile=bindings
target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin)
export IPHONEOS_DEPLOYMENT_TARGET=15.0 MACOSX_DEPLOYMENT_TARGET=13.0

sdk_of() {
    case "$1" in
        aarch64-apple-ios) echo iphoneos ;;
        *-apple-ios-sim | x86_64-apple-ios) echo iphonesimulator ;;
        *) echo macosx ;;
    esac
}
lib_of() { echo "$target_dir/$1/$profile/libgraft_uniffi.a"; }

cd "$ROOT"
rustup target add "${targets[@]}"
for t in "${targets[@]}"; do
    echo "build-xcframework.sh: cargo build --profile $profile -p graft-uniffi --features metal --target $t"
    # bindgen (ggml-sys) needs the SDK for the C headers; GRAFT_GGML_NATIVE=0 keeps ggml
    # generic when the target is this Mac's own (no -mcpu=native in a shipped library).
    env "BINDGEN_EXTRA_CLANG_ARGS_${t//-/_}=-isysroot $(xcrun --sdk "$(sdk_of "$t")" --show-sdk-path)" \
        GRAFT_GGML_NATIVE=0 \
        cargo build --profile "$profile" -p graft-uniffi --features metal --target "$t"
    [[ -f "$(lib_of "$t")" ]] || die "$(lib_of "$t") was not built"
done

build="$HERE/build"
rm -rf "$build"
mkdir -p "$build/ios-simulator" "$build/swift" "$build/headers/graftFFI"
lipo -create "$(lib_of aarch64-apple-ios-sim)" "$(lib_of x86_64-apple-ios)" \
    -output "$build/ios-simulator/libgraft_uniffi.a"

# The Swift comes from the host build of the same crate, as for Android: uniffi-bindgen reads the
# API metadata from the symbol table, which the bindings profile strips from linked libraries.
echo "build-xcframework.sh: generating Swift"
cargo run -q -p graft-uniffi --features bindgen --bin uniffi-bindgen -- \
    generate --library "$target_dir/debug/libgraft_uniffi.dylib" --language swift \
    --out-dir "$build/swift" --no-format

# The header and its module map in a folder named after the module, so that the module map
# does not collide with another XCFramework's in the app's include folder.
cp "$build/swift/graftFFI.h" "$build/headers/graftFFI/"
cp "$build/swift/graftFFI.modulemap" "$build/headers/graftFFI/module.modulemap"

rm -rf "$HERE/GraftFFI.xcframework"
xcodebuild -create-xcframework \
    -library "$(lib_of aarch64-apple-ios)" -headers "$build/headers" \
    -library "$build/ios-simulator/libgraft_uniffi.a" -headers "$build/headers" \
    -library "$(lib_of aarch64-apple-darwin)" -headers "$build/headers" \
    -output "$HERE/GraftFFI.xcframework"
cp "$build/swift/graft.swift" "$HERE/Sources/Graft/graft.swift"

echo "build-xcframework.sh: wrote $HERE/GraftFFI.xcframework and Sources/Graft/graft.swift"
