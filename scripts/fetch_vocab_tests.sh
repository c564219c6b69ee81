#!/usr/bin/env bash
# Fetch llama.cpp's tokenizer test vectors (ggml-vocab-*.gguf with .inp/.out) into
# .cache/vocab/. They ship inside the llama-cpp-python sdist under vendor/llama.cpp/models/.
# Idempotent: does nothing when the files are already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="0.3.36"
DL="$ROOT/.cache/dl"
VOCAB="$ROOT/.cache/vocab"
SDIST="$DL/llama_cpp_python-$VERSION.tar.gz"
PREFIX="llama_cpp_python-$VERSION/vendor/llama.cpp/models"
# Vocabularies the tokenizer tests use (others in the sdist are skipped).
NAMES=(llama-bpe llama-spm qwen2 gpt-2 phi-3 falcon deepseek-llm deepseek-coder mpt starcoder
       refact command-r qwen35 gemma-4 bert-bge)

have_all() {
    for n in "${NAMES[@]}"; do
        [ -s "$VOCAB/ggml-vocab-$n.gguf" ] || return 1
    done
    [ -s "$VOCAB/ggml-vocab-llama-bpe.gguf.out" ] || return 1
    return 0
}

if have_all; then
    echo "vocab test files present in $VOCAB"
    exit 0
fi

mkdir -p "$DL" "$VOCAB"
if [ ! -s "$SDIST" ]; then
    PIP="${PIP:-pip}"
    command -v "$PIP" >/dev/null 2>&1 || PIP="python3 -m pip"
    $PIP download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$DL"
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
members=()
for n in "${NAMES[@]}"; do
    for ext in "" ".inp" ".out"; do
        members+=("$PREFIX/ggml-vocab-$n.gguf$ext")
    done
done
# Not every vocab has .inp/.out files; list first and extract what exists.
tar -tzf "$SDIST" | grep -F "$PREFIX/ggml-vocab-" > "$TMP/list"
wanted=()
for m in "${members[@]}"; do
    if grep -qxF "$m" "$TMP/list"; then wanted+=("$m"); fi
done
tar -xzf "$SDIST" -C "$TMP" "${wanted[@]}"
cp "$TMP/$PREFIX"/ggml-vocab-* "$VOCAB/"
echo "extracted ${#wanted[@]} files into $VOCAB"
