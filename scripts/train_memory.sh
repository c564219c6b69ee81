#!/usr/bin/env bash
# Training memory, measured: graft's own accounting (mapped base file, the Q4_1 weights' split
# copies, compute buffer, layer inputs kept by gradient checkpointing, adapter / gradients /
# optimizer state) against the process's peak RSS, for each method and a few context lengths.
# 2 optimizer steps each (the compute buffer is sized by the first graph).
#   scripts/train_memory.sh [CTX...]                  (default 64 128 256 512)
#   scripts/train_memory.sh --checkpointing [CTX...]  (default 256 512 1024): each method and
#       context without and with --grad-checkpointing side by side (peak RSS, compute buffer,
#       tokens/s of 4 steps)
# Prints a markdown table. Needs scripts/fetch_model.sh and a release build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE=accounting
if [ "${1:-}" = "--checkpointing" ]; then
    MODE=checkpointing
    shift
fi
if [ "$MODE" = checkpointing ]; then
    CTXS=("${@:-256 512 1024}")
else
    CTXS=("${@:-64 128 256 512}")
fi
[ "${#CTXS[@]}" -eq 1 ] && read -r -a CTXS <<< "${CTXS[0]}"
G=./target/release/graft
M=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cat .cache/data/sotu/193[4-9]_franklin_d_roosevelt_d.txt > "$W/train.txt"
SPECS=("lora:--rank 8" "diablo:--blocks 64" "diablo+galore:--blocks 16 --galore-rank 4"
       "wegeft:--rank 8" "lopa:--rank 4 --virtual-tokens 16")

# train NAME CTX STEPS [EXTRA...]: one run's JSON summary.
train() {
    local name=$1 ctx=$2 steps=$3
    shift 3
    local spec
    for spec in "${SPECS[@]}"; do
        [ "${spec%%:*}" = "$name" ] && break
    done
    local extra
    read -r -a extra <<< "${spec#*:}"
    "$G" train --model "$M" --method "${name%%+*}" "${extra[@]}" "$@" --data "$W/train.txt" \
        --out "$W/a.gguf" --steps "$steps" --ctx "$ctx" --threads 2 --json | tail -1
}

if [ "$MODE" = checkpointing ]; then
    echo "| method | ctx | peak RSS MB | with checkpointing | compute buffer MB | with checkpointing (+ layer inputs) | tokens/s | with checkpointing |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for spec in "${SPECS[@]}"; do
        name=${spec%%:*}
        for ctx in "${CTXS[@]}"; do
            train "$name" "$ctx" 4 > "$W/off.json"
            train "$name" "$ctx" 4 --grad-checkpointing > "$W/on.json"
            python3 - "$name" "$ctx" "$W/off.json" "$W/on.json" <<'PY'
import json, sys
name, ctx, off, on = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), json.load(open(sys.argv[4]))
print(f"| {name} | {ctx} | {off['peak_rss_mb']:.0f} | {on['peak_rss_mb']:.0f} | "
      f"{off['memory_mb']['compute_buffer']:.0f} | {on['memory_mb']['compute_buffer']:.0f} "
      f"(+{on['memory_mb']['checkpoints']:.0f}) | {off['tokens_per_s']:.1f} | {on['tokens_per_s']:.1f} |")
PY
        done
    done
    exit 0
fi

echo "| method | ctx | base file | Q4_1 split | compute buffer | adapter | gradients | optimizer (plain Adam) | sum | peak RSS |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for spec in "${SPECS[@]}"; do
    name=${spec%%:*}
    for ctx in "${CTXS[@]}"; do
        train "$name" "$ctx" 2 | python3 -c '
import json, sys
d = json.load(sys.stdin); m = d["memory_mb"]
parts = ["base_file", "q4_1_split", "compute_buffer", "adapter", "gradients", "optimizer"]
s = sum(m[k] for k in parts)
print(f"| {sys.argv[1]} | {sys.argv[2]} | " + " | ".join(f"{m[k]:.0f}" for k in parts[:5])
      + " | %.1f (%.1f) | %.0f | %.0f |" % (m["optimizer"], m["optimizer_plain_adam"], s, d["peak_rss_mb"]))
' "$name" "$ctx"
    done
done
