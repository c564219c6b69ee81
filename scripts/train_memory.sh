#!/usr/bin/env bash
# Training memory, measured: graft's own accounting (mapped base file, F16 transposed weight
# copies, compute buffer, adapter / gradients / optimizer state) against the process's peak RSS,
# for each method and a few context lengths. 2 optimizer steps each (the compute buffer is
# sized by the first graph).
#   scripts/train_memory.sh [CTX...]        (default 64 128 256 512)
# Prints a markdown table. Needs scripts/fetch_model.sh and a release build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CTXS=("${@:-64 128 256 512}")
[ "${#CTXS[@]}" -eq 1 ] && read -r -a CTXS <<< "${CTXS[0]}"
G=./target/release/graft
M=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cat .cache/data/sotu/193[4-9]_franklin_d_roosevelt_d.txt > "$W/train.txt"
echo "| method | ctx | base file | F16 copies | compute buffer | adapter | gradients | optimizer (plain Adam) | sum | peak RSS |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for spec in "lora:--rank 8" "diablo:--blocks 64" "diablo+galore:--blocks 16 --galore-rank 4" \
            "wegeft:--rank 8" "lopa:--rank 4 --virtual-tokens 16"; do
    name=${spec%%:*}; read -r -a extra <<< "${spec#*:}"
    method=${name%%+*}
    for ctx in "${CTXS[@]}"; do
        "$G" train --model "$M" --method "$method" "${extra[@]}" --data "$W/train.txt" \
            --out "$W/a.gguf" --steps 2 --ctx "$ctx" --threads 2 --json | tail -1 |
        python3 -c '
import json, sys
d = json.load(sys.stdin); m = d["memory_mb"]
parts = ["base_file", "transposed_weights", "compute_buffer", "adapter", "gradients", "optimizer"]
s = sum(m[k] for k in parts)
print(f"| {sys.argv[1]} | {sys.argv[2]} | " + " | ".join(f"{m[k]:.0f}" for k in parts[:5])
      + " | %.1f (%.1f) | %.0f | %.0f |" % (m["optimizer"], m["optimizer_plain_adam"], s, d["peak_rss_mb"]))
' "$name" "$ctx"
    done
done
