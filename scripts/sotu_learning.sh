#!/usr/bin/env bash
# Does on-device training really learn? Train each adapter method on Franklin D. Roosevelt's
# State of the Union speeches 1934-1941, then measure perplexity on his held-out 1942-1945
# speeches and on another era (Thomas Jefferson, 1801-1808), without and with the adapter.
#   scripts/sotu_learning.sh [STEPS] [METHODS...]
# (default 40 steps; methods lora diablo diablo16 diablo16-galore wegeft lopa: diablo is N=64
# blocks, diablo16 N=16 with plain Adam, diablo16-galore the same with GaLore rank 4)
# LoPA makes its soft prompt from a prompt, so its rows score each 512-token window after a
# 32-token prompt (--prompt-tokens 32), against a base row measured the same way.
# Prints a markdown table. Needs scripts/fetch_model.sh and a release build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STEPS="${1:-40}"; shift || true
METHODS=("${@:-lora diablo diablo16 diablo16-galore wegeft lopa}")
[ "${#METHODS[@]}" -eq 1 ] && read -r -a METHODS <<< "${METHODS[0]}"
G=./target/release/graft
M=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
S=.cache/data/sotu
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cat $S/193[4-9]_franklin_d_roosevelt_d.txt $S/194[01]_franklin_d_roosevelt_d.txt > "$W/train.txt"
cat $S/194[2-5]_franklin_d_roosevelt_d.txt > "$W/same.txt"
cat $S/180[1-8]_thomas_jefferson_dr.txt > "$W/other.txt"
ppl() { "$G" perplexity --model "$M" "${@:2}" --file "$1" --ctx 512 --max-tokens 2048 --threads 2 --json \
        | python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["perplexity"])'; }
base_same=$(ppl "$W/same.txt"); base_other=$(ppl "$W/other.txt")
echo "| method | steps | train s | FDR 1942-45 (held out) | Jefferson 1801-08 |"
echo "|---|---:|---:|---|---|"
echo "| base | - | - | $base_same | $base_other |"
lopa_base_same=$(ppl "$W/same.txt" --prompt-tokens 32); lopa_base_other=$(ppl "$W/other.txt" --prompt-tokens 32)
for m in "${METHODS[@]}"; do
    extra=()
    method="$m"
    case "$m" in
        diablo) extra=(--blocks 64 --lr 1e-3) ;;
        diablo16) method=diablo; extra=(--blocks 16 --lr 1e-3) ;;
        diablo16-galore) method=diablo
            extra=(--blocks 16 --lr 1e-3 --galore-rank 4 --galore-every 20 --galore-scale 1) ;;
        lopa) extra=(--rank 4 --virtual-tokens 16 --lr ${LOPA_LR:-3e-3}) ;;
        wegeft) extra=(--rank 8 --lr 2e-3) ;;
        *) extra=(--rank 8 --lr 1e-3) ;;
    esac
    t0=$(date +%s)
    "$G" train --model "$M" --method "$method" --data "$W/train.txt" --out "$W/$m.gguf" --steps "$STEPS" \
        --ctx 256 --warmup 4 --threads 2 --seed 1 --save-every 1000 --json "${extra[@]}" > "$W/$m.log"
    t1=$(date +%s)
    pct() { python3 -c "print('%+.1f %%' % (100*($1/$2-1)))"; }
    if [ "$m" = lopa ]; then
        echo "| base, 32-token prompt | - | - | $lopa_base_same | $lopa_base_other |"
        s=$(ppl "$W/same.txt" --adapter "$W/$m.gguf" --prompt-tokens 32)
        o=$(ppl "$W/other.txt" --adapter "$W/$m.gguf" --prompt-tokens 32)
        echo "| $m | $STEPS | $((t1 - t0)) | $s ($(pct "$s" "$lopa_base_same")) | $o ($(pct "$o" "$lopa_base_other")) |"
        continue
    fi
    s=$(ppl "$W/same.txt" --adapter "$W/$m.gguf"); o=$(ppl "$W/other.txt" --adapter "$W/$m.gguf")
    echo "| $m | $STEPS | $((t1 - t0)) | $s ($(pct "$s" "$base_same")) | $o ($(pct "$o" "$base_other")) |"
done
