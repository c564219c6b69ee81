#!/usr/bin/env bash
# The PEFT + transformers + torch (CPU) environment that the PEFT scripts run in
# (bench_train.py's reference side, bench_train_peft.py, check_export_peft.py,
# runtime/tests/fixtures/peft/gen_peft_reference.py). Not needed by the tests.
#
#   PY=$(scripts/peft_env.sh)      makes it if missing (~5.6 GB: torch from PyPI pulls its CUDA
#                                  wheels), prints its python
#
# Kept in $GRAFT_CACHE/venv-peft (default ~/.cache/graft/venv-peft), outside the clone, with the
# pinned versions of scripts/requirements-peft.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${GRAFT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/graft}"
VENV="$CACHE/venv-peft"
if ! "$VENV/bin/python" -c "import torch, transformers, peft, gguf" >/dev/null 2>&1; then
    echo "[peft_env] venv with scripts/requirements-peft.txt in $VENV (several GB, once)" >&2
    rm -rf "$VENV"
    mkdir -p "$CACHE"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r "$ROOT/scripts/requirements-peft.txt" >&2
fi
echo "$VENV/bin/python"
