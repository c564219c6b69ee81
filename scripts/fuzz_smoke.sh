#!/usr/bin/env bash
# Fuzz smoke test: each libFuzzer target under fuzz/ for SECONDS (default 30 each):
#   gguf_reader    arbitrary bytes as GGUF (formats)
#   adapter_load   arbitrary bytes as an adapter for a base model; whatever loads must run
#   peft_import    adapter_config.json + safetensors imported for a base model; whatever
#                  imports must load and run
#   serve_request  request bodies of `graft serve`; accepted ones keep their bounds and
#                  round-trip
#
#   scripts/fuzz_smoke.sh [SECONDS] [TARGET...]
#
# Installs what it needs when it is missing (both kept outside the clone, so later runs reuse
# them): a nightly toolchain through rustup (minimal profile) and cargo-fuzz from crates.io.
# Where rustup cannot fetch a nightly, the stable toolchain runs it with RUSTC_BOOTSTRAP=1 (the
# sanitizer runtimes ship with it); where neither works, it fails saying why. The adapter targets
# run against the small qwen2 test model and start from valid adapters of every kind
# (scripts/make_fuzz_seeds.py); both come from scripts/setup_test_data.sh. libFuzzer's seed is
# fixed. A crash leaves its input in fuzz/artifacts/TARGET/ (replay: cargo fuzz run TARGET FILE).
set -euo pipefail

secs="${1:-30}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(gguf_reader adapter_load peft_import serve_request)
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

model="$root/.cache/models/qwen2-tiny.gguf"
python="$root/.cache/venv/bin/python"
[[ -f "$model" && -x "$python" ]] \
    || die "$model or $python is missing: run scripts/setup_test_data.sh first"
export GRAFT_FUZZ_MODEL="$model"

# Seeds for gguf_reader: the first 64 KiB of the real model (header and part of the vocabulary)
# and a tiny valid file (magic, v3, 0 tensors, 1 kv "a" = u32 1).
mkdir -p fuzz/corpus/gguf_reader fuzz/corpus/serve_request
real="${GRAFT_MODEL:-$root/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [[ -f "$real" && ! -f fuzz/corpus/gguf_reader/smollm2-head ]]; then
    head -c 65536 "$real" > fuzz/corpus/gguf_reader/smollm2-head
fi
if [[ ! -f fuzz/corpus/gguf_reader/tiny ]]; then
    printf 'GGUF\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00a\x04\x00\x00\x00\x01\x00\x00\x00' \
        > fuzz/corpus/gguf_reader/tiny
fi
# Seeds for adapter_load and peft_import: valid adapters of every kind for the test model.
"$python" scripts/make_fuzz_seeds.py --model "$model" --out fuzz/corpus
# Seeds for serve_request: the first byte picks the endpoint (even: completions, odd: chat).
printf '\x20{"prompt":"Hi","model":"x","max_tokens":4,"temperature":0.5,"top_p":0.9,"seed":3,"stop":["\\n"],"stream":true}' \
    > fuzz/corpus/serve_request/completions
printf '\x21{"messages":[{"role":"user","content":"Hi"}],"adapters":[{"name":"a","scale":0.5},{"name":"b"}]}' \
    > fuzz/corpus/serve_request/chat

# The fuzz build (ggml and graft with sanitizer flags) is kept outside the clone, beside the
# other caches, so fresh clones reuse it.
target_dir="${GRAFT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/graft}/fuzz-target"
cd fuzz
log "building the fuzz targets (cargo ${toolchain[*]} fuzz build, into $target_dir)"
cargo "${toolchain[@]}" fuzz build --target-dir "$target_dir"
for t in "${targets[@]}"; do
    log "libFuzzer: $t for ${secs}s"
    cargo "${toolchain[@]}" fuzz run --target-dir "$target_dir" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -seed=1 -max_len=524288 -rss_limit_mb=2048 -timeout=10
done
log "no crash in ${secs}s of each of: ${targets[*]}"
