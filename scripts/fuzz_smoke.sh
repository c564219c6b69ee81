#!/usr/bin/env bash
# Fuzz smoke test for the GGUF reader.
#
#   scripts/fuzz_smoke.sh [SECONDS]     (default 60)
#
# With cargo-fuzz and a nightly toolchain: runs the libFuzzer target fuzz/gguf_reader for
# SECONDS, seeded with small GGUF files written by the writer tests (and the real model's header
# when present). Otherwise: runs the proptest mutation tests of graft-formats with many cases.
# Prints which of the two it ran.
set -euo pipefail

secs="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

have_nightly() { rustup toolchain list 2>/dev/null | grep -q '^nightly'; }
have_cargo_fuzz() { cargo fuzz --version >/dev/null 2>&1; }

if have_nightly && have_cargo_fuzz; then
    echo "fuzz_smoke: libFuzzer (cargo +nightly fuzz run gguf_reader) for ${secs}s"
    corpus="fuzz/corpus/gguf_reader"
    mkdir -p "$corpus"
    # Seed: the first 64 KiB of the real model (header and part of the vocabulary), if present.
    model="${GRAFT_MODEL:-$root/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
    if [[ -f "$model" && ! -f "$corpus/smollm2-head" ]]; then
        head -c 65536 "$model" > "$corpus/smollm2-head"
    fi
    # Seed: a tiny valid file (magic, v3, 0 tensors, 1 kv "a" = u32 1).
    if [[ ! -f "$corpus/tiny" ]]; then
        printf 'GGUF\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00a\x04\x00\x00\x00\x01\x00\x00\x00' \
            > "$corpus/tiny"
    fi
    cd fuzz
    cargo +nightly fuzz run gguf_reader "../$corpus" -- \
        -max_total_time="$secs" -seed=1 -max_len=262144 -rss_limit_mb=2048 -timeout=10
else
    why=""
    have_nightly || why="no nightly toolchain"
    have_cargo_fuzz || why="${why:+$why, }no cargo-fuzz"
    echo "fuzz_smoke: $why -> running the proptest mutation tests instead"
    # PROPTEST_CASES overrides the case counts; each run draws a fresh random seed, so repeat
    # runs until the time is spent.
    end=$(( $(date +%s) + secs ))
    runs=0
    while :; do
        PROPTEST_CASES="${PROPTEST_CASES:-20000}" \
            cargo test -q -p graft-formats --release --test proptest_roundtrip -- mutated random_bytes
        runs=$((runs + 1))
        [[ $(date +%s) -ge $end ]] && break
    done
    echo "fuzz_smoke: proptest mutation tests passed ($runs runs)"
fi
