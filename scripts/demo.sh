#!/usr/bin/env bash
# The main demo: fetch the default model, build graft, and generate a story with it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/install_deps.sh
scripts/fetch_model.sh
cargo build --release -p graft
MODEL=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
./target/release/graft inspect "$MODEL"
echo
echo "== graft generate (greedy, ChatML prompt)"
./target/release/graft generate --model "$MODEL" --temperature 0 --max-tokens 200 \
    --prompt $'<|im_start|>user\nWrite a short story about a lighthouse keeper who befriends a whale.<|im_end|>\n<|im_start|>assistant\n'
echo
echo "== graft generate (sampled, temperature 0.8, seed 42)"
./target/release/graft generate --model "$MODEL" --temperature 0.8 --seed 42 --max-tokens 120 \
    --prompt "Once upon a time, in a village at the edge of the forest,"
