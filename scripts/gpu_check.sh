#!/usr/bin/env bash
# The GPU check: one script for a machine lent with a GPU, which has nvcc, cmake and Python but
# no Rust and no network. Make the kit here first (scripts/gpu_kit.sh), then run on the device,
# carrying .cache/gpu-kit:
#
#   scripts/gpu_check.sh [cuda|vulkan|wgpu]        (default cuda)
#
# It builds ggml's backend library from the kit's pinned sources (scripts/ggml_backend.sh; CUDA
# for the GPUs present, CMAKE_CUDA_ARCHITECTURES=native), has the graft binary built here load it
# at run time (GRAFT_BACKEND_DIR), and runs:
#   1. `graft devices`: the backend's device must be listed;
#   2. the op conformance suite: every op the backend claims against ggml's CPU backend;
#   3. greedy tokens (first 16 of 24) and perplexity (within 1 %) against the CPU backend, on
#      qwen2-tiny (F32, Q8_0, Q4_0) and on SmolLM2-135M-shaped files with random weights
#      (scripts/synth_model.py), with no adapter and with each adapter kind (perplexity);
#   4. training (`graft train`, 4 steps of each adapter kind on qwen2-tiny): the first step's
#      loss equal to the CPU's and the last within 1 % (a device copy of the adapter left behind
#      by the updates is 20 % off), with the ops that fell back to the CPU;
#      and tokens/s of LoRA training on the SmolLM2-shaped Q4_0 file, device against CPU;
#   5. `graft bench` on the SmolLM2-shaped Q4_0 file: the backend, graft's wgpu backend when it
#      finds a hardware GPU (Vulkan), and the CPU, decode and prefill, with and without adapters.
# Results go to $OUT (the device tool's output folder; default .cache/gpu-kit/out): gpu_check.log,
# devices.json, bench-*.json and summary.md. The exit status is non-zero if a check failed.
# `wgpu` checks graft's own wgpu backend and builds no library: `GRAFT_GPU_CHECK_QUICK=1
# scripts/gpu_check.sh wgpu` rehearses the script on a CPU machine with Mesa's lavapipe.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BACKEND=${1:-cuda}
KIT=${GRAFT_GPU_KIT:-$ROOT/.cache/gpu-kit}
OUT=${OUT:-$KIT/out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
G=$KIT/bin/graft
[[ -x $G ]] || { echo "gpu_check.sh: no $G: make the kit with scripts/gpu_kit.sh" >&2; exit 1; }
T0=$SECONDS
failed=()
note() { echo "$*" | tee -a "$OUT/summary.md"; }
: >"$OUT/summary.md"

echo "== machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
grep -m1 'model name' /proc/cpuinfo || true
echo "cores: $(nproc)"

note "# GPU check: $BACKEND ($(date -u +%F))"
if [[ $BACKEND != wgpu ]]; then
    echo "== libggml-$BACKEND.so"
    LIBDIR=$KIT/backend-$BACKEND
    # Without the flash-attention kernels (graft's default attention does not use them): the
    # build must leave most of the device time to the checks.
    GGML_SRC=$KIT/ggml GGML_CUDA_FA=${GGML_CUDA_FA:-OFF} scripts/ggml_backend.sh "$BACKEND" "$LIBDIR" >/dev/null || {
        echo "gpu_check.sh: building ggml's $BACKEND backend failed" >&2
        exit 1
    }
    export GRAFT_BACKEND_DIR=$LIBDIR
    # The CUDA runtime libraries, wherever this toolkit keeps them (also in the library's RPATH).
    nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    cuda_lib=$(dirname "$(dirname "$nvcc")")/lib64
    [[ -d $cuda_lib ]] && export LD_LIBRARY_PATH=$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    note "- built libggml-$BACKEND.so from the pinned ggml sources in $((SECONDS - T0)) s"
fi

echo "== devices"
"$G" devices
"$G" devices --json >"$OUT/devices.json"
dev=$(python3 -c 'import json,sys
d = json.load(open(sys.argv[1]))
print(next((x["name"] + " (" + x["description"] + ")" for x in d["devices"] if x["backend"] == sys.argv[2]), ""))' \
    "$OUT/devices.json" "$BACKEND")
if [[ -z $dev ]]; then
    note "- FAIL: graft lists no $BACKEND device"
    exit 1
fi
note "- device: $dev"

echo "== op conformance"
if GRAFT_REQUIRE_DEVICE=$BACKEND "$KIT/bin/conformance" --nocapture >"$OUT/conformance.log" 2>&1; then
    note "- op conformance: passed ($(grep -h "($BACKEND)" "$OUT/conformance.log" | head -1))"
else
    note "- FAIL: op conformance (see conformance.log)"
    tail -30 "$OUT/conformance.log"
    failed+=(conformance)
fi

echo "== models"
for q in Q4_0 Q8_0; do
    m=$KIT/models/SmolLM2-135M-synthetic.$q.gguf
    [[ -f $m ]] || python3 scripts/synth_model.py expand "${m%.gguf}.header" "$m" || exit 1
done

# compare.py NAME A.json B.json: tokens (first 16) or perplexity (1 %) of two runs.
compare() {
    python3 - "$@" <<'EOF'
import json, sys
name, a, b = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
if "perplexity" in a:
    pa, pb = a["perplexity"], b["perplexity"]
    rel = abs(pa - pb) / pa
    print(f"{name}: perplexity cpu {pa:.4f}, device {pb:.4f} ({100 * rel:.3f} %)")
    sys.exit(0 if rel <= 0.01 else 1)
ta, tb = a["tokens"], b["tokens"]
same = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
on = b.get("backend") or {}
print(f"{name}: {same} of {len(ta)} tokens as on the cpu; nodes on device "
      f"{on.get('nodes_on_device')}/{on.get('nodes_total')}")
sys.exit(0 if same >= min(16, len(ta)) else 1)
EOF
}

# judge NAME RAN, then a comparison command: when both runs went through (RAN is 0), notes the
# comparison's line, marked FAIL when it fails (or, with info_only=1, noted as information);
# else says the check did not run.
judge() {
    local name=$1 ran=$2
    shift 2
    if [[ $ran != 0 ]]; then
        note "$name FAIL: did not run"
        tail -5 "$OUT/cmp-err.log"
        failed+=("$name")
    elif "$@" >"$OUT/cmp.txt"; then
        note "$(cat "$OUT/cmp.txt")"
    elif [[ ${info_only:-0} == 1 ]]; then
        note "$(cat "$OUT/cmp.txt") (information: random weights, near-equal logits; the perplexity is the check)"
    else
        note "$(cat "$OUT/cmp.txt") FAIL"
        failed+=("$name")
    fi
}

run_pair() { # NAME, then graft arguments: runs on the cpu and on $BACKEND, and compares
    local name=$1 ran=0
    shift
    "$G" "$@" --backend cpu --json >"$OUT/cmp-cpu.json" 2>"$OUT/cmp-err.log" \
        && "$G" "$@" --backend "$BACKEND" --json >"$OUT/cmp-dev.json" 2>>"$OUT/cmp-err.log" \
        || ran=1
    judge "$name" $ran compare "$name" "$OUT/cmp-cpu.json" "$OUT/cmp-dev.json"
}

echo "== tokens and perplexity: $BACKEND against the cpu"
note ""
note "## $BACKEND against the CPU backend"
TEXT=$KIT/data/text.txt
# qwen2-tiny has random weights: its next-token distribution is nearly flat (perplexity in the
# tens of thousands), so greedy choices between near-equal logits go to whichever way a kernel
# rounds. Over F32 weights the device must give the CPU's tokens; over Q8_0 and Q4_0 (whose
# activations each backend quantizes and sums in its own order) the tokens are reported, and
# the perplexity beside them (within 1 %) and the op conformance suite are the checks. (ggml's
# Vulkan backend on lavapipe, rehearsing this script: F32 24 of 24 on every prompt; Q8_0 and
# Q4_0 6 and 1 of 24 on one prompt each, perplexity within 0.1 % and 0.4 %.)
for m in qwen2-tiny.gguf qwen2-tiny.Q8_0.gguf qwen2-tiny.Q4_0.gguf; do
    info_only=0
    [[ $m == *.Q*_0.gguf ]] && info_only=1
    for p in "The capital of France is" "Once upon a time" "1, 2, 3, 4,"; do
        run_pair "- $m greedy '$p'" generate --model "$KIT/models/$m" --prompt "$p" \
            --temperature 0 --max-tokens 24 --ignore-eos
    done
    info_only=0
    run_pair "- $m" perplexity --model "$KIT/models/$m" --file "$TEXT" --ctx 128 --max-tokens 256
done
quants=(Q4_0 Q8_0)
n_ppl=512
[[ ${GRAFT_GPU_CHECK_QUICK:-0} == 1 ]] && quants=(Q4_0) n_ppl=256
for q in "${quants[@]}"; do
    m=$KIT/models/SmolLM2-135M-synthetic.$q.gguf
    run_pair "- synthetic SmolLM2 $q" perplexity --model "$m" --file "$TEXT" --ctx 256 \
        --max-tokens $n_ppl
    for a in "$KIT"/adapters/*.gguf; do
        run_pair "- synthetic SmolLM2 $q + $(basename "$a" .gguf)" perplexity --model "$m" \
            --adapter "$a" --file "$TEXT" --ctx 256 --max-tokens $n_ppl --prompt-tokens 16
    done
done

echo "== training: $BACKEND against the cpu"
note ""
note "## training on $BACKEND against the CPU backend"
DATA=$ROOT/scripts/demo_data/pirate.jsonl
# compare_train NAME CPU.jsonl DEV.jsonl TOL: step 1's loss (same parameters) within TOL (the
# devices' quantized products round activations their own way), the last step's within 1 %
# (Adam magnifies rounding differences), and what ran where.
compare_train() {
    python3 - "$@" <<'EOF'
import json, sys
name = sys.argv[1]
runs = [[json.loads(l) for l in open(p) if l.startswith("{")] for p in sys.argv[2:4]]
tol = float(sys.argv[4])
(cs, c), (ds, d) = [(r[:-1], r[-1]) for r in runs]
first = abs(cs[0]["loss"] - ds[0]["loss"]) / abs(cs[0]["loss"])
last = abs(c["final_loss"] - d["final_loss"]) / abs(c["final_loss"])
b = d["backend"]
cpu_ops = ", ".join(f"{k} {v}" for k, v in sorted(b.get("cpu_fallback_ops", {}).items()))
print(f"{name}: loss step 1 cpu {cs[0]['loss']:.5f} device {ds[0]['loss']:.5f}; step {len(ds)} "
      f"{c['final_loss']:.5f} / {d['final_loss']:.5f}; {d['tokens_per_s']:.0f} vs "
      f"{c['tokens_per_s']:.0f} tok/s; nodes on device {b['nodes_on_device']}/{b['nodes_total']}"
      f" (on the cpu: {cpu_ops or 'none'})")
sys.exit(0 if first <= tol and last <= 0.01 and b["name"] != "cpu" else 1)
EOF
}
train_pair() { # NAME TOL, then graft train arguments
    local name=$1 tol=$2 ran=0
    shift 2
    local args=("$@" --data "$DATA" --ctx 64 --threads "$(nproc)" --json)
    "$G" train "${args[@]}" --backend cpu --ggml-forward --out "$OUT/train-cpu.gguf" \
        >"$OUT/train-cpu.jsonl" 2>"$OUT/cmp-err.log" \
        && "$G" train "${args[@]}" --backend "$BACKEND" --out "$OUT/train-dev.gguf" \
            >"$OUT/train-dev.jsonl" 2>>"$OUT/cmp-err.log" \
        || ran=1
    judge "$name" $ran compare_train "$name" "$OUT/train-cpu.jsonl" "$OUT/train-dev.jsonl" "$tol"
}
for method in lora diablo wegeft lopa; do
    train_pair "- qwen2-tiny $method" 1e-3 --model "$KIT/models/qwen2-tiny.gguf" --method "$method" \
        --steps 4 --lr 1e-2 --warmup 0
done
# Training speed on a full-size model (left out of the rehearsal: lavapipe runs the backward
# pass's outer products on one CPU thread, minutes for a step).
[[ ${GRAFT_GPU_CHECK_QUICK:-0} == 1 ]] \
    || train_pair "- synthetic SmolLM2 Q4_0 lora r8" 1e-2 \
        --model "$KIT/models/SmolLM2-135M-synthetic.Q4_0.gguf" --method lora --rank 8 --steps 4 \
        --lr 1e-4

echo "== bench"
if [[ ${GRAFT_GPU_CHECK_QUICK:-0} == 1 ]]; then
    bench_args=(--pp 64 --tg 16 --reps 1)
else
    bench_args=(--pp 128,512 --tg 128 --reps 3)
fi
m=$KIT/models/SmolLM2-135M-synthetic.Q4_0.gguf
variants=(--variant none)
for a in lora-all-r4-f16 diablo-n64 wegeft-r8; do
    variants+=(--variant "$a=$KIT/adapters/$a.gguf")
done
backends=("$BACKEND" cpu)
[[ $BACKEND != wgpu ]] && python3 -c 'import json,sys
d = json.load(open(sys.argv[1]))
sys.exit(0 if any(x["backend"] == "wgpu" and "llvmpipe" not in x["description"].lower()
                  for x in d["devices"]) else 1)' "$OUT/devices.json" && backends+=(wgpu)
for b in "${backends[@]}"; do
    "$G" bench --model "$m" --backend "$b" --threads "$(nproc)" "${bench_args[@]}" "${variants[@]}" \
        >"$OUT/bench-$b.json" 2>"$OUT/bench-$b.err" || {
        note "- FAIL: bench on $b"
        tail -5 "$OUT/bench-$b.err"
        failed+=("bench $b")
    }
done
note ""
note "## graft bench, SmolLM2-135M-shaped Q4_0 (random weights), tokens/s (median of reps)"
python3 - "$OUT" "${backends[@]}" <<'EOF' | tee -a "$OUT/summary.md"
import json, os, statistics, sys
out, backends = sys.argv[1], sys.argv[2:]
rows = {}
for b in backends:
    p = os.path.join(out, f"bench-{b}.json")
    if not os.path.exists(p) or os.path.getsize(p) == 0:
        continue
    d = json.load(open(p))
    dev = (d.get("backend") or {}).get("device", b)
    for v in d["variants"]:
        for r in v["results"]:
            rows.setdefault((v["label"], r["test"]), {})[f"{b} ({dev})"] = statistics.median(r["tokens_per_s"])
cols = sorted({c for r in rows.values() for c in r}, key=lambda c: c.startswith("cpu "))
cpu = next((c for c in cols if c.startswith("cpu ")), None)
devs = [c for c in cols if c != cpu]
print("| adapter | test | " + " | ".join(cols) + "".join(f" | {c.split()[0]} / cpu" for c in devs) + " |")
print("|---|---|" + "---:|" * (len(cols) + len(devs)))
for (label, test), r in rows.items():
    ratios = "".join(f" | {r[c] / r[cpu]:.2f}x" if cpu in r and c in r else " | -" for c in devs)
    print(f"| {label} | {test} | " + " | ".join(f"{r.get(c, 0):.1f}" for c in cols) + ratios + " |")
EOF

note ""
note "took $((SECONDS - T0)) s; failed: ${failed[*]:-none}"
[[ ${#failed[@]} -eq 0 ]]
