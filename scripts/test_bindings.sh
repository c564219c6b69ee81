#!/usr/bin/env bash
# Tests of the app bindings on the real model (run by scripts/test.sh after `cargo test`):
#   Python: the package of scripts/bindings.sh, built with the `test-hooks` feature, under
#   pytest (bindings/uniffi/tests/python), with `graft generate` as the reference;
#   JNI: bindings/jni's library and Java classes, bindings/jni/tests/java/JniTest.java.
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
