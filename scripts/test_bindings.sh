#!/usr/bin/env bash
# Tests of the app bindings on the real model (run by scripts/test.sh after `cargo test`):
#   Python: the package of scripts/bindings.sh, built with the `test-hooks` feature, under
#   pytest (bindings/uniffi/tests/python), with `graft generate` as the reference;
#   JNI: bindings/jni's library and Java classes, bindings/jni/tests/java/JniTest.java;
#   Kotlin: the generated Kotlin on the host JVM through JNA (kotlinc from the npm package
#   kotlin-compiler, cached under ~/.cache/graft; JNA and JUnit 5 from apt libjna-java, junit5),
#   bindings/uniffi/tests/kotlin/GraftTest.kt under the JUnit console launcher;
#   Swift: cannot be compiled here; the generated C header (graftFFI.h) is compiled with clang
#   and its C ABI called from bindings/uniffi/tests/c/abi_test.c.
# Needs the test data of scripts/setup_test_data.sh (and its .cache/venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV=.cache/venv
PYTEST_VERSION=9.2.0
if ! "$VENV/bin/python" -c "import pytest" >/dev/null 2>&1; then
    echo "[test_bindings] pip install pytest==$PYTEST_VERSION into $VENV"
    "$VENV/bin/pip" install -q "pytest==$PYTEST_VERSION"
fi
out=target/bindings-test/python
rm -rf "$out"
GRAFT_BINDINGS_PROFILE=dev CARGO_FEATURES=test-hooks scripts/bindings.sh python "$out"
cargo build -q -p graft --bin graft
echo "== python bindings (pytest)"
GRAFT_PY_PKG="$ROOT/$out" GRAFT_BIN="$ROOT/target/debug/graft" GRAFT_ROOT="$ROOT" \
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider bindings/uniffi/tests/python

echo "== JNI layer (javac/java)"
cargo build -q -p graft-jni
jdir=target/jni-test
rm -rf "$jdir"
mkdir -p "$jdir"
javac -d "$jdir" bindings/jni/java/dev/graft/jni/*.java bindings/jni/tests/java/JniTest.java
java -Djava.library.path=target/debug -cp "$jdir" JniTest "$ROOT" "$ROOT/target/debug/graft"

echo "== Kotlin bindings on the host JVM (kotlinc, JNA)"
KC_VERSION=2.4.20
KC_DIR="${GRAFT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/graft}/kotlin-compiler-$KC_VERSION"
KC="$KC_DIR/node_modules/kotlin-compiler"
if [[ ! -x "$KC/bin/kotlinc" ]]; then
    echo "[test_bindings] npm install kotlin-compiler@$KC_VERSION into $KC_DIR (~90 MB, once)"
    npm install -q --no-audit --no-fund --prefix "$KC_DIR" "kotlin-compiler@$KC_VERSION" >/dev/null
fi
JNA=/usr/share/java/jna.jar
JUNIT=/usr/share/java/junit-platform-console-standalone.jar
need=()
[[ -f "$JNA" ]] || need+=(libjna-java)
[[ -f "$JUNIT" ]] || need+=(junit5)
if [[ ${#need[@]} -gt 0 ]]; then
    echo "[test_bindings] apt-get install ${need[*]}"
    apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
kout=target/bindings-test/kotlin
rm -rf "$kout"
# The same build as the Python package (test-hooks), so the library is not rebuilt.
GRAFT_BINDINGS_PROFILE=dev CARGO_FEATURES=test-hooks scripts/bindings.sh kotlin "$kout"
cp_libs="$JNA:$KC/lib/kotlinx-coroutines-core-jvm.jar:$KC/lib/kotlin-stdlib.jar"
"$KC/bin/kotlinc" -nowarn "$kout/uniffi/graft/graft.kt" bindings/uniffi/tests/kotlin/GraftTest.kt \
    -cp "$cp_libs:$JUNIT" -d "$kout/test.jar" 2>&1 | grep -v '^warning' || true
[[ -f "$kout/test.jar" ]] || { echo "kotlinc failed" >&2; exit 1; }
# JUnit 5's console launcher; its summary becomes the plain "N passed, N failed" line.
set +e
java -Djna.library.path="$ROOT/$kout" -Dgraft.root="$ROOT" -Dgraft.bin="$ROOT/target/debug/graft" \
    -jar "$JUNIT" --disable-banner --details=tree --disable-ansi-colors \
    -cp "$kout/test.jar:$cp_libs" --select-class GraftTest | tee "$kout/junit.txt"
rc=${PIPESTATUS[0]}
set -e
ok=$(sed -n 's/.* \([0-9]*\) tests successful.*/\1/p' "$kout/junit.txt")
bad=$(sed -n 's/.* \([0-9]*\) tests failed.*/\1/p' "$kout/junit.txt")
echo "${ok:-0} passed, ${bad:-0} failed"
[[ $rc -eq 0 && ${ok:-0} -gt 0 ]] || { echo "Kotlin tests failed" >&2; exit 1; }

echo "== C ABI of the Swift header (clang)"
command -v clang >/dev/null || { apt-get install -y -qq clang >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq clang >/dev/null; }; }
sout=target/bindings-test/swift
rm -rf "$sout"
GRAFT_BINDINGS_PROFILE=dev CARGO_FEATURES=test-hooks scripts/bindings.sh swift "$sout"
clang -std=c11 -D_GNU_SOURCE -Wall -Werror -I "$sout" bindings/uniffi/tests/c/abi_test.c \
    -L "$sout" -lgraft_uniffi -Wl,-rpath,"$ROOT/$sout" -o "$sout/abi_test"
"$sout/abi_test" "$ROOT/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
