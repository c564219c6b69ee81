#!/usr/bin/env bash
# Fuzz smoke test for the GGUF reader: the libFuzzer target fuzz/gguf_reader for SECONDS.
#
#   scripts/fuzz_smoke.sh [SECONDS]     (default 60)
#
# Installs what it needs when it is missing (both kept outside the clone, so later runs reuse
# them): a nightly toolchain through rustup (minimal profile) and cargo-fuzz from crates.io.
# Where rustup cannot fetch a nightly, the stable toolchain runs it with RUSTC_BOOTSTRAP=1 (the
# sanitizer runtimes ship with it); where neither works, it fails saying why. Seeded with small
# GGUF files (and the real model's header when present); libFuzzer's seed is fixed.
set -euo pipefail

secs="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

log() { echo "fuzz_smoke: $*"; }
die() { echo "fuzz_smoke: ERROR: $*" >&2; exit 1; }

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
elif log "no nightly toolchain: rustup toolchain install nightly --profile minimal" \
    && rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    log "rustup could not install a nightly toolchain: using stable with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "no cargo-fuzz: cargo install cargo-fuzz --locked (~3 min, once)"
    cargo install -q cargo-fuzz --locked || die "could not install cargo-fuzz from crates.io"
fi
log "$(cargo fuzz --version), $(rustc "${toolchain[@]}" --version 2>/dev/null || rustc --version)"

log "libFuzzer (cargo ${toolchain[*]} fuzz run gguf_reader) for ${secs}s"
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
cargo "${toolchain[@]}" fuzz run gguf_reader "../$corpus" -- \
    -max_total_time="$secs" -seed=1 -max_len=262144 -rss_limit_mb=2048 -timeout=10
log "no crash in ${secs}s"
