#!/usr/bin/env bash
# The main demo: fetch the default model, build graft, generate with it, train two small
# adapters on the device and hot-swap them in one chat session.
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

# Per-user personalization over the same mapped base: train two small adapters on the device
# (a LoRA and a DiaBlo, ~1 minute each on 2 cores), then hot-swap them in one chat session.
D=.cache/demo
mkdir -p "$D"
echo
echo "== graft train: a LoRA that talks like a pirate (scripts/demo_data/pirate.jsonl, 12 chats)"
./target/release/graft train --model "$MODEL" --method lora --rank 8 --lr 3e-3 --warmup 4 \
    --data scripts/demo_data/pirate.jsonl --out "$D/pirate.gguf" --steps 48 --ctx 128 --seed 1
echo
echo "== graft train: a DiaBlo adapter that talks like a robot (scripts/demo_data/robot.jsonl)"
./target/release/graft train --model "$MODEL" --method diablo --blocks 64 --lr 3e-3 --warmup 4 \
    --data scripts/demo_data/robot.jsonl --out "$D/robot.gguf" --steps 48 --ctx 128 --seed 1
echo
echo "== graft chat: one base, adapters swapped between turns (a question not in the training data)"
printf '%s\n' \
    "/adapter load $D/pirate.gguf pirate" \
    "/adapter load $D/robot.gguf robot" \
    "What is your favourite animal?" \
    "/reset" \
    "/adapter use pirate" \
    "What is your favourite animal?" \
    "/reset" \
    "/adapter use robot" \
    "What is your favourite animal?" \
    "/quit" |
    ./target/release/graft chat --model "$MODEL" --temperature 0 --max-tokens 60
