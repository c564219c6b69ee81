#!/usr/bin/env bash
# Builds graft's app library and writes one language's package (uniffi, library mode).
#
#   scripts/bindings.sh python|kotlin|swift OUT_DIR
#
#   python  OUT_DIR/graft.py + libgraft_uniffi.so: `sys.path.insert(0, OUT_DIR); import graft`
#   kotlin  OUT_DIR/uniffi/graft/graft.kt + the library (load it with JNA:
#           -Djna.library.path=OUT_DIR)
#   swift   OUT_DIR/graft.swift, graftFFI.h, graftFFI.modulemap + the library (the sources that
#           ios/build-xcframework.sh packs on macOS)
#
# Environment: GRAFT_BINDINGS_PROFILE (default "bindings": release, thin LTO, no debug info; the
# packaged copy is stripped; "dev" reuses the test build), CARGO_FEATURES (e.g. "metal").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

die() { echo "bindings.sh: $*" >&2; exit 2; }
[[ $# -eq 2 ]] || die "usage: scripts/bindings.sh python|kotlin|swift OUT_DIR"
lang="$1"
out="$2"
case "$lang" in python | kotlin | swift) ;; *) die "unknown language $lang (python, kotlin, swift)" ;; esac

profile="${GRAFT_BINDINGS_PROFILE:-bindings}"
features=()
[[ -n "${CARGO_FEATURES:-}" ]] && features=(--features "$CARGO_FEATURES")
echo "bindings.sh: cargo build --profile $profile -p graft-uniffi ${features[*]}"
cargo build -q --profile "$profile" -p graft-uniffi "${features[@]}"
dir="target/$([[ "$profile" == dev ]] && echo debug || echo "$profile")"
case "$(uname -s)" in
    Darwin) lib="$dir/libgraft_uniffi.dylib" ;;
    *) lib="$dir/libgraft_uniffi.so" ;;
esac
[[ -f "$lib" ]] || die "$lib was not built"

mkdir -p "$out"
echo "bindings.sh: generating $lang from $lib"
# The generator is a build tool: its dev build is enough, whatever the library's profile.
cargo run -q -p graft-uniffi --features bindgen --bin uniffi-bindgen -- \
    generate --library "$lib" --language "$lang" --out-dir "$out" --no-format
cp "$lib" "$out/"
packaged="$out/$(basename "$lib")"
# The metadata symbols are only for uniffi-bindgen: the shipped library needs none of them.
if [[ "$profile" != dev ]] && command -v strip >/dev/null; then
    strip --strip-unneeded "$packaged" 2>/dev/null || strip -x "$packaged"
fi
echo "bindings.sh: $lang package in $out ($(wc -c < "$packaged") bytes library)"
